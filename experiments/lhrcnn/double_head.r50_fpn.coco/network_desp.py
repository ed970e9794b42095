"""Double-Head R-CNN on ResNet-50-FPN (shared/reference/seed_models.md §3): C2..C5 -> P2..P5 plus
P6 (P5 subsampled) for the RPN; RoIs pooled from P2..P5; the fc-head classifies, the conv-head
(on RoIs enlarged 1.3x) regresses; Double-Head-Ext losses and score fusion."""
from lhrcnn.builders import build_fpn_detector


def build_network(config):
    return build_fpn_detector(config)
