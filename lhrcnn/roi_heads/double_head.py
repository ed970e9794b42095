"""Double-Head R-CNN's R-CNN stage (docs/models.md#double-head-r-cnn): sampled RoIs, the
Double-Head box head's four weighted losses, and its fused class scores at test time."""
from lhrcnn import losses as loss_lib
from lhrcnn.roi_heads.standard import StandardRoIHeads


class DoubleHeadRoIHeads(StandardRoIHeads):
    """StandardRoIHeads for `heads.DoubleHead`: the box head's inference output is class
    probabilities (fused for Double-Head-Ext), and training weighs every head's outputs
    (`losses.double_head_losses`).

    Args:
      loss_weights: (conv-cls, conv-reg, fc-cls, fc-reg).
      Others as StandardRoIHeads (the RoIs are sampled, not mined: `loss.ohem_top_k` must be 0).
    """

    outputs_probabilities = True

    def __init__(self, box_head, in_features, num_classes, loss_weights=(0.5, 2.0, 1.4, 0.6), **kwargs):
        super().__init__(box_head, in_features, num_classes, **kwargs)
        if self.loss_settings.ohem_top_k:
            raise ValueError("DoubleHeadRoIHeads trains on sampled RoIs: set ohem_top_k = 0")
        self.loss_weights = tuple(float(w) for w in loss_weights)

    def training_losses(self, head_input, rois, labels, box_targets, valid, image_info, training=None):
        outputs = self.box_head.outputs(head_input, rois, training=training)
        cls, box = loss_lib.double_head_losses(outputs, labels, box_targets, valid, weights=self.loss_weights,
                                               class_specific=self.coding.class_specific,
                                               **self.per_image_arguments(rois, image_info))
        return {"rcnn_cls": cls, "rcnn_box": box}
