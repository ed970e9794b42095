"""ThunderNet (shared/reference/seed_models.md §2): SNet backbone; Context Enhancement Module on
C4, C5 and the global pool of C5 (245 channels); compressed RPN (5x5 depthwise + 1x1 256) on the
CEM map with 25 anchors; Spatial Attention Module (the RPN feature reweights the CEM map) as
the thin map; PS-RoI-Align with 5 channels per bin (7 x 7 x 5 = 245); one fc 1024."""
from lhrcnn.backbones import build_backbone
from lhrcnn.detector import TwoStageDetector
from lhrcnn.heads import LightHead
from lhrcnn.heads.compressed_rpn import CompressedRPNHead
from lhrcnn.necks.cem import CEMNeck, SAMNeck


def build_network(config):
    channels = config.large_separable_out_channels  # the thin map: ps_group_size² x 5 = 245
    return TwoStageDetector(
        config,
        backbone=build_backbone(config.backbone, **config.backbone_options),
        pre_rpn_neck=CEMNeck(channels, name="cem"),
        rpn_head=CompressedRPNHead(config.num_anchors, config.rpn_channels),
        neck=SAMNeck(channels, name="sam"),
        roi_head=LightHead(config.num_classes, config.ps_group_size, 1.0 / config.feature_stride,
                           pooling=config.roi_pooling, sampling_ratio=config.ps_sampling_ratio,
                           fc_channels=config.rcnn_fc_channels, class_specific=config.class_specific_regression,
                           backend=config.ops_backend, fc_initializer=config.head_initializer))
