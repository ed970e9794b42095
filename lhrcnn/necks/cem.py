"""ThunderNet's Context Enhancement Module (docs/models.md#context-enhancement-module)."""
import tensorflow as tf

from lhrcnn.keras import keras
from lhrcnn.necks.resize import upsample_nearest_to


class ContextEnhancement(keras.layers.Layer):
    """(C4 [B, H, W, c4], C5 [B, ceil(H/2), ceil(W/2), c5]) -> [B, H, W, channels].

    Three 1x1 convolutions to `channels` (245 = 5 x 7 x 7), with bias, no BN or activation (the
    author's code): on C4; on C5, then 2x nearest upsampling (cropped to C4's size when C4 is
    odd-sized); on the global average pool of C5, broadcast over C4's grid. The three are summed.
    """

    def __init__(self, channels=245, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.c4 = keras.layers.Conv2D(channels, 1, name="cem_c4")
        self.c5 = keras.layers.Conv2D(channels, 1, name="cem_c5")
        self.glb = keras.layers.Conv2D(channels, 1, name="cem_glb")

    def call(self, c4, c5):
        up = upsample_nearest_to(self.c5(c5), c4, 2)
        glb = self.glb(tf.reduce_mean(c5, axis=[1, 2], keepdims=True))
        return self.c4(c4) + up + glb

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


class CEMNeck(ContextEnhancement):
    """The CEM as a detector's neck: features dict -> {"CEM": [B, H4, W4, channels]} from features
    `c4` and `c5` (default "C4", "C5"); `output_strides` is {"CEM": C4's stride}."""

    def __init__(self, channels=245, c4="C4", c5="C5", c4_stride=16, **kwargs):
        super().__init__(channels, **kwargs)
        self.c4_name, self.c5_name = c4, c5
        self.output_strides = {"CEM": int(c4_stride)}

    def call(self, features, training=None):
        return {"CEM": super().call(features[self.c4_name], features[self.c5_name])}

    def get_config(self):
        return {**super().get_config(), "c4": self.c4_name, "c5": self.c5_name,
                "c4_stride": self.output_strides["CEM"]}

