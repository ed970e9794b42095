"""Xception* (Light-Head R-CNN paper Table 7) as implemented by geonseoks
(docs/original.md#xception-backbone).

A ResNet-v1-style network whose bottleneck 3x3 convolution is a separable one:
root conv1 3x3/2 (24 ch, conv2d_same) + BN + ReLU, pool1 3x3/2 (TF SAME), then units

    conv1 1x1 → bottleneck (BN + ReLU)
    dws_conv2 = slim separable_conv2d 3x3 (depth multiplier 1, the unit stride, TF SAME padding,
                bias, ReLU, no BN; trainable even when the stem is frozen, as in the original)
    conv3 1x1 → depth (BN, no ReLU)
    + shortcut (1x1/stride conv + BN when the depth changes, identity otherwise), ReLU

| block | units (depth, bottleneck, stride) | output | feature |
|---|---|---|---|
| root | conv1 + pool1 | 24 ch, stride 4 | C2 |
| block1 | (144, 24, 2) + 3 × (144, 24, 1) | 144 ch, stride 8 | C3 |
| block2 | (288, 144, 2) + 7 × (288, 144, 1) | 288 ch, stride 16 | C4 (the RPN's input) |
| block3 | (576, 288, 1) + 3 × (576, 288, 1) | 576 ch, stride 16 | C5 (large separable conv) |

The original keeps block3 at stride 16 (its stride "must be modified" comment) and uses no
dilation. Spatial sizes: C2 ceil(H/4), C3 ceil(H/8), C4 = C5 ceil(H/16) (TF SAME on the strided
separable convolutions pads bottom/right for even sizes, which gives the same sizes as
conv2d_same, but not the same sampling positions).

Layer names follow `resnet_v1` (slim scope `resnet_v1_xception/<scope>` ↔ Keras layer): each
convolution with its BatchNorm (and ReLU where one follows) is one `layers.ConvBN`, `conv1`
(3x3/2 conv2d_same, ReLU), `block{b}_unit{u}_conv1` (ReLU), `block{b}_unit{u}_conv3` and
`block{b}_unit{u}_shortcut`, whose `<layer>/kernel` is slim's `<scope>/weights` and `<layer>/<v>`
slim's `<scope>/BatchNorm/<v>` (v = beta, gamma, moving_mean, moving_variance);
`block{b}_unit{u}_dws_conv2` is a `SeparableConv2D` whose `depthwise_kernel [3, 3, Cin, 1]`,
`pointwise_kernel [1, 1, Cin, Cb]` and `bias [Cb]` are slim's `dws_conv2/depthwise_weights`,
`pointwise_weights` and `biases`. Weight-free: `pool1`, `block{b}_unit{u}_add`,
`block{b}_unit{u}_relu`.

Parameter count: 2,681,640 values in 228 variables (BN moving statistics included);
2,664,408 without the 17,232 BN moving statistics (all trainable by default).
"""
from lhrcnn.backbones import layers
from lhrcnn.keras import keras

# (depth, bottleneck depth, first-unit stride, number of units) of block1..block3.
BLOCKS = ((144, 24, 2, 4), (288, 144, 2, 8), (576, 288, 1, 4))
STEM_CHANNELS = 24
FEATURE_NAMES = ("C3", "C4", "C5")


def separable_bottleneck(x, depth, depth_bottleneck, stride, *, name, trainable, bn_frozen,
                         bn_epsilon, bn_momentum):
    """geonseoks' `bottleneck`: `[B, H, W, Cin]` → `[B, ceil(H/stride), ceil(W/stride), depth]`.

    `trainable` applies to conv1, conv3 and the shortcut; `dws_conv2` is always trainable.
    """
    def conv_bn(filters, suffix, **kwargs):
        return layers.ConvBN(filters, 1, conv_trainable=trainable, bn_frozen=bn_frozen,
                             bn_epsilon=bn_epsilon, bn_momentum=bn_momentum,
                             name=f"{name}_{suffix}", **kwargs)

    shortcut = layers.shortcut(x, depth, stride, lambda t: conv_bn(depth, "shortcut", strides=stride)(t), name)

    residual = conv_bn(depth_bottleneck, "conv1", relu=True)(x)
    # slim separable_conv2d defaults: padding SAME, bias (zeros), ReLU, Xavier init, no BN.
    residual = keras.layers.SeparableConv2D(
        depth_bottleneck, 3, strides=stride, padding="same", depth_multiplier=1,
        activation="relu", use_bias=True, depthwise_initializer="glorot_uniform",
        pointwise_initializer="glorot_uniform", bias_initializer="zeros",
        name=f"{name}_dws_conv2")(residual)
    residual = conv_bn(depth, "conv3")(residual)

    output = keras.layers.Add(name=f"{name}_add")([shortcut, residual])
    return keras.layers.ReLU(name=f"{name}_relu")(output)


def xception_star(*, freeze_bn=False, freeze_stem=False, bn_epsilon=layers.DEFAULT_BN_EPSILON,
                  bn_momentum=layers.DEFAULT_BN_MOMENTUM, block3_stride=1):
    """Build Xception* as a functional Keras model named "xception_star".

    Args:
      freeze_bn: every BatchNorm is frozen (moving statistics always, folded into the
        convolution, not trainable: the original's BN; off by default because the default
        experiment trains from scratch).
      freeze_stem: conv1 and block1's conv1/conv3/shortcut kernels are not trainable and their
        BatchNorms frozen; block1's `dws_conv2` stays trainable, as in the original.
      bn_epsilon: BatchNorm epsilon (slim 1e-5).
      bn_momentum: moving-average momentum of trainable BatchNorms (slim decay 0.997).
      block3_stride: 1 for detection (C5 at stride 16, geonseoks' detector), 2 for the
        ImageNet-classification network (C5 at stride 32).

    Returns:
      keras.Model `images [B, H, W, 3] float32` → {"C2", "C3", "C4", "C5": `[B, h, w, C]`},
      with `feature_strides` and `feature_channels` dicts as attributes.
    """
    stem_trainable = not freeze_stem
    stem_bn_frozen = freeze_bn or freeze_stem

    images = keras.Input(shape=(None, None, 3), dtype="float32", name="images")
    x = layers.ConvBN(STEM_CHANNELS, 3, strides=2, padding="slim_same", relu=True,
                      conv_trainable=stem_trainable, bn_frozen=stem_bn_frozen,
                      bn_epsilon=bn_epsilon, bn_momentum=bn_momentum, name="conv1")(images)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    features, strides, channels = {"C2": x}, {"C2": 4}, {"C2": STEM_CHANNELS}

    current_stride = 4
    for block_index, ((depth, depth_bottleneck, stride, num_units), feature) in enumerate(
            zip(BLOCKS, FEATURE_NAMES), start=1):
        is_stem = block_index == 1
        if block_index == 3:
            stride = block3_stride
        for unit in range(1, num_units + 1):
            x = separable_bottleneck(
                x, depth, depth_bottleneck, stride if unit == 1 else 1,
                name=f"block{block_index}_unit{unit}",
                trainable=stem_trainable if is_stem else True,
                bn_frozen=stem_bn_frozen if is_stem else freeze_bn,
                bn_epsilon=bn_epsilon, bn_momentum=bn_momentum)
        current_stride *= stride
        features[feature] = x
        strides[feature] = current_stride
        channels[feature] = depth

    model = keras.Model(inputs=images, outputs=features, name="xception_star")
    return layers.attach_feature_info(model, strides, channels)
