"""COCO evaluation of a trained detector, the original's test.py (the same code and flags as
`lhrcnn test`; see lhrcnn/cli.py):

  python scripts/test.py --experiment experiments/lhrcnn/thundernet.snet146.synthetic
                         [--checkpoint PATH] [--annotations FILE --images DIR] [--output DIR]
                         [--max-images N] [--batch-size 1] [--set FIELD=VALUE ...] [--verbose]

Runs the detector over the eval set, writes <output>/results.json (COCO results entries) and
<output>/metrics.json (the 12 COCOeval statistics, images, images/s, checkpoint) and prints the
statistics. Defaults: the latest checkpoint in output/<user>/<experiment>/model_dump/, the
config's eval_annotations / eval_images, output/<user>/<experiment>/eval_dump/. Paths from the
config and paths on the command line are relative to the working directory (lhrcnn.paths).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lhrcnn import cli  # noqa: E402

cli.define_absl_flags("test")
main = cli.absl_main("test")

if __name__ == "__main__":
    cli.run_script(main)
