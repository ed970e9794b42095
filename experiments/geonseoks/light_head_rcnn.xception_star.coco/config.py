"""geonseoks' Light-Head R-CNN with the paper's Xception* backbone (docs/original.md#xception-backbone), trained on COCO
with the original's recipe: the experiment its TF1 checkpoints (scope `resnet_v1_xception`) convert
into with scripts/convert_tf1.py. Frozen BN and stem (conv1, block1) as in the original's arg
scopes, RPN (256 channels) on block2, large separable conv (15, 64, 490) on block3, PS-RoI-Align,
input 700 x 1100. 26.1 mAP on COCO in geonseoks' README (the paper: 30.7)."""
from lhrcnn.config import Config


class ExperimentConfig(Config):
    backbone = "xception_star"
    backbone_options = {"freeze_bn": True, "freeze_stem": True}
    rpn_feature = "C4"   # block2 output, 288 channels (stride 16)
    head_feature = "C5"  # block3 output, 576 channels (stride 16)
    rpn_channels = 256
    large_separable_mid_channels = 64
    image_short_size = 700
    image_max_size = 1100
    eval_image_short_size = 700
    eval_image_max_size = 1100
    basic_lr = 5e-4 * 2 * 0.7  # geonseoks' README: 5e-4 x train_batch_per_gpu x 0.7
