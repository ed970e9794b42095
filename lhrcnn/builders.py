"""The library's parts registered by name, and the default wiring of a detector from a Config
(docs/architecture.md).

`build_default_detector(config)`: `BACKBONES[config.backbone]` -> optional `NECKS[config.neck]`
-> the RPN stage with `RPN_HEADS[config.rpn_head]` -> `ROI_HEADS[config.head]`. An experiment's
`network_desp.py` calls it, or wires its own parts.

Registered here:
* backbones: every name of `lhrcnn.backbones.BACKBONE_NAMES` (`backbone_options` passed on);
* necks: "cem" (ThunderNet's Context Enhancement Module on C4, C5), "fpn" (feature pyramid on
  `fpn_inputs`);
* RPN heads: "standard" (3x3 conv + 1x1s), "compressed" (ThunderNet's 5x5 depthwise + 1x1);
* RoI heads: "light_head" (large separable thin map + PS-RoI pooling + fc), "rfcn",
  "thundernet" (SAM thin map + Light-Head subnet), "fpn_2fc", "double_head".
"""
from lhrcnn.backbones import BACKBONE_NAMES, build_backbone
from lhrcnn.detector import TwoStageDetector
from lhrcnn.heads import (CompressedRPNHead, DoubleHead, LightHead, RFCNHead, RPNHead, SpatialAttention,
                          TwoFCHead)
from lhrcnn.necks import FPN, CEMNeck, LargeSeparableConv
from lhrcnn.registry import BACKBONES, NECKS, ROI_HEADS, RPN_HEADS
from lhrcnn.roi_heads import DoubleHeadRoIHeads, StandardRoIHeads, ThunderNetRoIHeads
from lhrcnn.rpn import RegionProposalNetwork


def _need(condition, message):
    if not condition:
        raise ValueError(f"config: {message}")


# ----------------------------------------------------------------------------- backbones
def _register_backbone(name):
    BACKBONES.register(name, lambda config: build_backbone(name, **config.backbone_options))


for _name in BACKBONE_NAMES:
    _register_backbone(_name)


# ----------------------------------------------------------------------------- necks
@NECKS.register("cem")
def build_cem(config, feature_strides):
    """ThunderNet's CEM on C4, C5 and C5's global pool, `large_separable_out_channels` wide
    (245 = 7 x 7 x 5): adds "CEM" at C4's stride."""
    _need("C4" in feature_strides and "C5" in feature_strides,
          f"neck 'cem' needs backbone features C4 and C5, got {sorted(feature_strides)}")
    return CEMNeck(config.large_separable_out_channels, c4_stride=feature_strides["C4"], name="cem")


@NECKS.register("fpn")
def build_fpn(config, feature_strides):
    """The feature pyramid on `fpn_inputs` (`fpn_channels`, `fpn_extra_pool_level`): adds P<k>."""
    missing = [n for n in config.fpn_inputs or () if n not in feature_strides]
    _need(config.fpn_inputs and not missing,
          f"fpn_inputs {config.fpn_inputs!r} must name features of backbone {config.backbone!r} "
          f"({sorted(feature_strides)})")
    return FPN({n: feature_strides[n] for n in config.fpn_inputs}, config.fpn_channels,
               extra_pool_level=config.fpn_extra_pool_level, name="fpn")


# ----------------------------------------------------------------------------- RPN
@RPN_HEADS.register("standard")
def build_rpn_head(config):
    return RPNHead(config.num_anchors, config.rpn_channels)


@RPN_HEADS.register("compressed")
def build_compressed_rpn_head(config):
    return CompressedRPNHead(config.num_anchors, config.rpn_channels)


def build_rpn(config, feature_strides):
    """The RPN stage with the config's registered RPN head, on `rpn_feature` (one map, or a
    pyramid's levels whose `anchor_strides` must be their true strides)."""
    names = tuple(config.rpn_feature) if config.multi_level_rpn else (config.rpn_feature,)
    missing = [n for n in names if n not in feature_strides]
    _need(not missing, f"rpn_feature {config.rpn_feature!r}: {missing} not among the features "
                       f"{sorted(feature_strides)}")
    if config.multi_level_rpn:
        wrong = [(n, s, feature_strides[n]) for n, s in zip(names, config.anchor_strides) if s != feature_strides[n]]
        _need(not wrong, f"anchor_strides must be the levels' true strides; (level, given, true): {wrong}")
    return RegionProposalNetwork.from_config(config, RPN_HEADS.get(config.rpn_head)(config))


# ----------------------------------------------------------------------------- RoI heads
def _light_head_subnet(config):
    return LightHead(config.num_classes, config.ps_group_size, 1.0 / config.feature_stride,
                     pooling=config.roi_pooling, sampling_ratio=config.ps_sampling_ratio,
                     fc_channels=config.rcnn_fc_channels, class_specific=config.class_specific_regression,
                     backend=config.ops_backend, fc_initializer=config.head_initializer)


def _roi_levels(config, feature_strides):
    missing = [n for n in config.roi_levels or () if n not in feature_strides]
    _need(config.roi_levels and not missing,
          f"roi_levels {config.roi_levels!r} must be pyramid outputs ({sorted(feature_strides)})")
    return {n: feature_strides[n] for n in config.roi_levels}


@ROI_HEADS.register("light_head")
def build_light_head(config, feature_strides):
    """Light-Head R-CNN: the large separable thin map on `head_feature`, PS-RoI pooling, one fc."""
    thin_map = LargeSeparableConv(config.large_separable_kernel, config.large_separable_mid_channels,
                                  config.large_separable_out_channels, kernel_initializer=config.head_initializer,
                                  norm=config.thin_map_norm)
    return StandardRoIHeads(_light_head_subnet(config), config.head_feature, thin_map=thin_map, name="roi_head",
                            **StandardRoIHeads.settings_from_config(config))


@ROI_HEADS.register("rfcn")
def build_rfcn(config, feature_strides):
    """R-FCN: position-sensitive score maps on `head_feature` and a vote."""
    head = RFCNHead(config.num_classes, config.ps_group_size, 1.0 / config.feature_stride,
                    channels=config.rfcn_channels, backend=config.ops_backend)
    return StandardRoIHeads(head, config.head_feature, name="roi_head", **StandardRoIHeads.settings_from_config(config))


@ROI_HEADS.register("thundernet")
def build_thundernet_head(config, feature_strides):
    """ThunderNet: SAM (the RPN's feature reweights `head_feature`, the CEM map) as the thin map,
    PS-RoI-Align with `large_separable_out_channels` / G² channels per bin, one fc."""
    _need(not config.multi_level_rpn, "head 'thundernet' needs a single-map rpn_feature (its SAM reads the RPN "
                                      "feature)")
    sam = SpatialAttention(config.large_separable_out_channels, name="sam")
    return ThunderNetRoIHeads(_light_head_subnet(config), config.head_feature, thin_map=sam,
                              rpn_feature=config.rpn_feature, name="roi_head",
                              **StandardRoIHeads.settings_from_config(config))


def _pyramid_head_options(config):
    return dict(class_specific=config.class_specific_regression, sampling_ratio=config.roi_align_sampling_ratio,
                aligned=config.roi_align_aligned, backend=config.ops_backend)


@ROI_HEADS.register("fpn_2fc")
def build_fpn_2fc(config, feature_strides):
    """FPN / DetNet's 2-fc 1024 head on multi-level RoIAlign from `roi_levels`."""
    levels = _roi_levels(config, feature_strides)
    head = TwoFCHead(config.num_classes, levels, fc_channels=config.rcnn_fc_channels, name="box_head",
                     **_pyramid_head_options(config))
    return StandardRoIHeads(head, tuple(levels), name="roi_head", **StandardRoIHeads.settings_from_config(config))


@ROI_HEADS.register("double_head")
def build_double_head(config, feature_strides):
    """Double-Head R-CNN (fc-head classifies, conv-head regresses) on `roi_levels`."""
    levels = _roi_levels(config, feature_strides)
    head = DoubleHead(config.num_classes, levels, fc_channels=config.rcnn_fc_channels,
                      conv_channels=config.double_head_conv_channels,
                      conv_mid_channels=config.double_head_conv_mid_channels,
                      conv_blocks=config.double_head_conv_blocks, non_local=config.double_head_non_local,
                      conv_roi_scale=config.double_head_conv_roi_scale, ext=config.double_head_ext,
                      name="double_head", **_pyramid_head_options(config))
    return DoubleHeadRoIHeads(head, tuple(levels), loss_weights=config.double_head_loss_weights, name="roi_head",
                              **StandardRoIHeads.settings_from_config(config))


# ----------------------------------------------------------------------------- wiring
def build_default_detector(config):
    """backbone -> optional neck -> RPN -> RoI heads, each part by its registered name (every
    name is looked up before anything is built, so a misspelt one fails at once)."""
    build_backbone_part = BACKBONES.get(config.backbone)
    build_neck = NECKS.get(config.neck) if config.neck is not None else None
    RPN_HEADS.get(config.rpn_head)
    build_roi_heads = ROI_HEADS.get(config.head)
    backbone = build_backbone_part(config)
    feature_strides = dict(backbone.feature_strides)
    neck = None
    if build_neck is not None:
        neck = build_neck(config, feature_strides)
        feature_strides.update(neck.output_strides)
    rpn = build_rpn(config, feature_strides)
    roi_heads = build_roi_heads(config, feature_strides)
    return TwoStageDetector(config, backbone=backbone, rpn=rpn, roi_heads=roi_heads, neck=neck)
