"""SNet49 / SNet146 / SNet535, ThunderNet's backbones (docs/models.md#snet):
ShuffleNetV2 with every depthwise convolution 5x5.

| stage | stride | SNet49 | SNet146 | SNet535 |
|---|---|---|---|---|
| conv1 (3x3 s2, BN, ReLU) + 3x3 max-pool s2 | 4 | 24 | 24 | 48 |
| stage2: 1 unit s2 + 3 units | 8 | 60 | 132 | 248 |
| stage3: 1 unit s2 + 7 units | 16 | 120 | 264 | 496 |
| stage4: 1 unit s2 + 3 units | 32 | 240 | 528 | 992 |
| conv5 (1x1, BN, ReLU) | 32 | 512 | - | - |
| global average pool + fc 1000 (classification only) | | | | |

Units as megvii's ShuffleNet-Series `ShuffleV2Block` (the first author's code):
- stride 1 (C in = C out = C): the channels are split by a channel shuffle into the even ones
  (kept) and the odd ones, which go through 1x1 conv (C/2) BN ReLU → 5x5 depthwise BN → 1x1
  conv (C/2) BN ReLU; output = concat(even, branch).
- stride 2 (C_in → C_out): projection branch 5x5 depthwise s2 BN → 1x1 conv (C_in) BN ReLU;
  main branch 1x1 conv (C_out/2) BN ReLU → 5x5 depthwise s2 BN → 1x1 conv (C_out − C_in) BN
  ReLU; output = concat(projection, main).
Convolutions have no bias; BN epsilon 1e-5.

Features: C2 (after the max-pool, stride 4), C3, C4 (stage3, stride 16), C5 (stage4 or, for
SNet49, conv5; stride 32): ThunderNet's CEM takes C4, C5 and the global pool of C5.
"""
import tensorflow as tf

from lhrcnn.backbones import layers
from lhrcnn.depthwise import DepthwiseConv2D
from lhrcnn.keras import keras

WIDTHS = {"snet49": (24, (60, 120, 240), 512), "snet146": (24, (132, 264, 528), None),
          "snet535": (48, (248, 496, 992), None)}
REPEATS = (4, 8, 4)  # units per stage, the first with stride 2
KERNEL = 5


class _Shuffle(keras.layers.Layer):
    """[B, H, W, C] -> (even channels, odd channels), each [B, H, W, C/2]."""

    def call(self, x):
        # Pair the channels, move the pair index in front and split the halves: a transpose and a
        # split forward, a concat and a transpose backward. (Slicing pairs[..., 0] and
        # pairs[..., 1] computes the same, but its gradient, two StridedSliceGrads per unit, cost
        # a fifth of SNet146's training step on CPU.)
        shape = tf.shape(x)
        channels = x.shape[-1]
        pairs = tf.reshape(x, [shape[0], shape[1], shape[2], channels // 2, 2])
        halves = tf.reshape(tf.transpose(pairs, [0, 1, 2, 4, 3]), [shape[0], shape[1], shape[2], channels])
        even, odd = tf.split(halves, 2, axis=-1)
        return even, odd


def _bn(name, freeze_bn, momentum):
    return keras.layers.BatchNormalization(epsilon=1e-5, momentum=momentum, name=f"{name}_bn",
                                           trainable=not freeze_bn)


def _conv_bn_relu(x, filters, name, freeze_bn, momentum, relu=True):
    x = keras.layers.Conv2D(filters, 1, use_bias=False, kernel_initializer="he_normal", name=name)(x)
    x = _bn(name, freeze_bn, momentum)(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _depthwise_bn(x, stride, name, freeze_bn, momentum):
    x = DepthwiseConv2D(KERNEL, strides=stride, padding="same", use_bias=False,
                        depthwise_initializer="he_normal", name=name)(x)
    return _bn(name, freeze_bn, momentum)(x)


def shuffle_unit(x, out_channels, stride, name, freeze_bn=False, momentum=0.9):
    """One ShuffleNetV2 unit with a 5x5 depthwise convolution (see the module docstring)."""
    in_channels = x.shape[-1]
    if stride == 1:
        if in_channels != out_channels or in_channels % 2:
            raise ValueError(f"{name}: a stride-1 unit needs an even C_in == C_out, got {in_channels} -> {out_channels}")
        kept, x = _Shuffle(name=f"{name}_shuffle")(x)
        mid = branch_out = out_channels // 2
    else:
        kept = _depthwise_bn(x, 2, f"{name}_proj_dw", freeze_bn, momentum)
        kept = _conv_bn_relu(kept, in_channels, f"{name}_proj_pw", freeze_bn, momentum)
        mid, branch_out = out_channels // 2, out_channels - in_channels
    y = _conv_bn_relu(x, mid, f"{name}_pw1", freeze_bn, momentum)
    y = _depthwise_bn(y, stride, f"{name}_dw", freeze_bn, momentum)
    y = _conv_bn_relu(y, branch_out, f"{name}_pw2", freeze_bn, momentum)
    return keras.layers.Concatenate(name=f"{name}_concat")([kept, y])


def snet(name, *, freeze_bn=False, bn_momentum=0.9, for_classification=False, num_classes=1000):
    """Build `snet49`, `snet146` or `snet535` as a functional Keras model named `name`.

    Args:
      freeze_bn: BatchNorms in inference mode with frozen statistics (an ImageNet-trained SNet).
      bn_momentum: moving-average momentum of trained BatchNorms.
      for_classification: the ImageNet form: images → logits [B, num_classes] (global average
        pool + fc), the form of the papers' FLOPs.
    Returns:
      keras.Model `images [B, H, W, 3] float32` → {"C2", "C3", "C4", "C5"} (or logits), with
      `feature_strides` and `feature_channels`.
    """
    if name not in WIDTHS:
        raise ValueError(f"unknown SNet {name!r}; known: {', '.join(sorted(WIDTHS))}")
    stem, stages, conv5 = WIDTHS[name]
    images = keras.Input(shape=(None, None, 3), dtype="float32", name="images")
    x = keras.layers.Conv2D(stem, 3, strides=2, padding="same", use_bias=False, kernel_initializer="he_normal",
                            name="conv1")(images)
    x = keras.layers.ReLU(name="conv1_relu")(_bn("conv1", freeze_bn, bn_momentum)(x))
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    features, strides, channels = {"C2": x}, {"C2": 4}, {"C2": stem}
    stride = 4
    for index, (width, repeats) in enumerate(zip(stages, REPEATS), start=2):
        for unit in range(repeats):
            x = shuffle_unit(x, width, 2 if unit == 0 else 1, f"stage{index}_unit{unit + 1}", freeze_bn, bn_momentum)
        stride *= 2
        feature = f"C{index + 1}"
        features[feature], strides[feature], channels[feature] = x, stride, width
    if conv5:
        x = _conv_bn_relu(x, conv5, "conv5", freeze_bn, bn_momentum)
        features["C5"], channels["C5"] = x, conv5
    if for_classification:
        pooled = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
        logits = keras.layers.Dense(num_classes, name="classifier")(pooled)
        return keras.Model(inputs=images, outputs=logits, name=name)
    model = keras.Model(inputs=images, outputs=features, name=name)
    return layers.attach_feature_info(model, strides, channels)
