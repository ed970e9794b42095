"""Backbones by name: `build_backbone(name, **options)` → a Keras model of named features.

Every backbone maps `images [B, H, W, 3] float32` (mean-subtracted RGB, NHWC) to a dict of
features `{"C2": [B, h2, w2, c2], ...}` and carries `model.feature_strides` (feature → stride in
input pixels) and `model.feature_channels` (feature → channels).
"""
import functools
import inspect

from lhrcnn.backbones import detnet, resnet_v1, snet, xception

_BUILDERS = {
    "resnet_v1_50": functools.partial(resnet_v1.resnet_v1, "resnet_v1_50"),
    "resnet_v1_101": functools.partial(resnet_v1.resnet_v1, "resnet_v1_101"),
    "xception_star": xception.xception_star,
    "snet49": functools.partial(snet.snet, "snet49"),
    "snet146": functools.partial(snet.snet, "snet146"),
    "snet535": functools.partial(snet.snet, "snet535"),
    "detnet59": detnet.detnet59,
}
# The options that turn a detection backbone into its ImageNet-classification form (the
# original strides, no detection dilation); a global pool and an fc-1000 are added on top.
_CLASSIFICATION = {"resnet_v1_50": {"dilate_block4": False}, "resnet_v1_101": {"dilate_block4": False},
                   "xception_star": {"block3_stride": 2}, "detnet59": {}}

BACKBONE_NAMES = tuple(sorted(_BUILDERS))


def backbone_options(name):
    """The option names `build_backbone(name, ...)` accepts, with their defaults."""
    builder = _builder(name)
    return {p.name: p.default for p in inspect.signature(builder).parameters.values()
            if p.kind == inspect.Parameter.KEYWORD_ONLY and p.name not in ("for_classification", "num_classes")}


def build_backbone(name, for_classification=False, num_classes=1000, **options):
    """Build the backbone `name` (one of BACKBONE_NAMES) with keyword `options`.

    `for_classification=True` gives the ImageNet-classification network instead (the original
    strides, no detection dilation, global average pool + fc `num_classes`): `images` →
    logits [B, num_classes], the form the papers' FLOPs and the ImageNet checkpoints refer to.

    Raises ValueError for an unknown name (listing the known ones) or an unknown option (naming
    it and listing the accepted ones).
    """
    builder = _builder(name)
    accepted = backbone_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"backbone {name!r}: unknown option(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(sorted(accepted))}")
    if not for_classification:
        return builder(**options)
    if name.startswith("snet"):
        return builder(for_classification=True, num_classes=num_classes, **options)
    from lhrcnn.keras import keras
    features = builder(**{**options, **_CLASSIFICATION[name]})
    top = features.output["C6" if "C6" in features.output else "C5"]
    pooled = keras.layers.GlobalAveragePooling2D(name="global_pool")(top)
    logits = keras.layers.Dense(num_classes, name="logits")(pooled)
    return keras.Model(inputs=features.input, outputs=logits, name=f"{name}_classification")


def _builder(name):
    if name not in _BUILDERS:
        raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(BACKBONE_NAMES)}")
    return _BUILDERS[name]


__all__ = ["BACKBONE_NAMES", "backbone_options", "build_backbone"]
