"""Double-Head R-CNN (Wu et al., CVPR 2020; docs/models.md#double-head-r-cnn): an fc-head
classifies, a conv-head regresses, on a feature pyramid.

* fc-head: RoIAlign 7x7 of the proposal -> flatten -> fc 1024 + ReLU -> fc 1024 + ReLU -> cls
  (C + 1) [+ reg (4C) in Double-Head-Ext].
* conv-head: RoIAlign 7x7 of the proposal enlarged 1.3x about its centre (from the level of the
  original box) -> an up-channel residual block (256 -> 1024) -> K bottlenecks (1024), each
  optionally preceded by a grouped non-local block -> 7x7 average pool -> reg (4C) [+ cls in Ext].
  BN in the head normalises over the RoI batch in training (both public codes do).
* Losses (`double_head_losses`): conv-cls, conv-reg, fc-cls, fc-reg weighted (Ext, the official
  code: 0.5, 2.0, 1.4, 0.6; plain Double-Head: 0, 2.5, 2.0, 0).
* Inference: boxes from the conv-head; class scores from the fc-head's softmax, or (Ext) the
  complementary fusion s = s_fc + s_conv·(1 - s_fc) applied element-wise (`fuse_scores`).
"""
import tensorflow as tf

from lhrcnn.heads.fpn_head import MultiLevelRoIAlign, flatten, scale_rois
from lhrcnn.keras import keras


def fuse_scores(fc_probs, conv_probs):
    """Double-Head-Ext's complementary fusion s = s_fc + s_conv·(1 - s_fc), element-wise."""
    return fc_probs + conv_probs * (1.0 - fc_probs)


def _conv_bn(filters, kernel_size, name, gamma_zero=False):
    conv = keras.layers.Conv2D(filters, kernel_size, padding="same", use_bias=False,
                               kernel_initializer="he_normal", name=f"{name}_conv")
    bn = keras.layers.BatchNormalization(epsilon=1e-5, name=f"{name}_bn",
                                         gamma_initializer="zeros" if gamma_zero else "ones")
    return conv, bn


class UpChannelBlock(keras.layers.Layer):
    """Residual block C_in -> C_out: 3x3 conv C_in + BN + ReLU -> 1x1 conv C_out + BN, plus a 1x1
    conv C_out + BN shortcut; add; ReLU."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.conv1, self.bn1 = None, None
        self.conv2, self.bn2 = _conv_bn(channels, 1, "conv2")
        self.short, self.bn_short = _conv_bn(channels, 1, "shortcut")

    def build(self, input_shape):
        self.conv1, self.bn1 = _conv_bn(int(input_shape[-1]), 3, "conv1")
        super().build(input_shape)

    def call(self, x, training=None):
        y = tf.nn.relu(self.bn1(self.conv1(x), training=training))
        y = self.bn2(self.conv2(y), training=training)
        return tf.nn.relu(y + self.bn_short(self.short(x), training=training))

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


class Bottleneck(keras.layers.Layer):
    """1x1 `mid` + BN + ReLU -> 3x3 `mid` + BN + ReLU -> 1x1 C + BN; + identity; ReLU."""

    def __init__(self, mid_channels, **kwargs):
        super().__init__(**kwargs)
        self.mid_channels = mid_channels
        self.conv1, self.bn1 = _conv_bn(mid_channels, 1, "conv1")
        self.conv2, self.bn2 = _conv_bn(mid_channels, 3, "conv2")
        self.conv3, self.bn3 = None, None

    def build(self, input_shape):
        self.conv3, self.bn3 = _conv_bn(int(input_shape[-1]), 1, "conv3")
        super().build(input_shape)

    def call(self, x, training=None):
        y = tf.nn.relu(self.bn1(self.conv1(x), training=training))
        y = tf.nn.relu(self.bn2(self.conv2(y), training=training))
        return tf.nn.relu(x + self.bn3(self.conv3(y), training=training))

    def get_config(self):
        return {**super().get_config(), "mid_channels": self.mid_channels}


class NonLocalBlock(keras.layers.Layer):
    """The official code's grouped dot-product non-local block: θ, φ, g = 1x1 convs C -> inter;
    `groups` groups of inter/groups channels; y = (θ φᵀ / N) g per group (N = positions, no
    softmax); W = 1x1 inter -> C, BN with zero-initialised γ (the block starts as the identity);
    out = ReLU(x + BN(W y))."""

    def __init__(self, inter_channels, groups=4, **kwargs):
        super().__init__(**kwargs)
        if inter_channels % groups:
            raise ValueError(f"NonLocalBlock: inter_channels {inter_channels} not divisible by groups {groups}")
        self.inter_channels, self.groups = inter_channels, groups
        self.theta = keras.layers.Conv2D(inter_channels, 1, name="theta")
        self.phi = keras.layers.Conv2D(inter_channels, 1, name="phi")
        self.g = keras.layers.Conv2D(inter_channels, 1, name="g")
        self.w, self.bn = None, None

    def build(self, input_shape):
        self.w, self.bn = _conv_bn(int(input_shape[-1]), 1, "w", gamma_zero=True)
        super().build(input_shape)

    def _grouped(self, t):
        """[B, H, W, inter] -> [B, groups, H·W, inter / groups]."""
        shape = tf.shape(t)
        t = tf.reshape(t, [shape[0], shape[1] * shape[2], self.groups, self.inter_channels // self.groups])
        return tf.transpose(t, [0, 2, 1, 3])

    def call(self, x, training=None):
        shape = tf.shape(x)
        theta, phi, g = self._grouped(self.theta(x)), self._grouped(self.phi(x)), self._grouped(self.g(x))
        positions = tf.cast(shape[1] * shape[2], x.dtype)
        # Batched matmuls on [B, groups, N, c]: the values of the einsum formulation, 1.7x faster on CPU
        affinity = tf.matmul(theta, phi, transpose_b=True) / positions  # [B, groups, N, N]
        y = tf.transpose(tf.matmul(affinity, g), [0, 2, 1, 3])         # [B, N, groups, c]
        y = tf.reshape(y, [shape[0], shape[1], shape[2], self.inter_channels])
        return tf.nn.relu(x + self.bn(self.w(y), training=training))

    def get_config(self):
        return {**super().get_config(), "inter_channels": self.inter_channels, "groups": self.groups}


class DoubleHead(keras.layers.Layer):
    """(features dict with P-levels, rois [R, 5]) -> (class scores [R, C+1] as PROBABILITIES,
    box deltas [R, 4·(C+1)] or [R, 4]) for inference (`roi_heads.DoubleHeadRoIHeads` post-processes
    them as probabilities); `outputs(...)` gives every head's raw outputs for the losses.

    Args:
      level_strides: the pooled levels and their strides ({"P2": 4, ..., "P5": 32}).
      fc_channels: width of the fc-head (1024). conv_channels: width of the conv-head (1024),
      conv_mid_channels: its bottlenecks' width (256), conv_blocks: bottlenecks after the
      up-channel block (mmdet 4; the official code 2 with non-local blocks), non_local: a
      grouped non-local block before each bottleneck, non_local_channels / non_local_groups:
      512 / 4. conv_roi_scale: the conv-head's RoI enlargement (1.3). ext: Double-Head-Ext
      (unfocused supervision and the fused classifier).
    """

    def __init__(self, num_classes, level_strides, fc_channels=1024, conv_channels=1024, conv_mid_channels=256,
                 conv_blocks=4, non_local=False, non_local_channels=512, non_local_groups=4, conv_roi_scale=1.3,
                 ext=True, class_specific=True, output_size=7, sampling_ratio=2, aligned=True, backend=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.class_specific, self.ext = num_classes, class_specific, bool(ext)
        self.conv_roi_scale = float(conv_roi_scale)
        self.settings = dict(fc_channels=fc_channels, conv_channels=conv_channels,
                             conv_mid_channels=conv_mid_channels, conv_blocks=conv_blocks, non_local=non_local,
                             non_local_channels=non_local_channels, non_local_groups=non_local_groups,
                             output_size=output_size, sampling_ratio=sampling_ratio, aligned=aligned)
        self.level_strides, self.backend = dict(level_strides), backend
        self.pooler = MultiLevelRoIAlign(level_strides, output_size, sampling_ratio, aligned, backend=backend,
                                         name="roi_align")
        reg_out = 4 * (num_classes if class_specific else 1)
        cls_init = lambda: keras.initializers.RandomNormal(stddev=0.01)  # noqa: E731
        reg_init = lambda: keras.initializers.RandomNormal(stddev=0.001)  # noqa: E731
        # fc-head
        self.fc1 = keras.layers.Dense(fc_channels, activation="relu", name="fc_head_fc6")
        self.fc2 = keras.layers.Dense(fc_channels, activation="relu", name="fc_head_fc7")
        self.fc_cls = keras.layers.Dense(num_classes, kernel_initializer=cls_init(), name="fc_head_cls")
        self.fc_reg = keras.layers.Dense(reg_out, kernel_initializer=reg_init(), name="fc_head_reg") \
            if self.ext else None
        # conv-head
        self.blocks = [UpChannelBlock(conv_channels, name="conv_head_up")]
        for i in range(conv_blocks):
            if non_local:
                self.blocks.append(NonLocalBlock(non_local_channels, non_local_groups,
                                                 name=f"conv_head_nonlocal{i + 1}"))
            self.blocks.append(Bottleneck(conv_mid_channels, name=f"conv_head_bottleneck{i + 1}"))
        self.conv_reg = keras.layers.Dense(reg_out, kernel_initializer=reg_init(), name="conv_head_reg")
        self.conv_cls = keras.layers.Dense(num_classes, kernel_initializer=cls_init(), name="conv_head_cls") \
            if self.ext else None

    def outputs(self, features, rois, training=None):
        """Raw outputs: {"fc_cls", "conv_reg"} and, with `ext`, {"fc_reg", "conv_cls"}."""
        fc_x = self.fc2(self.fc1(flatten(self.pooler(features, rois))))
        conv_x = self.pooler(features, scale_rois(rois, self.conv_roi_scale), level_rois=rois)
        for block in self.blocks:
            conv_x = block(conv_x, training=training)
        conv_x = tf.reduce_mean(conv_x, axis=[1, 2])
        out = {"fc_cls": self.fc_cls(fc_x), "conv_reg": self.conv_reg(conv_x)}
        if self.ext:
            out["fc_reg"], out["conv_cls"] = self.fc_reg(fc_x), self.conv_cls(conv_x)
        return out

    def call(self, features, rois, training=None):
        out = self.outputs(features, rois, training=training)
        probs = tf.nn.softmax(out["fc_cls"])
        if self.ext:
            probs = fuse_scores(probs, tf.nn.softmax(out["conv_cls"]))
        return probs, out["conv_reg"]

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "level_strides": self.level_strides,
                "conv_roi_scale": self.conv_roi_scale, "ext": self.ext, "class_specific": self.class_specific,
                "backend": self.backend, **self.settings}
