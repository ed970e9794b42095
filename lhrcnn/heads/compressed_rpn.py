"""ThunderNet's compressed RPN (docs/models.md#compressed-rpn): 5x5 depthwise conv + BN +
ReLU, 1x1 conv 256 + BN + ReLU (the RPN feature SAM uses), then 1x1 objectness and deltas."""
from lhrcnn.depthwise import DepthwiseConv2D
from lhrcnn.keras import keras


class CompressedRPNHead(keras.layers.Layer):
    """features [B, H, W, C] -> (objectness_logits [B, H, W, 2A], box_deltas [B, H, W, 4A]);
    `hidden(features)` gives the 256-channel RPN feature as well (`call_with_hidden`).
    Channel layout as RPNHead (2a background, 2a + 1 foreground; deltas 4a..4a+3)."""

    def __init__(self, num_anchors, channels=256, kernel_size=5, **kwargs):
        super().__init__(**kwargs)
        self.num_anchors, self.channels, self.kernel_size = num_anchors, channels, kernel_size
        init = lambda: keras.initializers.RandomNormal(stddev=0.01)  # noqa: E731
        self.dw = DepthwiseConv2D(kernel_size, padding="same", use_bias=False, name="rpn_dw")
        self.dw_bn = keras.layers.BatchNormalization(epsilon=1e-5, name="rpn_dw_bn")
        self.pw = keras.layers.Conv2D(channels, 1, use_bias=False, name="rpn_pw")
        self.pw_bn = keras.layers.BatchNormalization(epsilon=1e-5, name="rpn_pw_bn")
        self.cls = keras.layers.Conv2D(2 * num_anchors, 1, kernel_initializer=init(), name="rpn_cls_score")
        self.bbox = keras.layers.Conv2D(4 * num_anchors, 1, kernel_initializer=init(), name="rpn_bbox_pred")

    def hidden(self, features, training=None):
        x = keras.activations.relu(self.dw_bn(self.dw(features), training=training))
        return keras.activations.relu(self.pw_bn(self.pw(x), training=training))

    def call_with_hidden(self, features, training=None):
        x = self.hidden(features, training=training)
        return self.cls(x), self.bbox(x), x

    def call(self, features, training=None):
        logits, deltas, _ = self.call_with_hidden(features, training=training)
        return logits, deltas

    def get_config(self):
        return {**super().get_config(), "num_anchors": self.num_anchors, "channels": self.channels,
                "kernel_size": self.kernel_size}
