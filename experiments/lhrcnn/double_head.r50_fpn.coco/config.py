"""Double-Head-Ext R-CNN on ResNet-50-FPN, COCO, the official recipe
(docs/models.md#double-head-r-cnn): 800 / 1333 images; RPN on P2..P6 (anchors 32..512 at
strides 4..64, ratios 1:2, 1:1, 2:1); RoIAlign 7x7 (2x2 samples) from P2..P5; fc-head two fc 1024;
conv-head: up-channel block then [non-local -> bottleneck] x 2 (the official default that
produced its README numbers, 40.3 AP on val2017); the conv-head's RoIs enlarged 1.3x; Ext loss
weights (conv-cls, conv-reg, fc-cls, fc-reg) = 0.5, 2.0, 1.4, 0.6 and the fused classifier.
SGD lr 0.01 for 8 images (4 GPUs x 2), weight decay 1e-4, x0.1 at 120k and 160k, 180k in all;
512 RoIs per image with 25% positives; frozen stem, block1 and BN (maskrcnn-benchmark defaults).

The RPN ranks all levels together: train 10000 -> 2000 (maskrcnn-benchmark: 2000 per level
before NMS, 2000 after), test 5000 -> 1000."""
import math

from lhrcnn.config import Config


class ExperimentConfig(Config):
    backbone = "resnet_v1_50"
    backbone_options = {"freeze_bn": True, "freeze_stem": True, "dilate_block4": False}
    box_offset = 0.0
    box_delta_clip = math.log(1000.0 / 16)  # FPN codes clamp dw, dh before exp

    neck = "fpn"
    fpn_inputs = ("C2", "C3", "C4", "C5")
    fpn_channels = 256
    fpn_extra_pool_level = True  # P6 for the 512-px anchors
    rpn_feature = ("P2", "P3", "P4", "P5", "P6")
    rpn_channels = 256
    anchor_strides = (4, 8, 16, 32, 64)
    level_anchor_scales = ((8,), (8,), (8,), (8,), (8,))  # anchor sizes 32 .. 512
    anchor_ratios = (0.5, 1.0, 2.0)
    train_rpn_pre_nms_top_n = 10000
    train_rpn_post_nms_top_n = 2000
    test_rpn_pre_nms_top_n = 5000
    test_rpn_post_nms_top_n = 1000

    head = "double_head"
    roi_levels = ("P2", "P3", "P4", "P5")
    rcnn_fc_channels = 1024
    double_head_conv_channels = 1024
    double_head_conv_mid_channels = 256
    double_head_conv_blocks = 2
    double_head_non_local = True
    double_head_conv_roi_scale = 1.3
    double_head_ext = True
    double_head_loss_weights = (0.5, 2.0, 1.4, 0.6)
    roi_batch_size_per_image = 512
    roi_fg_fraction = 0.25
    ohem_top_k = 0
    gradient_multipliers = {}
    test_nms = 0.5
    test_score_threshold = 0.05

    train_batch_per_gpu = 2
    basic_lr = 0.01 / 4          # per replica: 0.01 on 4 GPUs
    weight_decay = 1e-4
    warmup_iters = 500
    nr_image_per_epoch = 8 * 20000   # an "epoch" = 20k iterations of 8 images
    max_epoch = 9                    # 180k iterations
    lr_stages = ((6, 1.0), (8, 0.1), (9, 0.01))  # x0.1 at 120k and 160k
