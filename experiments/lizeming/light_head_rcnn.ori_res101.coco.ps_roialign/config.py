"""The original's light_head_rcnn.ori_res101.coco.ps_roialign experiment: ResNet-v1-101,
large separable conv (15, 256, 490), PS-RoI-Align (max, 2x2), fc 2048, test NMS 0.5.
40.0 mAP on COCO minival in the original README. The base Config holds its values."""
from lhrcnn.config import Config


class ExperimentConfig(Config):
    test_nms = 0.5
