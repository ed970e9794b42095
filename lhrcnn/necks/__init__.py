"""Necks: layers between the backbone and the heads (the light head's thin feature map)."""
from lhrcnn.necks.large_separable import LargeSeparableConv

__all__ = ["LargeSeparableConv"]
