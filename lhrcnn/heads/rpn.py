"""The region proposal network head (docs/original.md#rpn-head): 3x3 conv + ReLU, then 1x1 convs for the
objectness logits and the box deltas of every anchor."""
from lhrcnn.keras import keras


class RPNHead(keras.layers.Layer):
    """features [B, H, W, C] -> (objectness_logits [B, H, W, 2A], box_deltas [B, H, W, 4A]);
    `call_with_hidden` also gives the 3x3 conv's feature (the RPN heads' contract).

    Channel layout as the original: logit channel 2a is background and 2a + 1 foreground of
    anchor a; delta channels 4a..4a+3 are (dx, dy, dw, dh) of anchor a.
    """

    def __init__(self, num_anchors, channels=512, **kwargs):
        super().__init__(**kwargs)
        self.num_anchors, self.channels = num_anchors, channels
        init = lambda: keras.initializers.RandomNormal(stddev=0.01)  # noqa: E731  (one per layer)
        self.conv = keras.layers.Conv2D(channels, 3, padding="same", activation="relu", kernel_initializer=init(),
                                        name="rpn_conv_3x3")
        self.cls = keras.layers.Conv2D(2 * num_anchors, 1, kernel_initializer=init(), name="rpn_cls_score")
        self.bbox = keras.layers.Conv2D(4 * num_anchors, 1, kernel_initializer=init(), name="rpn_bbox_pred")

    def call_with_hidden(self, features, training=None):
        """(logits, deltas, the 3x3 conv's feature)."""
        x = self.conv(features)
        return self.cls(x), self.bbox(x), x

    def call(self, features):
        logits, deltas, _ = self.call_with_hidden(features)
        return logits, deltas

    def tf1_layer_names(self):
        """attribute -> the original's layer name (in the backbone's TF1 scope), for conversion."""
        return {"conv": "rpn_conv/3x3", "cls": "rpn_cls_score", "bbox": "rpn_bbox_pred"}

    def get_config(self):
        return {**super().get_config(), "num_anchors": self.num_anchors, "channels": self.channels}
