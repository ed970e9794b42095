"""ThunderNet's R-CNN stage (docs/models.md#thundernet): the Spatial Attention Module makes the
thin feature map from the Context Enhancement Module's map and the RPN's hidden feature, then
the Light-Head subnet (PS-RoI-Align, one fc) classifies and regresses."""
from lhrcnn.roi_heads.standard import StandardRoIHeads


class ThunderNetRoIHeads(StandardRoIHeads):
    """StandardRoIHeads whose thin map is `thin_map(features[in_features],
    proposals["rpn_features"][rpn_feature])`: the SAM reweights the CEM map by the RPN's feature,
    so R-CNN gradients also reach the RPN trunk.

    Args:
      rpn_feature: the feature the RPN ran on (the key of its hidden feature in the proposals).
      Others as StandardRoIHeads (`thin_map`: a `heads.SpatialAttention`).
    """

    def __init__(self, box_head, in_features, num_classes, thin_map, rpn_feature, **kwargs):
        if thin_map is None:
            raise ValueError("ThunderNetRoIHeads needs its Spatial Attention Module (thin_map)")
        super().__init__(box_head, in_features, num_classes, thin_map=thin_map, **kwargs)
        self.rpn_feature = rpn_feature

    def head_input(self, features, proposals=None, training=None):
        if proposals is None:
            raise ValueError("ThunderNetRoIHeads.head_input needs the RPN stage's proposals (its rpn_features)")
        rpn_features = proposals["rpn_features"]
        if self.rpn_feature not in rpn_features:
            raise ValueError(f"ThunderNetRoIHeads: the RPN ran on {sorted(rpn_features)}, not on {self.rpn_feature!r}")
        return self.thin_map(features[self.in_features], rpn_features[self.rpn_feature], training=training)
