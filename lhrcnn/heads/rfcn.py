"""The R-FCN baseline head of the original (docs/original.md#r-fcn-head): a 1x1 conv, position-sensitive score
and box maps, PS-RoI pooling and a vote (mean over the G x G bins)."""
import tensorflow as tf

from lhrcnn import ops
from lhrcnn.keras import keras


class RFCNHead(keras.layers.Layer):
    """(C5 [B, H, W, C], rois [R, 5]) -> (class_logits [R, num_classes], box_deltas [R, 4·num_classes]).

    Regression is class-agnostic (4 channels per bin) and tiled over the classes, as the original
    fed it through the class-specific loss. Score map channel for (class k, bin ph, pw) is
    (k·G + ph)·G + pw (the original's rfcn_cls layout), which is what `ops.ps_roi_pool` reads.
    """

    def __init__(self, num_classes, group_size=7, spatial_scale=1.0 / 16, channels=1024, backend=None, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.group_size, self.spatial_scale = num_classes, group_size, spatial_scale
        self.channels, self.backend = channels, backend
        init = lambda: keras.initializers.RandomNormal(stddev=0.01)  # noqa: E731  (one per layer)
        g2 = group_size * group_size
        self.conv = keras.layers.Conv2D(channels, 1, activation="relu", kernel_initializer=init(), name="conv_new_1")
        self.cls = keras.layers.Conv2D(g2 * num_classes, 1, kernel_initializer=init(), name="rfcn_cls")
        self.bbox = keras.layers.Conv2D(g2 * 4, 1, kernel_initializer=init(), name="rfcn_bbox")

    def score_maps(self, features):
        """The two position-sensitive maps: ([B, H, W, G²·classes], [B, H, W, G²·4])."""
        x = self.conv(features)
        return self.cls(x), self.bbox(x)

    def call(self, features, rois):
        cls_map, bbox_map = self.score_maps(features)
        pool = lambda m: ops.ps_roi_pool(m, rois, self.group_size, self.spatial_scale, backend=self.backend)  # noqa: E731
        class_logits = tf.reduce_mean(pool(cls_map), axis=[1, 2])
        box = tf.reduce_mean(pool(bbox_map), axis=[1, 2])
        return class_logits, tf.tile(box, [1, self.num_classes])

    def tf1_layer_names(self):
        """attribute -> the original's layer name (in the backbone's TF1 scope), for conversion."""
        return {"conv": "conv_new_1", "cls": "rfcn_cls", "bbox": "rfcn_bbox"}

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "group_size": self.group_size,
                "spatial_scale": self.spatial_scale, "channels": self.channels, "backend": self.backend}
