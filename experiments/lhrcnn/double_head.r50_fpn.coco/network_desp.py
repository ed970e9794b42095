"""Double-Head R-CNN on ResNet-50-FPN (docs/models.md#double-head-r-cnn): C2..C5 -> P2..P5 plus
P6 (P5 subsampled) for the RPN; RoIs pooled from P2..P5; the fc-head classifies, the conv-head
(on RoIs enlarged 1.3x) regresses; Double-Head-Ext losses and score fusion.

The default wiring: the parts config.py names (backbone, neck, rpn_head, head), looked up in
lhrcnn.registry. Replace build_network to wire parts of your own."""
from lhrcnn.builders import build_default_detector


def build_network(config):
    return build_default_detector(config)
