"""DetNet-59 (docs/models.md#detnet-59): ResNet-50's stages 1-4, then stages 5 and 6
that keep stride 16, each 3 dilated bottlenecks [1x1 256 → 3x3 256, dilation 2 → 1x1 C_out];
the first of each stage is type B (a 1x1 conv + BN projection shortcut, even though the size
does not change), the others type A (identity shortcut). C_out (`stage56_channels`) is a
parameter, default 1024 (every detector implementation that reports COCO numbers, and the
paper's 4.8 GFLOPs).

| feature | stage | stride | channels |
|---|---|---|---|
| C2 | 2 (ResNet block1, 3 units) | 4 | 256 |
| C3 | 3 (block2, 4 units) | 8 | 512 |
| C4 | 4 (block3, 6 units) | 16 | 1024 |
| C5 | 5 (3 dilated units) | 16 | C_out |
| C6 | 6 (3 dilated units) | 16 | C_out |

Stages 1-4 are exactly `resnet_v1_50`'s (slim layer names, `layers.ConvBN`, stride in the first
unit of blocks 2 and 3), so an ImageNet ResNet-50 initialises them; stages 5 and 6 are named
`stage{5,6}_unit{u}_{conv1,conv2,conv3,shortcut}`.
"""
from lhrcnn.backbones import layers
from lhrcnn.backbones.resnet_v1 import BLOCK_DEPTHS, bottleneck_v1
from lhrcnn.keras import keras

RESNET50_UNITS = (3, 4, 6)
DILATED_UNITS = 3
DILATED_BOTTLENECK = 256


def dilated_bottleneck(x, depth, projection, *, name, bn_frozen, bn_epsilon, bn_momentum,
                       bottleneck=DILATED_BOTTLENECK):
    """DetNet's dilated bottleneck: type B (`projection`: 1x1 conv + BN shortcut) or type A
    (identity shortcut; needs C_in == depth). Stride 1 throughout, 3x3 with dilation 2."""
    def conv_bn(filters, kernel_size, suffix, **kwargs):
        return layers.ConvBN(filters, kernel_size, bn_frozen=bn_frozen, bn_epsilon=bn_epsilon,
                             bn_momentum=bn_momentum, name=f"{name}_{suffix}", **kwargs)
    if projection:
        shortcut = conv_bn(depth, 1, "shortcut")(x)
    else:
        if x.shape[-1] != depth:
            raise ValueError(f"{name}: a type-A unit needs C_in == C_out, got {x.shape[-1]} -> {depth}")
        shortcut = x
    y = conv_bn(bottleneck, 1, "conv1", relu=True)(x)
    y = conv_bn(bottleneck, 3, "conv2", dilation_rate=2, padding="same", relu=True)(y)
    y = conv_bn(depth, 1, "conv3")(y)
    out = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_relu")(out)


def detnet59(*, stage56_channels=1024, freeze_bn=True, freeze_stem=True, bn_epsilon=layers.DEFAULT_BN_EPSILON,
             bn_momentum=layers.DEFAULT_BN_MOMENTUM, width_divisor=1):
    """Build DetNet-59 as a functional Keras model named "detnet59".

    Args:
      stage56_channels: output channels of stages 5 and 6 (default 1024).
      freeze_bn: every BatchNorm frozen (the paper: all BN frozen when fine-tuning a detector).
      freeze_stem: conv1 and stage 2 (block1) not trainable (the paper freezes stage 1).
      width_divisor: every convolution's width (stage56_channels included) divided by this
        (1: the real network; the synthetic experiment's small variant uses 4).
    Returns:
      keras.Model `images [B, H, W, 3]` → {"C2", "C3", "C4", "C5", "C6"}, with
      `feature_strides` and `feature_channels`.
    """
    if stage56_channels < 1:
        raise ValueError(f"stage56_channels must be positive, got {stage56_channels}")
    bn = dict(bn_epsilon=bn_epsilon, bn_momentum=bn_momentum)
    div = layers.check_width_divisor(width_divisor)
    stem_bn_frozen = freeze_bn or freeze_stem
    images = keras.Input(shape=(None, None, 3), dtype="float32", name="images")
    x = layers.ConvBN(64 // div, 7, strides=2, padding="slim_same", relu=True, conv_trainable=not freeze_stem,
                      bn_frozen=stem_bn_frozen, name="conv1", **bn)(images)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    features, strides, channels = {}, {}, {}
    stride = 4
    for block, (units, (depth, bottleneck), first_stride) in enumerate(
            zip(RESNET50_UNITS, BLOCK_DEPTHS, (1, 2, 2)), start=1):
        is_stem = block == 1
        for unit in range(1, units + 1):
            x = bottleneck_v1(x, depth // div, bottleneck // div, first_stride if unit == 1 else 1, 1,
                              name=f"block{block}_unit{unit}", trainable=not (is_stem and freeze_stem),
                              bn_frozen=stem_bn_frozen if is_stem else freeze_bn, **bn)
        stride *= first_stride
        feature = f"C{block + 1}"
        features[feature], strides[feature], channels[feature] = x, stride, depth // div
    for stage in (5, 6):
        for unit in range(1, DILATED_UNITS + 1):
            x = dilated_bottleneck(x, stage56_channels // div, projection=unit == 1, name=f"stage{stage}_unit{unit}",
                                   bn_frozen=freeze_bn, bottleneck=DILATED_BOTTLENECK // div, **bn)
        feature = f"C{stage}"
        features[feature], strides[feature], channels[feature] = x, 16, stage56_channels // div
    model = keras.Model(inputs=images, outputs=features, name="detnet59")
    return layers.attach_feature_info(model, strides, channels)
