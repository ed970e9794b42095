"""DetNet-59 + FPN on the embedded synthetic dataset: the data, schedule and optimiser of
synthetic.base with the detector of
detnet59.fpn.coco at a quarter of its widths (backbone `width_divisor` 4, FPN 64 channels, fc
256: the same topology, 16x fewer multiply-adds, so that it trains from scratch on a 2-core CPU in
minutes). Anchors 16..256 px for the synthetic objects (12 px to half an image)."""
from lhrcnn.config import base_experiment_config

_Base = base_experiment_config(__file__, "synthetic.base")


class ExperimentConfig(_Base):
    backbone = "detnet59"
    backbone_options = {"freeze_bn": False, "freeze_stem": False, "bn_momentum": 0.9, "width_divisor": 4}
    neck = "fpn"
    fpn_inputs = ("C2", "C3", "C4", "C5", "C6")
    fpn_channels = 64
    rpn_feature = ("P2", "P3", "P4", "P5", "P6")
    rpn_channels = 64
    anchor_strides = (4, 8, 16, 16, 16)
    level_anchor_scales = ((4,), (4,), (4,), (8,), (16,))  # 16, 32, 64, 128, 256 px
    anchor_ratios = (0.5, 1.0, 2.0)
    head = "fpn_2fc"
    roi_levels = ("P2", "P3", "P4", "P5", "P6")
    rcnn_fc_channels = 256
    roi_batch_size_per_image = 128
    ohem_top_k = 0
