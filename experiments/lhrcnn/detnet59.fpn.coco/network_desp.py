"""DetNet-59 + FPN (shared/reference/seed_models.md §1.3): C2..C6 -> P2..P6 (P6 -> P5 -> P4 added
without upsampling, all stride 16), a shared RPN head on P2..P6 with anchors on the true strides
4, 8, 16, 16, 16, multi-level RoIAlign (aligned) and the 2-fc 1024 head."""
from lhrcnn.builders import build_fpn_detector


def build_network(config):
    return build_fpn_detector(config)
