"""lhrcnn: Light-Head R-CNN and related two-stage detectors for TensorFlow 2 / Keras.

The top-level names are imported on first use, so `import lhrcnn` does not import TensorFlow:

  lhrcnn.build_detector(experiment_dir, **overrides)   an experiment's detector, fresh weights
  lhrcnn.load_detector(experiment_dir, checkpoint=None, **overrides)   ... with a checkpoint's weights
  lhrcnn.Predictor(experiment_dir, checkpoint=None, **overrides)   detections on images
  lhrcnn.Predictor.from_saved_model(path)   the same from an export of `lhrcnn export`

The command line is `lhrcnn` (lhrcnn.cli; also `python -m lhrcnn`).
"""
import importlib

__version__ = "0.1.0"

_LAZY = {
    "build_detector": "lhrcnn.detector",
    "load_detector": "lhrcnn.detector",
    "Predictor": "lhrcnn.predictor",
    "Detections": "lhrcnn.predictor",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lhrcnn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
