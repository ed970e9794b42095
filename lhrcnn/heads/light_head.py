"""Light-Head R-CNN's R-CNN subnet (docs/original.md#light-head): position-sensitive RoI pooling of the thin
feature map, one fully connected layer, then classification and box regression."""
import tensorflow as tf

from lhrcnn import ops
from lhrcnn.keras import keras


class LightHead(keras.layers.Layer):
    """(thin_map [B, H, W, G²·K], rois [R, 5]) -> (class_logits [R, num_classes],
    box_deltas [R, 4·num_classes] class-specific (the original's code) or [R, 4] shared (the paper)).

    The pooled [R, G, G, K] tensor is flattened in (ph, pw, k) order, as TF1's slim.flatten did,
    so `ps_fc_1` weights of the original copy over unchanged.
    """

    def __init__(self, num_classes, group_size=7, spatial_scale=1.0 / 16, pooling="ps_roi_align",
                 sampling_ratio=(2, 2), fc_channels=2048, class_specific=True, backend=None,
                 fc_initializer=None, **kwargs):
        super().__init__(**kwargs)
        if pooling not in ("ps_roi_align", "ps_roi_pool"):
            raise ValueError(f"pooling must be 'ps_roi_align' or 'ps_roi_pool', got {pooling!r}")
        self.num_classes, self.group_size, self.spatial_scale = num_classes, group_size, spatial_scale
        self.pooling, self.sampling_ratio, self.fc_channels = pooling, tuple(sampling_ratio), fc_channels
        self.class_specific, self.backend = class_specific, backend
        init = lambda: keras.initializers.RandomNormal(stddev=0.01)  # noqa: E731  (one per layer)
        self.fc_initializer = fc_initializer  # None: the original's N(0, 0.01)
        self.fc = keras.layers.Dense(fc_channels, activation="relu", name="ps_fc_1",
                                     kernel_initializer=keras.initializers.get(fc_initializer) if fc_initializer else init())
        self.cls = keras.layers.Dense(num_classes, kernel_initializer=init(), name="cls_fc")
        self.bbox = keras.layers.Dense(4 * (num_classes if class_specific else 1),
                                       kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
                                       name="bbox_fc")

    def pool(self, thin_map, rois):
        if self.pooling == "ps_roi_align":
            return ops.ps_roi_align(thin_map, rois, self.group_size, self.spatial_scale, self.sampling_ratio,
                                    "max", backend=self.backend)
        return ops.ps_roi_pool(thin_map, rois, self.group_size, self.spatial_scale, backend=self.backend)

    def call(self, thin_map, rois):
        pooled = self.pool(thin_map, rois)
        channels = self.group_size * self.group_size * (thin_map.shape[-1] // (self.group_size ** 2))
        x = self.fc(tf.reshape(pooled, [-1, channels]))
        if not (self.cls.built and self.bbox.built):
            return self.cls(x), self.bbox(x)
        # One GEMM for both outputs (a thin [R, 2048] x [2048, C] product alone runs far below the
        # machine's GEMM throughput); the variables stay those of cls_fc and bbox_fc.
        kernel = tf.concat([self.cls.kernel, self.bbox.kernel], axis=1)
        bias = tf.concat([self.cls.bias, self.bbox.bias], axis=0)
        out = tf.nn.bias_add(tf.matmul(x, kernel), bias)
        return out[:, :self.num_classes], out[:, self.num_classes:]

    def tf1_layer_names(self):
        """attribute -> the original's layer name (in the backbone's TF1 scope), for conversion."""
        return {"fc": "ps_fc_1", "cls": "cls_fc", "bbox": "bbox_fc"}

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "group_size": self.group_size,
                "spatial_scale": self.spatial_scale, "pooling": self.pooling,
                "sampling_ratio": self.sampling_ratio, "fc_channels": self.fc_channels,
                "class_specific": self.class_specific, "backend": self.backend,
                "fc_initializer": self.fc_initializer}
