"""ThunderNet's Context Enhancement Module and Spatial Attention Module
(shared/reference/seed_models.md §2.3, §2.5)."""
import tensorflow as tf

from lhrcnn.keras import keras


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
        height, width = tf.shape(c4)[1], tf.shape(c4)[2]
        up = tf.repeat(tf.repeat(self.c5(c5), 2, axis=1), 2, axis=2)[:, :height, :width, :]
        glb = self.glb(tf.reduce_mean(c5, axis=[1, 2], keepdims=True))
        return self.c4(c4) + up + glb

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


class SpatialAttention(keras.layers.Layer):
    """(F_CEM [B, H, W, C], F_RPN [B, H, W, C_rpn]) -> F_CEM · sigmoid(BN(conv1x1(F_RPN))):
    the RPN's feature reweights the thin map, and R-CNN gradients reach the RPN trunk."""

    def __init__(self, channels=245, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.theta = keras.layers.Conv2D(channels, 1, use_bias=False, name="sam_conv")
        self.bn = keras.layers.BatchNormalization(epsilon=1e-5, name="sam_bn")

    def call(self, cem, rpn_feature, training=None):
        return cem * tf.sigmoid(self.bn(self.theta(rpn_feature), training=training))

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


class CEMNeck(ContextEnhancement):
    """The CEM as a detector's `pre_rpn_neck`: features dict -> {"CEM": [B, H4, W4, channels]}
    from features `c4` and `c5` (default "C4", "C5")."""

    def __init__(self, channels=245, c4="C4", c5="C5", **kwargs):
        super().__init__(channels, **kwargs)
        self.c4_name, self.c5_name = c4, c5

    def call(self, features, training=None):
        return {"CEM": super().call(features[self.c4_name], features[self.c5_name])}

    def get_config(self):
        return {**super().get_config(), "c4": self.c4_name, "c5": self.c5_name}


class SAMNeck(SpatialAttention):
    """The SAM as a detector's thin-map neck: features dict (with "CEM" and the RPN's hidden
    feature "RPN") -> the thin feature map F_CEM · sigmoid(BN(conv1x1(F_RPN)))."""

    takes_feature_dict = True

    def call(self, features, training=None):
        return super().call(features["CEM"], features["RPN"], training=training)
