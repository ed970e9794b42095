"""The original's R-FCN baseline (rfcn_reproduce.ori_res101.coco.baseline): ResNet-v1-101,
conv_new_1 1x1 1024 on C5, position-sensitive score maps (7x7x81) and box maps (7x7x4),
PS-RoI pooling and a vote, test NMS 0.3. 35.5 mAP on COCO minival in the original README."""
from lhrcnn.config import Config


class ExperimentConfig(Config):
    head = "rfcn"
    roi_pooling = "ps_roi_pool"
    test_nms = 0.3
