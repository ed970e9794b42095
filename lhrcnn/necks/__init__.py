"""Necks and thin-map layers: the feature pyramid (FPN) and ThunderNet's Context Enhancement
Module, which add features between the backbone and the RPN, and Light-Head's large separable
convolution, which makes the thin feature map of its R-CNN stage."""
from lhrcnn.necks.cem import CEMNeck, ContextEnhancement
from lhrcnn.necks.fpn import FPN
from lhrcnn.necks.large_separable import LargeSeparableConv

__all__ = ["CEMNeck", "ContextEnhancement", "FPN", "LargeSeparableConv"]
