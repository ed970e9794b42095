"""R-CNN subnets on a feature pyramid: multi-level RoIAlign (the FPN level rule) and the 2-fc
box head of FPN and DetNet (docs/models.md#detnet-59-fpn, #fc-head)."""
import math

import tensorflow as tf

from lhrcnn import ops
from lhrcnn.keras import keras


def fpn_levels(rois, min_level, max_level, canonical_level=4, canonical_size=224.0):
    """The FPN level of each RoI: k = floor(k0 + log2(sqrt(w·h) / 224)), clamped to
    [min_level, max_level] (Lin et al. 2017, eq. 1; w, h without +1).

    Args:
      rois: [R, 5] (batch_index, x1, y1, x2, y2) or [R, 4] boxes, in input-image pixels.
    Returns:
      [R] int32 levels.
    """
    boxes = rois[:, -4:]
    area = tf.maximum(boxes[:, 2] - boxes[:, 0], 0.0) * tf.maximum(boxes[:, 3] - boxes[:, 1], 0.0)
    # sqrt(area) of 0 gives log2 = -inf -> clamped to min_level.
    level = tf.floor(canonical_level + tf.math.log(tf.sqrt(area) / canonical_size + 1e-8) / math.log(2.0))
    return tf.cast(tf.clip_by_value(level, min_level, max_level), tf.int32)


def scale_rois(rois, factor):
    """RoIs [R, 5] scaled by `factor` about their centres (Double-Head's conv-head RoIs: 1.3x);
    the batch index column is kept."""
    boxes = rois[:, 1:]
    centre = 0.5 * (boxes[:, :2] + boxes[:, 2:])
    half = 0.5 * factor * (boxes[:, 2:] - boxes[:, :2])
    return tf.concat([rois[:, :1], centre - half, centre + half], axis=1)


class MultiLevelRoIAlign(keras.layers.Layer):
    """(features dict with "P<k>" maps, rois [R, 5]) -> [R, S, S, C]: each RoI pooled by
    RoIAlign (avg of sampling_ratio² bilinear samples per bin, `aligned` pixel-centre
    convention) from the level the FPN rule assigns it.

    Args:
      level_strides: {"P2": 4, "P3": 8, ...}: the levels RoIs may be assigned to and their
        strides (DetNet: P4, P5 and P6 are all stride 16).
      level_rois (in `call`): optional [R, 5] boxes whose size picks the level (Double-Head
        pools its enlarged RoIs from the original box's level).
    """

    def __init__(self, level_strides, output_size=7, sampling_ratio=2, aligned=True, canonical_level=4,
                 canonical_size=224.0, backend=None, **kwargs):
        super().__init__(**kwargs)
        names = sorted(level_strides, key=lambda n: int(n[1:]))
        if not names or any(not n.startswith("P") for n in names):
            raise ValueError(f"MultiLevelRoIAlign: levels must be named P<level>, got {names}")
        levels = [int(n[1:]) for n in names]
        if levels != list(range(levels[0], levels[-1] + 1)):
            raise ValueError(f"MultiLevelRoIAlign: levels must be consecutive, got {names}")
        self.level_strides = {n: int(level_strides[n]) for n in names}
        self.output_size, self.sampling_ratio, self.aligned = output_size, sampling_ratio, bool(aligned)
        self.canonical_level, self.canonical_size, self.backend = canonical_level, canonical_size, backend

    def call(self, features, rois, level_rois=None):
        names = list(self.level_strides)
        first = int(names[0][1:])
        levels = fpn_levels(rois if level_rois is None else level_rois, first, first + len(names) - 1,
                            self.canonical_level, self.canonical_size)
        pooled, order = [], []
        for offset, name in enumerate(names):
            index = tf.reshape(tf.where(tf.equal(levels, first + offset)), [-1])
            pooled.append(ops.roi_align(features[name], tf.gather(rois, index), self.output_size,
                                        1.0 / self.level_strides[name], sampling_ratio=self.sampling_ratio,
                                        pooling="avg", aligned=self.aligned, backend=self.backend))
            order.append(index)
        # Back to the RoIs' order: row j of the concatenation is RoI order[j]. The inverse
        # permutation by a scatter (LiteRT has no InvertPermutation op).
        order = tf.cast(tf.concat(order, axis=0), tf.int32)
        count = tf.shape(order)[0]
        inverse = tf.scatter_nd(order[:, None], tf.range(count), tf.reshape(count, [1]))
        out = tf.gather(tf.concat(pooled, axis=0), inverse)
        out.set_shape([rois.shape[0]] + out.shape[1:].as_list())  # one row per RoI (static when R is)
        return out

    def get_config(self):
        return {**super().get_config(), "level_strides": self.level_strides, "output_size": self.output_size,
                "sampling_ratio": self.sampling_ratio, "aligned": self.aligned,
                "canonical_level": self.canonical_level, "canonical_size": self.canonical_size,
                "backend": self.backend}


def flatten(pooled):
    """[R, S, S, C] -> [R, S·S·C] in (y, x, c) order, with a static width for the fc layers."""
    return tf.reshape(pooled, [-1, pooled.shape[1] * pooled.shape[2] * pooled.shape[3]])


class TwoFCHead(keras.layers.Layer):
    """FPN's box head: (features dict, rois [R, 5]) -> (class_logits [R, num_classes],
    box_deltas [R, 4·num_classes] or [R, 4]). Multi-level RoIAlign 7x7, flatten, fc 1024 + ReLU,
    fc 1024 + ReLU, then the classifier (N(0, 0.01)) and the regressor (N(0, 0.001))."""

    def __init__(self, num_classes, level_strides, fc_channels=1024, class_specific=True, output_size=7,
                 sampling_ratio=2, aligned=True, backend=None, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.fc_channels, self.class_specific = num_classes, fc_channels, class_specific
        self.pooler = MultiLevelRoIAlign(level_strides, output_size, sampling_ratio, aligned, backend=backend,
                                         name="roi_align")
        self.fc1 = keras.layers.Dense(fc_channels, activation="relu", name="fc6")
        self.fc2 = keras.layers.Dense(fc_channels, activation="relu", name="fc7")
        self.cls = keras.layers.Dense(num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                                      name="cls_fc")
        self.bbox = keras.layers.Dense(4 * (num_classes if class_specific else 1),
                                       kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
                                       name="bbox_fc")

    def call(self, features, rois, training=None):
        pooled = self.pooler(features, rois)
        x = self.fc2(self.fc1(flatten(pooled)))
        return self.cls(x), self.bbox(x)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "fc_channels": self.fc_channels,
                "class_specific": self.class_specific}
