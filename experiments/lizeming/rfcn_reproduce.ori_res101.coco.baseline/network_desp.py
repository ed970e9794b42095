"""R-FCN, ResNet-v1-101: RPN on C4, position-sensitive score maps on C5, no thin feature map.

The default wiring: the parts config.py names (backbone, neck, rpn_head, head), looked up in
lhrcnn.registry. Replace build_network to wire parts of your own."""
from lhrcnn.builders import build_default_detector


def build_network(config):
    return build_default_detector(config)
