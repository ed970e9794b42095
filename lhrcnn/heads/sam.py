"""ThunderNet's Spatial Attention Module (docs/models.md#spatial-attention-module): the RPN's
hidden feature reweights the CEM map into the thin feature map the R-CNN subnet pools from."""
import tensorflow as tf

from lhrcnn.keras import keras


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
