"""Slim-compatible ResNet-v1-50/101 as modified by Light-Head R-CNN (docs/original.md#resnet-v1-backbone).

The network is TF1 slim's `resnet_v1` with the original's changes: the stride of block2 and
block3 sits in their FIRST unit (on the 3x3 `conv2` and the 1x1 `shortcut`), block1 has no
stride, and block4 keeps stride 1 with dilation 2 on every `conv2` (so C4 and C5 are both
stride 16). Convolutions have no biases; every one is followed by BatchNorm (epsilon 1e-5, scale
and center); by default all BatchNorms are frozen (moving statistics, also in training) and the
stem (conv1 + block1) is not trainable, as in the original.

Input `images [B, H, W, 3] float32` (RGB minus the ImageNet mean, no std). Output: a dict

| key | layer | channels | stride | spatial size |
|---|---|---|---|---|
| C2 | block1 | 256 | 4 | ceil(H/4) |
| C3 | block2 | 512 | 8 | ceil(H/8) |
| C4 | block3 | 1024 | 16 | ceil(H/16) |
| C5 | block4 | 2048 | 16 (32 with `dilate_block4=False`) | ceil(H/16) (ceil(H/32)) |

Layer names (NHWC features, HWIO kernels `[kh, kw, in, out]`: slim weights copy unchanged).
Every convolution with its BatchNorm (and the ReLU after conv1 and each unit's conv1/conv2) is
one `layers.ConvBN`: a slim variable `resnet_v1_<N>/<scope>/weights` is the Keras variable
`<layer>/kernel` and `resnet_v1_<N>/<scope>/BatchNorm/<v>` (v = beta, gamma, moving_mean,
moving_variance) is `<layer>/<v>`, where

| slim scope | Keras layer (`ConvBN`) |
|---|---|
| `conv1` | `conv1` (7x7/2, slim `conv2d_same`, ReLU) |
| `block{b}/unit_{u}/bottleneck_v1/conv{1,2,3}` | `block{b}_unit{u}_conv{1,2,3}` (ReLU after 1, 2) |
| `block{b}/unit_{u}/bottleneck_v1/shortcut` | `block{b}_unit{u}_shortcut` |

Weight-free layers: `pool1`, `block{b}_unit{u}_add`, `block{b}_unit{u}_relu` (the unit output).
Unit numbers start at 1 as in slim.
"""
from lhrcnn.backbones import layers
from lhrcnn.keras import keras

UNITS_PER_BLOCK = {
    "resnet_v1_50": (3, 4, 6, 3),
    "resnet_v1_101": (3, 4, 23, 3),
}
# (depth, bottleneck depth) of block1..block4.
BLOCK_DEPTHS = ((256, 64), (512, 128), (1024, 256), (2048, 512))
FEATURE_NAMES = ("C2", "C3", "C4", "C5")


def bottleneck_v1(x, depth, depth_bottleneck, stride, rate, *, name, trainable, bn_frozen,
                  bn_epsilon, bn_momentum):
    """slim `bottleneck_v1`: `[B, H, W, Cin]` → `[B, ceil(H/stride), ceil(W/stride), depth]`.

    shortcut (1x1/stride conv + BN when depth != Cin, else identity or 1x1/stride subsampling),
    conv1 1x1 + BN + ReLU, conv2 3x3/stride/rate (conv2d_same) + BN + ReLU, conv3 1x1 + BN,
    add, ReLU. Layers are named `{name}_shortcut`, `{name}_conv1`, ... (module docstring).
    """
    def conv_bn(filters, kernel_size, suffix, **kwargs):
        return layers.ConvBN(filters, kernel_size, conv_trainable=trainable, bn_frozen=bn_frozen,
                             bn_epsilon=bn_epsilon, bn_momentum=bn_momentum,
                             name=f"{name}_{suffix}", **kwargs)

    shortcut = layers.shortcut(x, depth, stride, lambda t: conv_bn(depth, 1, "shortcut", strides=stride)(t), name)

    residual = conv_bn(depth_bottleneck, 1, "conv1", relu=True)(x)
    residual = conv_bn(depth_bottleneck, 3, "conv2", strides=stride, dilation_rate=rate,
                       padding="slim_same", relu=True)(residual)
    residual = conv_bn(depth, 1, "conv3")(residual)

    output = keras.layers.Add(name=f"{name}_add")([shortcut, residual])
    return keras.layers.ReLU(name=f"{name}_relu")(output)


def resnet_v1(name, *, dilate_block4=True, freeze_bn=True, freeze_stem=True,
              bn_epsilon=layers.DEFAULT_BN_EPSILON, bn_momentum=layers.DEFAULT_BN_MOMENTUM, width_divisor=1):
    """Build `resnet_v1_50` or `resnet_v1_101` as a functional Keras model named `name`.

    Args:
      name: "resnet_v1_50" or "resnet_v1_101".
      dilate_block4: True (the original): block4 stride 1, dilation 2, C5 stride 16.
        False: block4's first unit has stride 2 and no dilation, C5 stride 32.
      freeze_bn: every BatchNorm is frozen (moving statistics always, folded into the
        convolution; gamma/beta/statistics not trainable), as the original's
        `is_training=False` BN.
      freeze_stem: conv1 and block1 convolution kernels are not trainable (their BatchNorms are
        frozen too, whatever `freeze_bn` says, so frozen features stay fixed).
      bn_epsilon: BatchNorm epsilon (slim 1e-5).
      bn_momentum: moving-average momentum of trainable BatchNorms (slim decay 0.997).
      width_divisor: every convolution's width divided by this (1: the real network; the
        synthetic experiments' small variants use 4, 16x fewer multiply-adds, same topology).

    Returns:
      keras.Model `images [B, H, W, 3] float32` → {"C2", "C3", "C4", "C5": `[B, h, w, C]`},
      with `feature_strides` and `feature_channels` dicts as attributes.
    """
    if name not in UNITS_PER_BLOCK:
        raise ValueError(f"unknown ResNet-v1 variant {name!r}; known: {sorted(UNITS_PER_BLOCK)}")
    bn_kwargs = dict(bn_epsilon=bn_epsilon, bn_momentum=bn_momentum)
    div = layers.check_width_divisor(width_divisor)
    stem_trainable = not freeze_stem
    stem_bn_frozen = freeze_bn or freeze_stem

    images = keras.Input(shape=(None, None, 3), dtype="float32", name="images")
    x = layers.ConvBN(64 // div, 7, strides=2, padding="slim_same", relu=True,
                      conv_trainable=stem_trainable, bn_frozen=stem_bn_frozen,
                      bn_epsilon=bn_epsilon, bn_momentum=bn_momentum, name="conv1")(images)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)

    block4_stride, block4_rate = (1, 2) if dilate_block4 else (2, 1)
    # (first-unit stride, rate) of block1..block4
    block_strides = ((1, 1), (2, 1), (2, 1), (block4_stride, block4_rate))
    features, strides, channels = {}, {}, {}
    current_stride = 4
    for block_index, (num_units, (depth, depth_bottleneck), (stride, rate), feature) in enumerate(
            zip(UNITS_PER_BLOCK[name], BLOCK_DEPTHS, block_strides, FEATURE_NAMES), start=1):
        is_stem = block_index == 1
        for unit in range(1, num_units + 1):
            x = bottleneck_v1(
                x, depth // div, depth_bottleneck // div, stride if unit == 1 else 1, rate,
                name=f"block{block_index}_unit{unit}",
                trainable=stem_trainable if is_stem else True,
                bn_frozen=stem_bn_frozen if is_stem else freeze_bn, **bn_kwargs)
        current_stride *= stride
        features[feature] = x
        strides[feature] = current_stride
        channels[feature] = depth // div

    model = keras.Model(inputs=images, outputs=features, name=name)
    return layers.attach_feature_info(model, strides, channels)


def resnet_v1_50(**options):
    """ResNet-v1-50 (units 3, 4, 6, 3). Options as `resnet_v1`."""
    return resnet_v1("resnet_v1_50", **options)


def resnet_v1_101(**options):
    """ResNet-v1-101 (units 3, 4, 23, 3). Options as `resnet_v1`."""
    return resnet_v1("resnet_v1_101", **options)
