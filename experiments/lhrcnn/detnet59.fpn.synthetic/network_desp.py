"""The network of detnet59.fpn.coco (DetNet-59 + FPN, 2-fc head); config.py sets the widths.

The default wiring: the parts config.py names (backbone, neck, rpn_head, head), looked up in
lhrcnn.registry. Replace build_network to wire parts of your own."""
from lhrcnn.builders import build_default_detector


def build_network(config):
    return build_default_detector(config)
