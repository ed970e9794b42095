"""ThunderNet with SNet146 on COCO, the paper's recipe (docs/models.md#thundernet-recipe) with
the author's code where the paper is silent: 320 x 320 test input; multi-scale training {240, 320,
480}; synchronous SGD, momentum 0.9, weight decay 1e-4, lr 0.01 for 64 images (4 GPUs x 16) with
cross-GPU BN; 375k iterations (the paper's COCO count; the decay steps are not given: x0.1 at
200k and 275k, the author's mmdet schedule's 50% / 69%); 25 anchors (32²..512² x 1:2, 3:4, 1:1,
4:3, 2:1); proposals 2000 -> 1000 (train), 2000 -> 200 (test), NMS 0.7; R-CNN on 512 sampled RoIs
per image, 25% positives. Paper: 23.6 AP on COCO test-dev, 473 MFLOPs.

Divergences: images keep their aspect ratio (the long side is resized to the square's side and
the rest padded) where the paper stretches them to the square; test-time NMS is plain NMS 0.5
(the author's mmdet re-implementation uses soft-NMS); no SSD-style photometric / expand / crop
augmentation (horizontal flips only)."""
import math

from lhrcnn.config import Config


class ExperimentConfig(Config):
    backbone = "snet146"
    backbone_options = {"freeze_bn": False}
    image_short_size = (240, 320, 480)
    image_max_size = (240, 320, 480)
    eval_image_short_size = 320
    eval_image_max_size = 320
    box_offset = 0.0
    box_delta_clip = math.log(1000.0 / 16)

    neck = "cem"          # the Context Enhancement Module adds "CEM" (stride 16, 245 channels)
    rpn_head = "compressed"
    head = "thundernet"   # SAM (the RPN feature reweights the CEM map) + the Light-Head subnet
    rpn_feature = "CEM"
    head_feature = "CEM"
    feature_stride = 16
    rpn_channels = 256
    anchor_base_size = 16
    anchor_scales = (2, 4, 8, 16, 32)
    anchor_ratios = (0.5, 0.75, 1.0, 4.0 / 3.0, 2.0)
    train_rpn_pre_nms_top_n = 2000
    train_rpn_post_nms_top_n = 1000
    test_rpn_pre_nms_top_n = 2000
    test_rpn_post_nms_top_n = 200
    rpn_nms_threshold = 0.7

    large_separable_out_channels = 245  # the thin map: 7 x 7 x 5
    rcnn_fc_channels = 1024
    roi_batch_size_per_image = 512
    roi_fg_fraction = 0.25
    ohem_top_k = 0
    rcnn_box_loss_weight = 1.0
    gradient_multipliers = {}
    test_nms = 0.5
    test_score_threshold = 0.05

    train_batch_per_gpu = 16
    sync_batch_norm = True
    basic_lr = 0.01 / 4          # per replica: 0.01 on 4 GPUs
    weight_decay = 1e-4
    warmup_iters = 500
    nr_image_per_epoch = 64 * 25000   # an "epoch" = 25k iterations of 64 images
    max_epoch = 15                    # 375k iterations
    lr_stages = ((8, 1.0), (11, 0.1), (15, 0.01))
