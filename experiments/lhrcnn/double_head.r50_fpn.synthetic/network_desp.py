"""The network of double_head.r50_fpn.coco (ResNet-50-FPN, Double-Head-Ext); the config sets the widths."""
from lhrcnn.builders import build_fpn_detector


def build_network(config):
    return build_fpn_detector(config)
