"""Light-Head R-CNN, Xception*: RPN on C4 (block2), thin feature map (15, 64, 490) on C5 (block3),
PS-RoI-Align head, fc 2048, class-specific regression (geonseoks' network_desp.py)."""
from lhrcnn.backbones import build_backbone
from lhrcnn.detector import TwoStageDetector
from lhrcnn.heads import LightHead, RPNHead
from lhrcnn.necks import LargeSeparableConv


def build_network(config):
    return TwoStageDetector(
        config,
        backbone=build_backbone(config.backbone, **config.backbone_options),
        rpn_head=RPNHead(config.num_anchors, config.rpn_channels),
        neck=LargeSeparableConv(config.large_separable_kernel, config.large_separable_mid_channels,
                                config.large_separable_out_channels, kernel_initializer=config.head_initializer,
                                norm=config.thin_map_norm),
        roi_head=LightHead(config.num_classes, config.ps_group_size, 1.0 / config.feature_stride,
                           pooling=config.roi_pooling, sampling_ratio=config.ps_sampling_ratio,
                           fc_channels=config.rcnn_fc_channels, class_specific=config.class_specific_regression,
                           backend=config.ops_backend, fc_initializer=config.head_initializer))
