"""DetNet-59 + FPN on COCO with the paper's recipe (docs/models.md#detnet-59-fpn, #detnet-recipe):
800 / 1333 images, ImageNet-initialised backbone with stage 1 and every BN frozen, synchronous
SGD (momentum 0.9, weight decay 1e-4) at lr 0.02 for 16 images (8 GPUs x 2), x0.1 at 120k and
160k iterations, 180k in all, warm-up 500 iterations from 0.3 x lr; proposals 12000 -> 2000
(train) and 6000 -> 1000 (test); RoIAlign. The paper: 40.2 AP on minival, 4.8 GFLOPs backbone.

Choices where the paper is silent: RoIs are pooled from P2..P6 (BigDeviltjj's port, the
closest public number: 39.7); 512 sampled RoIs per image with 25% positives (FPN's); the RPN
ranks all levels' anchors together (one pre-NMS top-n over the pyramid)."""
import math

from lhrcnn.config import Config


class ExperimentConfig(Config):
    backbone = "detnet59"
    backbone_options = {"freeze_bn": True, "freeze_stem": True, "stage56_channels": 1024}
    box_offset = 0.0
    box_delta_clip = math.log(1000.0 / 16)  # FPN codes clamp dw, dh before exp

    neck = "fpn"
    fpn_inputs = ("C2", "C3", "C4", "C5", "C6")
    fpn_channels = 256
    rpn_feature = ("P2", "P3", "P4", "P5", "P6")
    rpn_channels = 256
    anchor_strides = (4, 8, 16, 16, 16)                       # the true strides (P4 = P5 = P6 = 16)
    level_anchor_scales = ((8,), (8,), (8,), (16,), (32,))  # anchor sizes 32, 64, 128, 256, 512
    anchor_ratios = (0.5, 1.0, 2.0)
    train_rpn_pre_nms_top_n = 12000
    train_rpn_post_nms_top_n = 2000
    test_rpn_pre_nms_top_n = 6000
    test_rpn_post_nms_top_n = 1000

    head = "fpn_2fc"
    roi_levels = ("P2", "P3", "P4", "P5", "P6")
    rcnn_fc_channels = 1024
    roi_batch_size_per_image = 512
    roi_fg_fraction = 0.25
    ohem_top_k = 0
    rcnn_box_loss_weight = 1.0
    gradient_multipliers = {}
    test_nms = 0.5
    test_score_threshold = 0.05

    train_batch_per_gpu = 2
    basic_lr = 0.02 / 8          # per replica: 0.02 on 8 GPUs
    weight_decay = 1e-4
    warmup_iters = 500
    warmup_factor = 0.3
    nr_image_per_epoch = 16 * 20000   # an "epoch" = 20k iterations of 16 images
    max_epoch = 9                     # 180k iterations
    lr_stages = ((6, 1.0), (8, 0.1), (9, 0.01))  # x0.1 at 120k and 160k
