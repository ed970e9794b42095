"""lhrcnn: Light-Head R-CNN and related two-stage detectors for TensorFlow 2 / Keras."""
__version__ = "0.1.0"
