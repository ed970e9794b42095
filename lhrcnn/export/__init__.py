"""Exports of a trained detector.

SavedModel for TF Serving: the serving graph (serving.py), the label map (categories.py), warm-up
requests (warmup.py) and the export itself (saved_model.py). LiteRT and ONNX (edge.py) and their
TensorFlow-free runtime (edge_runtime.py). This module imports nothing, so edge_runtime runs
where TensorFlow is not installed."""

# What every export returns, under the TF Object Detection API's names.
OUTPUT_NAMES = ("detection_boxes", "detection_scores", "detection_classes", "num_detections",
                "detection_boxes_pixels")
# The image input of the uint8 signatures (the SavedModel's serving_default and the edge models).
IMAGES_INPUT = "images"
