"""R-FCN, ResNet-v1-101: RPN on C4, position-sensitive score maps on C5, no thin feature map."""
from lhrcnn.backbones import build_backbone
from lhrcnn.detector import TwoStageDetector
from lhrcnn.heads import RFCNHead, RPNHead


def build_network(config):
    return TwoStageDetector(
        config,
        backbone=build_backbone(config.backbone, **config.backbone_options),
        rpn_head=RPNHead(config.num_anchors, config.rpn_channels),
        roi_head=RFCNHead(config.num_classes, config.ps_group_size, 1.0 / config.feature_stride,
                          channels=config.rfcn_channels, backend=config.ops_backend))
