"""DetNet-59 + FPN (docs/models.md#detnet-59-fpn): C2..C6 -> P2..P6 (P6 -> P5 -> P4 added
without upsampling, all stride 16), a shared RPN head on P2..P6 with anchors on the true strides
4, 8, 16, 16, 16, multi-level RoIAlign (aligned) and the 2-fc 1024 head.

The default wiring: the parts config.py names (backbone, neck, rpn_head, head), looked up in
lhrcnn.registry. Replace build_network to wire parts of your own."""
from lhrcnn.builders import build_default_detector


def build_network(config):
    return build_default_detector(config)
