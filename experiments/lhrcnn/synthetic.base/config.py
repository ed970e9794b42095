"""The embedded synthetic dataset's base config, not an experiment (there is no network_desp.py):
its classes and files (data/synthetic/, made by scripts/make_synthetic_dataset.py), image sizes
and input pipeline, box conventions, proposal and detection counts, and the from-scratch
training recipe (optimiser, schedule, precise BN) tuned on it. The synthetic experiments extend
it with `base_experiment_config(__file__, "synthetic.base")` and add only their detector."""
import math

from lhrcnn.config import Config

SYNTHETIC_CLASS_NAMES = ("background", "circle", "square", "triangle", "ring", "frame", "cross")


class SyntheticBaseConfig(Config):
    class_names = SYNTHETIC_CLASS_NAMES
    train_annotations = "data/synthetic/train/annotations.json"
    train_images = "data/synthetic/train/images"
    eval_annotations = "data/synthetic/val/annotations.json"
    eval_images = "data/synthetic/val/images"
    image_short_size = 320
    image_max_size = 512
    eval_image_short_size = 320
    eval_image_max_size = 512
    # Training speed on the 2-core machine: landscape and portrait images batched apart (a mixed
    # pair pads to a square: ~25% more pixels on this set), and the ~1.4 GB of decoded training
    # images kept in memory after the first pass (JPEG decoding competed with the step for the cores).
    group_by_aspect_ratio = True
    cache_decoded_images = True

    anchor_scales = (1, 2, 4, 8, 16)  # 16..256 px: the synthetic objects are 12 px to half an image
    box_offset = 0.0
    box_delta_clip = math.log(1000.0 / 16)  # from scratch, early deltas can overflow exp
    train_rpn_pre_nms_top_n = 2000
    train_rpn_post_nms_top_n = 300
    test_rpn_pre_nms_top_n = 1000
    test_rpn_post_nms_top_n = 100
    rcnn_box_loss_weight = 1.0
    test_nms = 0.5
    test_score_threshold = 0.01

    # The schedule: 100 warm-up + 10 "epochs" of nr_image_per_epoch / 2 steps (2 images each);
    # the LR decays in steps after epoch 4 (measured at 1500 steps: AP 0.22 vs 0.185 with a single
    # drop after epoch 7).
    train_batch_per_gpu = 2
    # From scratch on a short budget: Adam converges far faster than the original's momentum
    # SGD, and precise BN statistics (recomputed over 50 batches after the last step) remove the
    # gap between the training-mode and the inference-mode network that lagging moving averages
    # leave (measured after 400 steps on 8 images: AP 0.067 -> 0.671 on those images).
    optimizer = "adam"
    basic_lr = 0.001
    precise_bn_batches = 50
    gradient_multipliers = {}
    gradient_clip_norm = 10.0
    weight_decay = 4e-5
    nr_image_per_epoch = 940
    max_epoch = 10
    warmup_iters = 100
    lr_stages = ((4, 1.0), (6, 0.5), (8, 0.2), (9, 0.05), (10, 0.01))
