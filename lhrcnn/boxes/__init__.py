"""Box machinery of the two-stage detectors, all in-graph with fixed shapes (XLA-clean):
anchors, box coding, IoU, RPN proposals and training targets.

Boxes are (x1, y1, x2, y2) in input-image pixels; `offset=1.0` is the original's +1 width
convention (w = x2 - x1 + 1), `offset=0.0` the modern one.
"""
from lhrcnn.boxes.anchors import generate_base_anchors, grid_anchors
from lhrcnn.boxes.coder import clip_boxes, decode, encode
from lhrcnn.boxes.iou import batched_pairwise_iou, pairwise_iou
from lhrcnn.boxes.proposals import generate_proposals
from lhrcnn.boxes.targets import anchor_targets, roi_targets

__all__ = ["generate_base_anchors", "grid_anchors", "encode", "decode", "clip_boxes", "pairwise_iou",
           "batched_pairwise_iou", "generate_proposals", "anchor_targets", "roi_targets"]
