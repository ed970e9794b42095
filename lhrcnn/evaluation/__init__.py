"""Evaluation: inference over a dataset, COCO results json, COCOeval's 12 statistics, and the
single-image preprocessing used by the demo."""
from lhrcnn.evaluation.coco_eval import (STAT_NAMES, CocoStats, detections_to_coco, evaluate, format_summary,
                                         inference_function, run_inference, write_json)

__all__ = ["STAT_NAMES", "CocoStats", "detections_to_coco", "evaluate", "format_summary", "inference_function",
           "run_inference", "write_json"]
