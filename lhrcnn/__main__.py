"""`python -m lhrcnn`: the lhrcnn command line (lhrcnn.cli)."""
import sys

from lhrcnn.cli import main

if __name__ == "__main__":
    sys.exit(main())
