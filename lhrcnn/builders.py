"""Detectors of the family assembled from a Config (the experiments' network_desp.py call
these): ThunderNet (shared/reference/seed_models.md §2); DetNet-59-FPN and ResNet-50-FPN with
the FPN 2-fc head (§1.3); Double-Head R-CNN (§3)."""
from lhrcnn.backbones import build_backbone
from lhrcnn.detector import TwoStageDetector
from lhrcnn.heads import LightHead, RPNHead
from lhrcnn.heads.compressed_rpn import CompressedRPNHead
from lhrcnn.heads.double_head import DoubleHead
from lhrcnn.heads.fpn_head import TwoFCHead
from lhrcnn.necks.cem import CEMNeck, SAMNeck
from lhrcnn.necks.fpn import FPN


def build_thundernet(config):
    """ThunderNet: SNet backbone; the Context Enhancement Module on C4, C5 and the global pool of
    C5 (config.large_separable_out_channels = 245 = 7 x 7 x 5); the compressed RPN (5x5 depthwise
    + 1x1 config.rpn_channels) on the CEM map; the Spatial Attention Module (the RPN feature
    reweights the CEM map) as the thin map; PS-RoI-Align with 5 channels per bin; one fc
    (config.rcnn_fc_channels = 1024)."""
    channels = config.large_separable_out_channels
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


def build_fpn_detector(config):
    """backbone -> FPN (config.fpn_inputs, fpn_channels, fpn_extra_pool_level) -> a shared RPN
    head over config.rpn_feature's levels -> the config.head R-CNN head ("fpn_2fc" or
    "double_head") pooling from config.roi_levels."""
    backbone = build_backbone(config.backbone, **config.backbone_options)
    missing = [n for n in config.fpn_inputs or () if n not in backbone.feature_strides]
    if not config.fpn_inputs or missing:
        raise ValueError(f"config: fpn_inputs {config.fpn_inputs!r} must name features of backbone "
                         f"{config.backbone!r} ({sorted(backbone.feature_strides)})")
    fpn = FPN({n: backbone.feature_strides[n] for n in config.fpn_inputs}, config.fpn_channels,
              extra_pool_level=config.fpn_extra_pool_level, name="fpn")
    strides = fpn.output_strides
    for what, names in (("rpn_feature", config.rpn_feature), ("roi_levels", config.roi_levels)):
        if any(n not in strides for n in names):
            raise ValueError(f"config: {what} {tuple(names)} must be FPN outputs {sorted(strides)}")
    wrong = [(n, s, strides[n]) for n, s in zip(config.rpn_feature, config.anchor_strides) if s != strides[n]]
    if wrong:
        raise ValueError(f"config: anchor_strides must be the levels' true strides; (level, given, true): {wrong}")
    level_strides = {n: strides[n] for n in config.roi_levels}
    common = dict(class_specific=config.class_specific_regression, sampling_ratio=config.roi_align_sampling_ratio,
                  aligned=config.roi_align_aligned, backend=config.ops_backend)
    if config.head == "fpn_2fc":
        head = TwoFCHead(config.num_classes, level_strides, fc_channels=config.rcnn_fc_channels, name="box_head",
                         **common)
    elif config.head == "double_head":
        head = DoubleHead(config.num_classes, level_strides, fc_channels=config.rcnn_fc_channels,
                          conv_channels=config.double_head_conv_channels,
                          conv_mid_channels=config.double_head_conv_mid_channels,
                          conv_blocks=config.double_head_conv_blocks, non_local=config.double_head_non_local,
                          conv_roi_scale=config.double_head_conv_roi_scale, ext=config.double_head_ext,
                          name="double_head", **common)
    else:
        raise ValueError(f"config: build_fpn_detector needs head 'fpn_2fc' or 'double_head', got {config.head!r}")
    return TwoStageDetector(config, backbone=backbone, pre_rpn_neck=fpn,
                            rpn_head=RPNHead(config.num_anchors, config.rpn_channels), roi_head=head)
