"""Light-Head R-CNN, ResNet-v1-101: RPN on C4, thin feature map on C5, PS-RoI pooling head
(roi_pooling = "ps_roi_pool" in config.py).

The default wiring: the parts config.py names (backbone, neck, rpn_head, head), looked up in
lhrcnn.registry. Replace build_network to wire parts of your own."""
from lhrcnn.builders import build_default_detector


def build_network(config):
    return build_default_detector(config)
