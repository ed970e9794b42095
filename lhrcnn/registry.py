"""Registries of detector parts by name.

A config names its parts (`backbone`, `neck`, `rpn_head`, `head`); the default wiring
(`lhrcnn.builders.build_default_detector`) looks each name up here. A new part is a builder
function plus one registration, in any module imported before the detector is built:

    from lhrcnn.registry import ROI_HEADS

    @ROI_HEADS.register("my_head")
    def build_my_head(config, feature_strides):
        return MyRoIHeads(...)

What each registry's builders take and return:

* `BACKBONES`: `(config) -> keras.Model`: images [B, H, W, 3] -> dict of named features, with
  `feature_strides` (name -> stride in input pixels).
* `NECKS`: `(config, feature_strides) -> layer`: features dict -> dict of new features (added to
  the backbone's), with `output_strides` (name -> stride) of what it adds.
* `RPN_HEADS`: `(config) -> layer` with `call_with_hidden(x, training) -> (objectness logits
  [B, H, W, 2A], box deltas [B, H, W, 4A], hidden feature [B, H, W, C])`.
* `ROI_HEADS`: `(config, feature_strides) -> layer` following the RoI-heads contract of
  `lhrcnn.roi_heads.StandardRoIHeads`: `(features, proposals, image_info, targets=None,
  training=False) -> (detections or None, losses dict)`.

`feature_strides` is every feature the detector computes before the RPN (backbone and neck).
See docs/architecture.md.
"""
import difflib


class Registry:
    """name -> builder. `register(name)` is a decorator (or `register(name, builder)`);
    `get(name)` raises ValueError naming the closest registered name."""

    def __init__(self, kind):
        self.kind = kind
        self._builders = {}

    def register(self, name, builder=None):
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} registry: a name must be a non-empty string, got {name!r}")

        def add(fn):
            if name in self._builders and self._builders[name] is not fn:
                raise ValueError(f"{self.kind} {name!r} is already registered (by {self._builders[name].__module__}."
                                 f"{self._builders[name].__qualname__})")
            self._builders[name] = fn
            return fn
        return add(builder) if builder is not None else add

    def unregister(self, name):
        """Removes `name` (tests that register parts of their own clean up with it)."""
        self._builders.pop(name, None)

    def get(self, name):
        if name not in self._builders:
            close = difflib.get_close_matches(str(name), self.names(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown {self.kind} {name!r}{hint} (registered: {', '.join(self.names())})")
        return self._builders[name]

    def names(self):
        return sorted(self._builders)

    def __contains__(self, name):
        return name in self._builders


BACKBONES = Registry("backbone")
NECKS = Registry("neck")
RPN_HEADS = Registry("rpn_head")
ROI_HEADS = Registry("head")

__all__ = ["BACKBONES", "NECKS", "ROI_HEADS", "RPN_HEADS", "Registry"]
