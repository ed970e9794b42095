"""Double-Head-Ext R-CNN on ResNet-50-FPN on the embedded synthetic dataset: the data, schedule
and optimiser of synthetic.base with the
detector of double_head.r50_fpn.coco at a quarter of its widths (backbone `width_divisor` 4,
FPN 64 channels, fc-head 256, conv-head 256 / 64 with 2 bottlenecks and non-local blocks): the
same topology at 1/16 of the multiply-adds, to train from scratch on a 2-core CPU in minutes."""
from lhrcnn.config import base_experiment_config

_Base = base_experiment_config(__file__, "synthetic.base")


class ExperimentConfig(_Base):
    backbone = "resnet_v1_50"
    backbone_options = {"freeze_bn": False, "freeze_stem": False, "bn_momentum": 0.9, "dilate_block4": False,
                        "width_divisor": 4}
    neck = "fpn"
    fpn_inputs = ("C2", "C3", "C4", "C5")
    fpn_channels = 64
    fpn_extra_pool_level = True
    rpn_feature = ("P2", "P3", "P4", "P5", "P6")
    rpn_channels = 64
    anchor_strides = (4, 8, 16, 32, 64)
    level_anchor_scales = ((4,), (4,), (4,), (4,), (4,))  # 16, 32, 64, 128, 256 px
    anchor_ratios = (0.5, 1.0, 2.0)
    head = "double_head"
    roi_levels = ("P2", "P3", "P4", "P5")
    rcnn_fc_channels = 256
    double_head_conv_channels = 256
    double_head_conv_mid_channels = 64
    double_head_conv_blocks = 2
    double_head_non_local = True
    double_head_ext = True
    double_head_loss_weights = (0.5, 2.0, 1.4, 0.6)
    roi_batch_size_per_image = 128
    ohem_top_k = 0
