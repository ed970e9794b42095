"""Light-Head R-CNN, Xception*: RPN on C4 (block2), thin feature map (15, 64, 490) on C5 (block3),
PS-RoI-Align head, fc 2048, class-specific regression (geonseoks' network).

The default wiring: the parts config.py names (backbone, neck, rpn_head, head), looked up in
lhrcnn.registry. Replace build_network to wire parts of your own."""
from lhrcnn.builders import build_default_detector


def build_network(config):
    return build_default_detector(config)
