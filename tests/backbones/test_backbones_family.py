"""The family's backbones (SNet49/146/535, DetNet-59), every backbone's ImageNet-classification
form, and the multiply-add counter (lhrcnn/flops.py) against hand counts and the papers."""
import numpy as np
import pytest
import tensorflow as tf

from lhrcnn import flops
from lhrcnn.backbones import BACKBONE_NAMES, build_backbone
from lhrcnn.backbones.snet import _Shuffle
from lhrcnn.keras import keras

SNET_CHANNELS = {"snet49": (24, 60, 120, 512), "snet146": (24, 132, 264, 528), "snet535": (48, 248, 496, 992)}


@pytest.mark.parametrize("name", sorted(SNET_CHANNELS))
def test_snet_feature_shapes_and_strides(name):
    model = build_backbone(name)
    out = model(tf.zeros([1, 320, 320, 3]))
    c2, c3, c4, c5 = SNET_CHANNELS[name]
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "C2": (1, 80, 80, c2), "C3": (1, 40, 40, c3), "C4": (1, 20, 20, c4), "C5": (1, 10, 10, c5)}
    assert model.feature_strides == {"C2": 4, "C3": 8, "C4": 16, "C5": 32}
    assert model.feature_channels == {"C2": c2, "C3": c3, "C4": c4, "C5": c5}
    depthwise = [layer for layer in model.layers if isinstance(layer, keras.layers.DepthwiseConv2D)]
    assert depthwise and all(layer.kernel_size == (5, 5) for layer in depthwise)
    # 4 + 8 + 4 units; stride-2 units have two depthwise convolutions
    assert len(depthwise) == 16 + 3
    assert any(layer.name == "conv5" for layer in model.layers) == (name == "snet49")


def test_channel_shuffle_splits_even_and_odd_channels():
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 10)).astype(np.float32)
    even, odd = _Shuffle()(tf.constant(x))
    np.testing.assert_array_equal(even.numpy(), x[..., 0::2])
    np.testing.assert_array_equal(odd.numpy(), x[..., 1::2])


def test_detnet59_keeps_stride_16_after_stage_4():
    model = build_backbone("detnet59")
    out = model(tf.zeros([1, 256, 320, 3]))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "C2": (1, 64, 80, 256), "C3": (1, 32, 40, 512), "C4": (1, 16, 20, 1024), "C5": (1, 16, 20, 1024),
        "C6": (1, 16, 20, 1024)}
    assert model.feature_strides == {"C2": 4, "C3": 8, "C4": 16, "C5": 16, "C6": 16}
    names = {layer.name for layer in model.layers}
    for stage in (5, 6):  # type B (projection) first, type A after
        assert f"stage{stage}_unit1_shortcut" in names
        assert f"stage{stage}_unit2_shortcut" not in names and f"stage{stage}_unit3_shortcut" not in names
        assert model.get_layer(f"stage{stage}_unit2_conv2").dilation_rate == (2, 2)
    # stages 1-4 are ResNet-50's: the same layer names (an ImageNet ResNet-50 initialises them)
    resnet = {layer.name for layer in build_backbone("resnet_v1_50").layers if layer.name.startswith("block")}
    assert {n for n in resnet if not n.startswith("block4")} <= names
    narrow = build_backbone("detnet59", stage56_channels=256)
    assert narrow.feature_channels["C6"] == 256


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_classification_form(name):
    model = build_backbone(name, for_classification=True)
    logits = model(tf.zeros([2, 224, 224, 3]))
    assert tuple(logits.shape) == (2, 1000)


def test_count_macs_by_hand():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(inputs)             # 8*8*8 * 3*3*3
    x = keras.layers.DepthwiseConv2D(5, padding="same")(x)                          # 8*8*8 * 5*5
    x = keras.layers.Conv2D(4, 3, padding="same", dilation_rate=2)(x)              # 8*8*4 * 3*3*8
    x = keras.layers.Dense(6)(keras.layers.GlobalAveragePooling2D()(x))             # 4*6
    model = keras.Model(inputs, x)
    total, by_op, unknown = flops.count_macs(model, tf.TensorSpec([2, 16, 16, 3]))
    per_image = 8 * 8 * 8 * 27 + 8 * 8 * 8 * 25 + 8 * 8 * 4 * 72 + 4 * 6
    assert total == 2 * per_image and not unknown
    assert by_op["DepthwiseConv2dNative"] == 2 * 8 * 8 * 8 * 25
    assert flops.count_parameters(model) == (model.count_params(), model.count_params())


def snet_macs_by_hand(name, size=224):
    """Multiply-adds of an SNet classifier from the stage table alone (docs/models.md#snet),
    unit by unit: the independent reference of the model's count."""
    stem, widths, conv5 = {"snet49": (24, (60, 120, 240), 512), "snet146": (24, (132, 264, 528), None),
                           "snet535": (48, (248, 496, 992), None)}[name]
    s = size // 2
    macs = s * s * 27 * stem             # conv1 3x3/2 on RGB
    s //= 2                              # max-pool
    c = stem
    for w, units in zip(widths, (4, 8, 4)):
        t = s // 2
        macs += t * t * 25 * c + t * t * c * c                            # projection: dw 5x5/2, 1x1
        macs += s * s * c * (w // 2) + t * t * 25 * (w // 2) + t * t * (w // 2) * (w - c)  # main branch
        macs += (units - 1) * (2 * t * t * (w // 2) ** 2 + t * t * 25 * (w // 2))        # stride-1 units
        s, c = t, w
    if conv5:
        macs += s * s * c * conv5
        c = conv5
    return macs + c * 1000               # fc


@pytest.mark.parametrize("name", sorted(SNET_CHANNELS))
def test_snet_count_equals_the_stage_table(name):
    assert flops.backbone_complexity(name)["macs"] == snet_macs_by_hand(name)


# (backbone, paper multiply-adds at 224x224)
PAPER = [("snet49", 49e6), ("snet535", 535e6), ("detnet59", 4.8e9), ("resnet_v1_50", 3.8e9),
         ("resnet_v1_101", 7.6e9)]


@pytest.mark.parametrize("name,paper", PAPER)
def test_backbone_complexity_against_the_papers(name, paper):
    result = flops.backbone_complexity(name)
    assert not result["unknown"]
    assert abs(result["macs"] / paper - 1) <= 0.10, (name, result["macs"])


def test_snet146_table_against_its_name():
    """SNet146: the paper's stage table (132/264/528, 5x5 depthwise, no conv5) counts 162.5 M,
    11% over the 146 M of its name (ShuffleNetV2 1.0x's figure, 14% narrower stages)."""
    assert abs(snet_macs_by_hand("snet146") / 146e6 - 1.113) < 0.005
