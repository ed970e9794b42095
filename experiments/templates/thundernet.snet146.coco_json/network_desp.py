"""ThunderNet (docs/models.md#thundernet): SNet146, Context Enhancement Module, compressed RPN with
25 anchors, Spatial Attention Module, PS-RoI-Align with 5 channels per bin, one fc 1024.

The default wiring: the parts config.py names (backbone, neck, rpn_head, head), looked up in
lhrcnn.registry. Replace build_network to wire parts of your own."""
from lhrcnn.builders import build_default_detector


def build_network(config):
    return build_default_detector(config)
