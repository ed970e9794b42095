"""Heads: the RPN heads (standard, ThunderNet's compressed one) and the R-CNN box heads
(Light-Head, R-FCN, FPN 2-fc, Double-Head) with ThunderNet's Spatial Attention Module. The
stages that use them are `lhrcnn.rpn` and `lhrcnn.roi_heads`."""
from lhrcnn.heads.compressed_rpn import CompressedRPNHead
from lhrcnn.heads.double_head import DoubleHead
from lhrcnn.heads.fpn_head import MultiLevelRoIAlign, TwoFCHead
from lhrcnn.heads.light_head import LightHead
from lhrcnn.heads.rfcn import RFCNHead
from lhrcnn.heads.rpn import RPNHead
from lhrcnn.heads.sam import SpatialAttention

__all__ = ["CompressedRPNHead", "DoubleHead", "LightHead", "MultiLevelRoIAlign", "RFCNHead", "RPNHead",
           "SpatialAttention", "TwoFCHead"]
