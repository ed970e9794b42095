"""Tests of lhrcnn.backbones.xception (Xception*, docs/original.md#xception-backbone) against a NumPy
reference."""
import numpy as np
import pytest
import tensorflow as tf

import backbone_reference as ref
from lhrcnn.backbones import backbone_options, build_backbone, layers

# (depth, bottleneck, first-unit stride, units) of block1..3, from docs/original.md#xception-backbone.
BLOCKS = [(144, 24, 2, 4), (288, 144, 2, 8), (576, 288, 1, 4)]


@pytest.fixture(scope="module")
def xception():
    model = build_backbone("xception_star")
    ref.randomize_batch_norms(model, seed=3)
    return model


def expected_variables():
    """Keras weight name → shape, from the reference's architecture description."""
    variables = {"conv1/kernel:0": (3, 3, 3, 24)}
    bn_channels = {"conv1": 24}  # ConvBN layer → channels of its BatchNorm
    depth_in = 24
    for b, (depth, bottleneck, _, n) in enumerate(BLOCKS, start=1):
        for u in range(1, n + 1):
            name = f"block{b}_unit{u}"
            if depth_in != depth:
                variables[f"{name}_shortcut/kernel:0"] = (1, 1, depth_in, depth)
                bn_channels[f"{name}_shortcut"] = depth
            variables[f"{name}_conv1/kernel:0"] = (1, 1, depth_in, bottleneck)
            bn_channels[f"{name}_conv1"] = bottleneck
            variables[f"{name}_dws_conv2/depthwise_kernel:0"] = (3, 3, bottleneck, 1)
            variables[f"{name}_dws_conv2/pointwise_kernel:0"] = (1, 1, bottleneck, bottleneck)
            variables[f"{name}_dws_conv2/bias:0"] = (bottleneck,)
            variables[f"{name}_conv3/kernel:0"] = (1, 1, bottleneck, depth)
            bn_channels[f"{name}_conv3"] = depth
            depth_in = depth
    for layer, c in bn_channels.items():
        for v in ("gamma", "beta", "moving_mean", "moving_variance"):
            variables[f"{layer}/{v}:0"] = (c,)
    return variables


def test_options():
    assert backbone_options("xception_star") == {
        "freeze_bn": False, "freeze_stem": False, "bn_epsilon": 1e-5, "bn_momentum": 0.997, "block3_stride": 1}
    with pytest.raises(ValueError, match="'dilate_block4'"):
        build_backbone("xception_star", dilate_block4=True)


@pytest.mark.parametrize("size", [(224, 224), (200, 333), (97, 130), (33, 47)])
def test_output_shapes_and_strides(xception, size):
    h, w = size
    out = xception(tf.zeros([2, h, w, 3]))
    assert xception.feature_strides == {"C2": 4, "C3": 8, "C4": 16, "C5": 16}
    assert xception.feature_channels == {"C2": 24, "C3": 144, "C4": 288, "C5": 576}
    for key, stride in xception.feature_strides.items():
        channels = xception.feature_channels[key]
        assert out[key].shape == (2, ref.ceil_div(h, stride), ref.ceil_div(w, stride), channels)
    if size == (224, 224):  # paper Table 7: 112 (conv1), 56 (pool), 28 (stage2), 14 (stage3)
        assert out["C2"].shape[1:3] == (56, 56) and out["C4"].shape[1:3] == (14, 14)


def test_variables_and_parameter_count(xception):
    expected = expected_variables()
    assert {v.name: tuple(v.shape) for v in xception.weights} == expected
    assert len(expected) == 228
    total = sum(int(np.prod(s)) for s in expected.values())
    moving = sum(int(np.prod(s)) for n, s in expected.items() if "moving" in n)
    assert xception.count_params() == total == 2_681_640
    assert total - moving == 2_664_408


def test_separable_units(xception):
    for b, (depth, bottleneck, stride, n) in enumerate(BLOCKS, start=1):
        for u in range(1, n + 1):
            layer = xception.get_layer(f"block{b}_unit{u}_dws_conv2")
            assert tuple(layer.depthwise_kernel.shape) == (3, 3, bottleneck, 1)
            assert tuple(layer.pointwise_kernel.shape) == (1, 1, bottleneck, bottleneck)
            assert tuple(layer.bias.shape) == (bottleneck,)
            assert layer.padding == "same" and layer.depth_multiplier == 1
            assert layer.strides == ((stride, stride) if u == 1 else (1, 1))
            assert layer.activation.__name__ == "relu"
            assert layer.trainable


def test_default_trains_everything_but_the_moving_statistics(xception):
    assert len(xception.trainable_weights) == 228 - 2 * 36  # 36 BatchNorms
    conv_bns = [layer for layer in xception.layers if isinstance(layer, layers.ConvBN)]
    assert len(conv_bns) == 36 and not any(layer.bn_frozen for layer in conv_bns)
    names = [layer.name for layer in xception.layers]
    assert not [n for n in names if n.endswith(("_bn", "_pad", "conv1_relu"))]
    conv1 = xception.get_layer("conv1")  # 3x3/2 conv2d_same: pad_total 2 → 1 before, 1 after
    assert conv1.relu and conv1.explicit_padding == ((1, 1), (1, 1)) and conv1.strides == (2, 2)
    for b, (depth, bottleneck, stride, n) in enumerate(BLOCKS, start=1):
        for u in range(1, n + 1):
            assert xception.get_layer(f"block{b}_unit{u}_conv1").relu
            assert not xception.get_layer(f"block{b}_unit{u}_conv3").relu
    assert xception.get_layer("block1_unit1_shortcut").strides == (2, 2)
    assert not xception.get_layer("block1_unit1_shortcut").relu


def test_frozen_variant_keeps_separable_convs_trainable():
    model = build_backbone("xception_star", freeze_bn=True, freeze_stem=True)
    trainable = {v.name for v in model.trainable_weights}
    expected = {n for n in expected_variables() if "dws_conv2" in n
                or (n.endswith("/kernel:0") and n.startswith(("block2_", "block3_")))}
    assert trainable == expected and len(expected) == 74
    images = tf.random.stateless_normal([2, 35, 50, 3], seed=[7, 8])
    train, infer = model(images, training=True), model(images, training=False)
    for key in infer:
        np.testing.assert_array_equal(train[key].numpy(), infer[key].numpy())


@pytest.mark.parametrize("size", [(64, 96), (37, 45), (50, 33)])
def test_matches_numpy_reference(xception, size):
    """Even sizes exercise TF SAME's bottom/right-only padding of the strided separable convs."""
    images = np.random.default_rng(11).normal(0, 50, (1, *size, 3)).astype(np.float32)
    out = xception(images)
    expected = ref.xception_star(images.astype(np.float64), ref.Weights(xception))
    for key in ("C2", "C3", "C4", "C5"):
        ref.assert_close(out[key], expected[key])
