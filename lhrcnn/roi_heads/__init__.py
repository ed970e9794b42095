"""R-CNN stages ("RoI heads"): RoI sampling, a box head, its losses and post-processing, behind
one contract (`StandardRoIHeads`); ThunderNet's and Double-Head's variants."""
from lhrcnn.roi_heads.double_head import DoubleHeadRoIHeads
from lhrcnn.roi_heads.standard import (BoxCoding, DetectionSettings, RCNNLoss, RoISampling,
                                       StandardRoIHeads)
from lhrcnn.roi_heads.thundernet import ThunderNetRoIHeads

__all__ = ["BoxCoding", "DetectionSettings", "DoubleHeadRoIHeads", "RCNNLoss", "RoISampling", "StandardRoIHeads",
           "ThunderNetRoIHeads"]
