"""Backbones by name: `build_backbone(name, **options)` → a Keras model of named features.

Every backbone maps `images [B, H, W, 3] float32` (mean-subtracted RGB, NHWC) to a dict of
features `{"C2": [B, h2, w2, c2], ...}` and carries `model.feature_strides` (feature → stride in
input pixels) and `model.feature_channels` (feature → channels).
"""
import functools
import inspect

from lhrcnn.backbones import resnet_v1, xception

_BUILDERS = {
    "resnet_v1_50": functools.partial(resnet_v1.resnet_v1, "resnet_v1_50"),
    "resnet_v1_101": functools.partial(resnet_v1.resnet_v1, "resnet_v1_101"),
    "xception_star": xception.xception_star,
}

BACKBONE_NAMES = tuple(sorted(_BUILDERS))


def backbone_options(name):
    """The option names `build_backbone(name, ...)` accepts, with their defaults."""
    builder = _builder(name)
    return {p.name: p.default for p in inspect.signature(builder).parameters.values()
            if p.kind == inspect.Parameter.KEYWORD_ONLY}


def build_backbone(name, **options):
    """Build the backbone `name` (one of BACKBONE_NAMES) with keyword `options`.

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
    return builder(**options)


def _builder(name):
    if name not in _BUILDERS:
        raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(BACKBONE_NAMES)}")
    return _BUILDERS[name]


__all__ = ["BACKBONE_NAMES", "backbone_options", "build_backbone"]
