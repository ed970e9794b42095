"""The path helpers of lhrcnn.paths and lhrcnn.errors' UserError under this module's names
(lhrcnn.export.categories imports config_path from here)."""
from lhrcnn.errors import MissingPathError, UserError  # noqa: F401
from lhrcnn.paths import (config_path, experiment_output_dir, require_dir, require_file,  # noqa: F401
                          resolve_checkpoint)
