"""Heads: the RPN and the R-CNN subnets (Light-Head, R-FCN)."""
from lhrcnn.heads.light_head import LightHead
from lhrcnn.heads.rfcn import RFCNHead
from lhrcnn.heads.rpn import RPNHead

__all__ = ["LightHead", "RFCNHead", "RPNHead"]
