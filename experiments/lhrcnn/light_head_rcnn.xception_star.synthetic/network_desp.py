"""Light-Head R-CNN, Xception*: RPN on C4 (block2), thin feature map on C5 (block3), PS-RoI-Align
head; config.py scales the head to the synthetic set's 320-px images.

The default wiring: the parts config.py names (backbone, neck, rpn_head, head), looked up in
lhrcnn.registry. Replace build_network to wire parts of your own."""
from lhrcnn.builders import build_default_detector


def build_network(config):
    return build_default_detector(config)
