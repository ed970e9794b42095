"""The network of detnet59.fpn.coco (DetNet-59 + FPN, 2-fc head); the config sets the widths."""
from lhrcnn.builders import build_fpn_detector


def build_network(config):
    return build_fpn_detector(config)
