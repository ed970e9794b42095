"""The original's light_head_rcnn.ori_res101.coco experiment: as ps_roialign but with PS-RoI
pooling (average over integer bins) and test NMS 0.3. 38.2 mAP on COCO minival in the original
README. Same variable names as ps_roialign, so checkpoints are interchangeable."""
from lhrcnn.config import Config


class ExperimentConfig(Config):
    roi_pooling = "ps_roi_pool"
    test_nms = 0.3
