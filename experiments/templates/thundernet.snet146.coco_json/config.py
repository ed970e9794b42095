"""Template: ThunderNet (SNet146) on your own COCO-format dataset, trained from scratch.

Put the data here (paths relative to the working directory, e.g. the repository root), or change
the four paths below (or --set train_annotations=PATH etc. on the command line):

  data/my_dataset/train.json   COCO instances json: "images" (id, file_name, height, width),
                               "annotations" (image_id, category_id, bbox [x, y, w, h], iscrowd),
                               "categories" (id, name)
  data/my_dataset/train/       the training images (the json's file_name values are relative to it)
  data/my_dataset/val.json     the validation set, the same format and category names
  data/my_dataset/val/

The classes are the training json's categories, in id order, after the background (class_names =
"from_annotations"); the ids may be anything (1..N, COCO's 1..90 with gaps, 3, 17, 90): training
uses contiguous class indices, and results json files and SavedModel exports carry the dataset's
own ids. Then, from the folder the paths are relative to:

  lhrcnn train --experiment experiments/templates/thundernet.snet146.coco_json
  lhrcnn test  --experiment experiments/templates/thundernet.snet146.coco_json
  lhrcnn export --experiment experiments/templates/thundernet.snet146.coco_json --output OUT

Outputs go to output/templates/thundernet.snet146.coco_json/ (<output_root>/<parent folder>/
<folder>); copy the folder to experiments/<you>/<name>/ to keep a version of your own.

The detector is ThunderNet's (docs/models.md#thundernet): CEM, compressed RPN with 25 anchors,
SAM, PS-RoI-Align with 5 channels per bin, one fc 1024, at 320-pixel test input. The training
recipe is for random initial weights: every BatchNorm trains (freeze_bn False), Adam, a clipped
gradient norm and box deltas, He-initialised head, and the BatchNorm statistics recomputed after
the last step (precise BN). Set nr_image_per_epoch to your training set's size; the schedule is
max_epoch passes over it."""
import math

from lhrcnn.config import FROM_ANNOTATIONS, Config


class ExperimentConfig(Config):
    # --- data
    class_names = FROM_ANNOTATIONS  # "background" + train.json's categories in id order
    train_annotations = "data/my_dataset/train.json"
    train_images = "data/my_dataset/train"
    eval_annotations = "data/my_dataset/val.json"
    eval_images = "data/my_dataset/val"
    # ThunderNet's input: the long side resized to the square's side, the rest padded; multi-scale
    # training. Larger sizes (e.g. 480-640) help small objects, at a cost in speed.
    image_short_size = (240, 320, 480)
    image_max_size = (240, 320, 480)
    eval_image_short_size = 320
    eval_image_max_size = 320
    group_by_aspect_ratio = True    # landscape and portrait images batched apart (less padding)

    # --- the detector
    backbone = "snet146"
    backbone_options = {"freeze_bn": False, "bn_momentum": 0.9}  # from scratch: BatchNorms train
    neck = "cem"                    # the Context Enhancement Module adds "CEM" (stride 16, 245 channels)
    rpn_head = "compressed"
    head = "thundernet"             # SAM (the RPN feature reweights the CEM map) + the Light-Head subnet
    rpn_feature = "CEM"
    head_feature = "CEM"
    feature_stride = 16
    rpn_channels = 256
    anchor_base_size = 16
    anchor_scales = (2, 4, 8, 16, 32)                   # 32..512 px
    anchor_ratios = (0.5, 0.75, 1.0, 4.0 / 3.0, 2.0)    # x 5 ratios = 25 anchors
    box_offset = 0.0
    box_delta_clip = math.log(1000.0 / 16)  # from scratch, early deltas can overflow exp
    train_rpn_pre_nms_top_n = 2000
    train_rpn_post_nms_top_n = 1000
    test_rpn_pre_nms_top_n = 2000
    test_rpn_post_nms_top_n = 200
    large_separable_out_channels = 245  # the thin map: 7 x 7 x 5
    rcnn_fc_channels = 1024
    head_initializer = "he_normal"      # the fc after PS-RoI-Align, trained from scratch
    roi_batch_size_per_image = 512
    roi_fg_fraction = 0.25
    ohem_top_k = 0
    rcnn_box_loss_weight = 1.0
    test_nms = 0.5
    test_score_threshold = 0.05

    # --- training from random weights
    train_batch_per_gpu = 8         # per replica; the learning rate scales with the replicas
    sync_batch_norm = False         # True on several GPUs with small per-GPU batches
    optimizer = "adam"
    basic_lr = 0.001                # per replica
    gradient_clip_norm = 10.0
    gradient_multipliers = {}
    weight_decay = 4e-5
    precise_bn_batches = 50         # recompute the BatchNorm statistics over 50 batches after the last step
    nr_image_per_epoch = 10000      # set to the number of training images
    max_epoch = 24
    warmup_iters = 500
    lr_stages = ((16, 1.0), (21, 0.1), (24, 0.01))  # (end epoch, lr factor)
