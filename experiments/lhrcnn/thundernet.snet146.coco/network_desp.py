"""ThunderNet (docs/models.md#thundernet): SNet146; Context Enhancement Module on C4, C5 and the
global pool of C5 (245 channels); compressed RPN (5x5 depthwise + 1x1 256) on the CEM map with 25
anchors; Spatial Attention Module (the RPN feature reweights the CEM map) as the thin map;
PS-RoI-Align with 5 channels per bin (7 x 7 x 5 = 245); one fc 1024.

The default wiring: the parts config.py names (backbone, neck, rpn_head, head), looked up in
lhrcnn.registry. Replace build_network to wire parts of your own."""
from lhrcnn.builders import build_default_detector


def build_network(config):
    return build_default_detector(config)
