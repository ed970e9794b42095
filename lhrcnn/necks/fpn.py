"""Feature Pyramid Network neck (Lin et al. 2017) in the two forms the family uses
(docs/models.md#detnet-59-fpn, #resnet-50-fpn):

* ResNet-50-FPN: C2..C5 at strides 4..32 -> P2..P5 (2x nearest upsample-and-add top-down), plus
  P6 = max-pool(P5, 1x1, stride 2) for the RPN's largest anchors.
* DetNet-59-FPN: C2..C6 at strides 4, 8, 16, 16, 16 -> P2..P6. C4, C5 and C6 share stride 16, so
  P6 -> P5 -> P4 are merged by plain addition (no upsampling); P4 -> P3 -> P2 upsample 2x.

The merge factor between neighbouring levels follows from their strides (1: add; 2: upsample 2x
and add), so one layer serves both. Lateral 1x1 and output 3x3 convolutions have `channels`
outputs and biases, no BN or activation, as in FPN.
"""
import tensorflow as tf

from lhrcnn.keras import keras
from lhrcnn.necks.resize import upsample_nearest_to


class FPN(keras.layers.Layer):
    """features dict -> {"P<i>": [B, H_i, W_i, channels]} for each input "C<i>".

    Args:
      input_strides: {"C2": 4, "C3": 8, ...}: the inputs and their strides (fine to coarse by name).
      channels: output channels of every level (256).
      extra_pool_level: also output P<last+1> = P<last> subsampled by 2 (the ResNet-FPN P6).
    `output_strides` gives each output's stride.
    """

    def __init__(self, input_strides, channels=256, extra_pool_level=False, **kwargs):
        super().__init__(**kwargs)
        names = sorted(input_strides, key=lambda n: int(n[1:]))
        if not names or any(not n.startswith("C") for n in names):
            raise ValueError(f"FPN: inputs must be named C<level>, got {names}")
        strides = [int(input_strides[n]) for n in names]
        for fine, coarse in zip(strides, strides[1:]):
            if coarse not in (fine, 2 * fine):
                raise ValueError(f"FPN: neighbouring input strides must be equal or double, got {strides}")
        self.input_strides = {n: s for n, s in zip(names, strides)}
        self.channels, self.extra_pool_level = channels, bool(extra_pool_level)
        self.names = names
        self.lateral = {n: keras.layers.Conv2D(channels, 1, name=f"fpn_lateral{n[1:]}") for n in names}
        self.output_conv = {n: keras.layers.Conv2D(channels, 3, padding="same", name=f"fpn_output{n[1:]}")
                            for n in names}
        # tracked by Keras through the dict attributes above

    @property
    def output_strides(self):
        out = {f"P{n[1:]}": s for n, s in self.input_strides.items()}
        if self.extra_pool_level:
            last = self.names[-1]
            out[f"P{int(last[1:]) + 1}"] = 2 * self.input_strides[last]
        return out

    def call(self, features, training=None):
        outputs, top = {}, None
        for i in reversed(range(len(self.names))):
            name = self.names[i]
            lateral = self.lateral[name](features[name])
            if top is not None:
                factor = self.input_strides[self.names[i + 1]] // self.input_strides[name]
                lateral = lateral + upsample_nearest_to(top, lateral, factor)
            top = lateral
            outputs[f"P{name[1:]}"] = self.output_conv[name](lateral)
        if self.extra_pool_level:
            last = f"P{self.names[-1][1:]}"
            outputs[f"P{int(last[1:]) + 1}"] = outputs[last][:, ::2, ::2, :]  # max-pool 1x1, stride 2
        return outputs

    def get_config(self):
        return {**super().get_config(), "input_strides": self.input_strides, "channels": self.channels,
                "extra_pool_level": self.extra_pool_level}
