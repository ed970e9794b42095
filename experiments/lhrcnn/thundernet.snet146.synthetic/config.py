"""ThunderNet with SNet146 on the embedded synthetic dataset, the main job's default (`make demo`):
the data, schedule and optimiser of synthetic.base with ThunderNet's detector (docs/models.md#thundernet): CEM, compressed RPN with 25 anchors,
SAM, PS-RoI-Align with 5 channels per bin, one fc 1024. Trained from scratch (no ImageNet SNet here)."""
from lhrcnn.config import base_experiment_config

_Base = base_experiment_config(__file__, "synthetic.base")


class ExperimentConfig(_Base):
    backbone = "snet146"
    backbone_options = {"freeze_bn": False, "bn_momentum": 0.9}
    neck = "cem"          # the Context Enhancement Module adds "CEM" (stride 16, 245 channels)
    rpn_head = "compressed"
    head = "thundernet"   # SAM (the RPN feature reweights the CEM map) + the Light-Head subnet
    rpn_feature = "CEM"
    head_feature = "CEM"
    feature_stride = 16
    rpn_channels = 256
    # 5 sizes (synthetic.base's 16..256 px) x 5 ratios = 25 anchors (ThunderNet)
    anchor_ratios = (0.5, 0.75, 1.0, 4.0 / 3.0, 2.0)
    large_separable_out_channels = 245  # the thin map: 7 x 7 x 5
    rcnn_fc_channels = 1024
    head_initializer = "he_normal"  # the fc after PS-RoI-Align, trained from scratch
    ohem_top_k = 256  # per replica (2 images)
    # The main job's schedule, sized for about ten minutes of training on a 2-core CPU:
    # 100 warm-up + 10 "epochs" of 290 steps = 3000 steps at ~0.2 s per step (docs/main_job.md).
    # From scratch, this detector takes four times synthetic.base's learning rate: measured on
    # the val set, 3300 steps at 0.004 gave AP 0.641 / AP50 0.843, where 4800 steps at 0.001 gave
    # 0.484 / 0.676 and 6900 steps 0.623 / 0.830; 2600 steps at 0.006 gave 0.585 / 0.799.
    basic_lr = 0.004
    nr_image_per_epoch = 580
