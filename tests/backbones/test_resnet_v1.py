"""Tests of lhrcnn.backbones.resnet_v1 against docs/original.md (#resnet-v1-backbone,
#model-variables) and a NumPy reference."""
import numpy as np
import pytest
import tensorflow as tf

import backbone_reference as ref
from lhrcnn.backbones import BACKBONE_NAMES, backbone_options, build_backbone, layers
from lhrcnn.keras import keras

UNITS = {"resnet_v1_50": (3, 4, 6, 3), "resnet_v1_101": (3, 4, 23, 3)}


@pytest.fixture(scope="module")
def r101():
    """Default ResNet-v1-101 (frozen BN and stem) with random BN statistics."""
    model = build_backbone("resnet_v1_101")
    ref.randomize_batch_norms(model, seed=101)
    return model


@pytest.fixture(scope="module")
def r50():
    model = build_backbone("resnet_v1_50")
    ref.randomize_batch_norms(model, seed=50)
    return model


def slim_variables(scope, units):
    """Every slim variable name → shape of the backbone, from docs/original.md#model-variables."""
    convs = {"conv1": (7, 7, 3, 64)}
    rows = [(256, 64), (512, 128), (1024, 256), (2048, 512)]  # conv3 out, bottleneck
    depth_in = 64
    for b, ((depth, bottleneck), n) in enumerate(zip(rows, units), start=1):
        for u in range(1, n + 1):
            prefix = f"block{b}/unit_{u}/bottleneck_v1"
            if u == 1:
                convs[f"{prefix}/shortcut"] = (1, 1, depth_in, depth)
            convs[f"{prefix}/conv1"] = (1, 1, depth_in if u == 1 else depth, bottleneck)
            convs[f"{prefix}/conv2"] = (3, 3, bottleneck, bottleneck)
            convs[f"{prefix}/conv3"] = (1, 1, bottleneck, depth)
        depth_in = depth
    variables = {}
    for conv, shape in convs.items():
        variables[f"{scope}/{conv}/weights"] = shape
        for v in ("beta", "gamma", "moving_mean", "moving_variance"):
            variables[f"{scope}/{conv}/BatchNorm/{v}"] = (shape[3],)
    return variables


def keras_name(slim_name):
    """The documented naming scheme (module docstring of lhrcnn.backbones.resnet_v1)."""
    parts = slim_name.split("/")[1:]
    if parts[0] == "conv1":
        layer, rest = "conv1", parts[1:]
    else:
        block, unit, _, conv = parts[:4]
        layer, rest = f"{block}_unit{unit[len('unit_'):]}_{conv}", parts[4:]
    if rest == ["weights"]:
        return f"{layer}/kernel:0"
    assert rest[0] == "BatchNorm"
    return f"{layer}/{rest[1]}:0"


def num_params(variables):
    return sum(int(np.prod(shape)) for shape in variables)


# ---------------------------------------------------------------------------------- registry


def test_registry_names_and_errors():
    assert set(BACKBONE_NAMES) == {"resnet_v1_50", "resnet_v1_101", "xception_star", "snet49", "snet146", "snet535",
                                   "detnet59"}
    with pytest.raises(ValueError, match="resnet_v1_101.*xception_star|known backbones"):
        build_backbone("resnet_v1_152")
    with pytest.raises(ValueError, match="'weight_decay'"):
        build_backbone("resnet_v1_50", weight_decay=1e-4)
    assert backbone_options("resnet_v1_101") == {
        "dilate_block4": True, "freeze_bn": True, "freeze_stem": True, "bn_epsilon": 1e-5,
        "bn_momentum": 0.997, "width_divisor": 1}


# ------------------------------------------------------------------------- shapes, strides


def expected_size(n, stride16_block4=True):
    """Chain of the slim ops' output-size rules (not the ceil formula) for one axis."""
    n = (n + 6 - 7) // 2 + 1             # conv1: pad 3/3, 7x7 VALID, stride 2
    n = -(-n // 2)                        # pool1: TF SAME, stride 2
    c2 = n
    c3 = (c2 + 2 - 3) // 2 + 1            # block2 unit1 conv2: pad 1/1, 3x3 VALID, stride 2
    assert c3 == -(-c2 // 2)              # its 1x1 stride-2 shortcut (TF SAME) must agree
    c4 = (c3 + 2 - 3) // 2 + 1
    c5 = c4 if stride16_block4 else (c4 + 2 - 3) // 2 + 1
    return c2, c3, c4, c5


@pytest.mark.parametrize("size", [(200, 333), (64, 64), (97, 129), (33, 47), (17, 16)])
def test_r101_output_shapes_and_strides(r101, size):
    h, w = size
    out = r101(tf.zeros([2, h, w, 3]))
    assert set(out) == {"C2", "C3", "C4", "C5"}
    assert r101.feature_strides == {"C2": 4, "C3": 8, "C4": 16, "C5": 16}
    assert r101.feature_channels == {"C2": 256, "C3": 512, "C4": 1024, "C5": 2048}
    for i, key in enumerate(("C2", "C3", "C4", "C5")):
        stride = r101.feature_strides[key]
        eh, ew = expected_size(h)[i], expected_size(w)[i]
        assert (eh, ew) == (ref.ceil_div(h, stride), ref.ceil_div(w, stride))
        assert out[key].shape == (2, eh, ew, r101.feature_channels[key])
        assert out[key].dtype == tf.float32


def test_r50_undilated_block4_has_stride_32():
    model = build_backbone("resnet_v1_50", dilate_block4=False)
    assert model.feature_strides == {"C2": 4, "C3": 8, "C4": 16, "C5": 32}
    out = model(tf.zeros([1, 200, 333, 3]))
    assert out["C5"].shape == (1, 7, 11, 2048)
    conv2 = model.get_layer("block4_unit1_conv2")
    assert conv2.strides == (2, 2) and conv2.dilation_rate == (1, 1)
    assert conv2.padding == "slim_same" and conv2.explicit_padding == ((1, 1), (1, 1))
    assert model.get_layer("block4_unit2_conv2").dilation_rate == (1, 1)


def test_r101_stride_and_dilation_placement(r101):
    for b, n in enumerate(UNITS["resnet_v1_101"], start=1):
        for u in range(1, n + 1):
            conv1 = r101.get_layer(f"block{b}_unit{u}_conv1")
            conv2 = r101.get_layer(f"block{b}_unit{u}_conv2")
            conv3 = r101.get_layer(f"block{b}_unit{u}_conv3")
            assert conv1.strides == conv3.strides == (1, 1)
            assert conv1.kernel_size == conv3.kernel_size == (1, 1)
            assert conv1.padding == conv3.padding == "same"
            strided = u == 1 and b in (2, 3)
            assert conv2.kernel_size == (3, 3)
            assert conv2.strides == ((2, 2) if strided else (1, 1))
            assert conv2.dilation_rate == ((2, 2) if b == 4 else (1, 1))
            assert conv2.padding == "slim_same"
            assert conv2.explicit_padding == (((1, 1), (1, 1)) if strided else None)
            assert conv1.relu and conv2.relu and not conv3.relu
            if u == 1:
                shortcut = r101.get_layer(f"block{b}_unit1_shortcut")
                assert shortcut.strides == conv2.strides and shortcut.padding == "same"
                assert not shortcut.relu
    conv1 = r101.get_layer("conv1")
    assert conv1.kernel_size == (7, 7) and conv1.strides == (2, 2) and conv1.relu
    assert conv1.padding == "slim_same" and conv1.explicit_padding == ((3, 3), (3, 3))
    pool = r101.get_layer("pool1")
    assert pool.pool_size == (3, 3) and pool.strides == (2, 2) and pool.padding == "same"


# ------------------------------------------------------------------ variables, parameter counts


@pytest.mark.parametrize("name", ["resnet_v1_50", "resnet_v1_101"])
def test_variables_match_the_slim_checkpoint_table(name, r101, r50):
    model = {"resnet_v1_50": r50, "resnet_v1_101": r101}[name]
    slim = slim_variables(name, UNITS[name])
    keras_shapes = {v.name: tuple(v.shape) for v in model.weights}
    assert len(keras_shapes) == len(model.weights)  # names unique
    mapped = {keras_name(s): shape for s, shape in slim.items()}
    assert mapped == keras_shapes
    assert not any("bias" in n for n in keras_shapes)


def test_r101_counts_are_those_of_the_reference(r101):
    slim = slim_variables("resnet_v1_101", UNITS["resnet_v1_101"])
    kernels = [s for s in slim if s.endswith("/weights")]
    assert len(kernels) == 104 and len(slim) == 520 == len(r101.weights)
    # docs/original.md#model-variables: 68,699,523 parameters in all, 26,094,019 of them in the 20
    # head tensors.
    head = [(3, 3, 1024, 512), (512,), (1, 1, 512, 30), (30,), (1, 1, 512, 60), (60,),
            (15, 1, 2048, 256), (256,), (1, 15, 256, 490), (490,), (1, 15, 2048, 256), (256,),
            (15, 1, 256, 490), (490,), (490, 2048), (2048,), (2048, 81), (81,),
            (2048, 324), (324,)]
    assert num_params(head) == 26_094_019
    assert num_params(slim.values()) == 68_699_523 - 26_094_019 == 42_605_504
    assert r101.count_params() == 42_605_504


def test_r50_parameter_count(r50):
    slim = slim_variables("resnet_v1_50", UNITS["resnet_v1_50"])
    assert len(slim) == 265 == len(r50.weights)  # 53 convolutions x 5 tensors
    assert num_params(slim.values()) == r50.count_params() == 23_561_152


# ------------------------------------------------------------------------------ trainability


def test_r101_trainable_set_is_the_93_block2_to_4_kernels(r101):
    slim = slim_variables("resnet_v1_101", UNITS["resnet_v1_101"])
    expected = {keras_name(s) for s in slim if s.endswith("/weights")
                and s.split("/")[1] in ("block2", "block3", "block4")}
    trainable = {v.name for v in r101.trainable_weights}
    assert len(expected) == 93
    assert trainable == expected


def test_unfrozen_r50_trains_everything():
    model = build_backbone("resnet_v1_50", freeze_bn=False, freeze_stem=False)
    assert len(model.trainable_weights) == 53 * 3  # kernel, gamma, beta
    assert len(model.non_trainable_weights) == 53 * 2  # moving statistics
    stem_only = build_backbone("resnet_v1_50", freeze_bn=False, freeze_stem=True)
    frozen = {v.name for v in stem_only.non_trainable_weights if "moving" not in v.name}
    assert frozen == {v.name for v in stem_only.weights if "moving" not in v.name
                      and v.name.split("/")[0].split("_")[0] in ("conv1", "block1")}
    assert len(frozen) == 11 * 3  # conv1 + 10 block1 convolutions: kernel, gamma, beta
    assert stem_only.get_layer("conv1").bn_frozen
    assert stem_only.get_layer("block1_unit1_conv2").bn_frozen
    assert not stem_only.get_layer("block2_unit1_conv2").bn_frozen


# ------------------------------------------------------------------------------ frozen BN


def test_frozen_bn_ignores_training_flag(r101):
    images = tf.random.stateless_normal([2, 40, 56, 3], seed=[1, 2])
    before = [v.numpy() for v in r101.non_trainable_weights]
    inference = r101(images, training=False)
    with tf.GradientTape() as tape:
        training = r101(images, training=True)
        loss = tf.reduce_sum(training["C5"])
    grads = tape.gradient(loss, r101.trainable_weights)
    for key in inference:
        np.testing.assert_array_equal(training[key].numpy(), inference[key].numpy())
    for old, new in zip(before, r101.non_trainable_weights):
        np.testing.assert_array_equal(old, new.numpy())
    assert all(g is not None for g in grads)


def test_trainable_bn_does_use_batch_statistics():
    """Sanity check of the test above: an unfrozen BN changes with training=True."""
    model = build_backbone("resnet_v1_50", freeze_bn=False, freeze_stem=False)
    images = tf.random.stateless_normal([2, 40, 56, 3], seed=[1, 2])
    before = model.get_layer("block2_unit1_conv2").moving_mean.numpy()
    inference = model(images, training=False)["C3"].numpy()
    training = model(images, training=True)["C3"].numpy()
    assert not np.allclose(inference, training)
    assert not np.array_equal(before, model.get_layer("block2_unit1_conv2").moving_mean.numpy())


def test_layer_names_have_no_separate_bn_pad_or_conv_relu_layers(r101):
    names = [layer.name for layer in r101.layers]
    assert not [n for n in names if n.endswith(("_bn", "_pad", "conv1_relu", "conv2_relu"))]
    conv_bns = [layer for layer in r101.layers if isinstance(layer, layers.ConvBN)]
    assert len(conv_bns) == 104 and len(r101.layers) == 1 + 104 + 1 + 2 * 33  # + add, relu


# ------------------------------------------------------------------- convolution arithmetic


def test_slim_same_conv_pads_symmetrically_unlike_tf_same():
    """A 3x3/2 conv2d_same on an even input: symmetric 1/1 padding, unlike TF SAME."""
    x = tf.random.stateless_normal([1, 8, 10, 2], seed=[3, 4])
    inputs = keras.Input((None, None, 2))
    model = keras.Model(inputs, layers.ConvBN(3, 3, strides=2, padding="slim_same", name="c")(
        inputs))
    conv = model.get_layer("c")
    conv.moving_variance.assign(np.full(3, 1.0 - conv.bn_epsilon, np.float32))  # BN = identity
    y = model(x)
    explicit = tf.nn.conv2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), conv.kernel, 2, "VALID")
    np.testing.assert_allclose(y.numpy(), explicit.numpy(), rtol=1e-5, atol=1e-5)
    tf_same = tf.nn.conv2d(x, conv.kernel, 2, "SAME")  # pads bottom/right only for even sizes
    assert y.shape == tf_same.shape and not np.allclose(y.numpy(), tf_same.numpy())


@pytest.mark.parametrize("size", [(37, 45), (32, 48)])
def test_r50_matches_numpy_reference(r50, size):
    images = np.random.default_rng(7).normal(0, 50, (1, *size, 3)).astype(np.float32)
    out = r50(images)
    expected = ref.resnet_v1(images.astype(np.float64), ref.Weights(r50), UNITS["resnet_v1_50"])
    for key in ("C2", "C3", "C4", "C5"):
        ref.assert_close(out[key], expected[key])


def test_r101_matches_numpy_reference(r101):
    images = np.random.default_rng(8).normal(0, 50, (1, 33, 34, 3)).astype(np.float32)
    out = r101(images)
    expected = ref.resnet_v1(images.astype(np.float64), ref.Weights(r101),
                             UNITS["resnet_v1_101"])
    for key in ("C2", "C3", "C4", "C5"):
        ref.assert_close(out[key], expected[key])


def test_undilated_r50_matches_numpy_reference():
    model = build_backbone("resnet_v1_50", dilate_block4=False)
    ref.randomize_batch_norms(model, seed=5)
    images = np.random.default_rng(9).normal(0, 50, (1, 70, 45, 3)).astype(np.float32)
    out = model(images)
    expected = ref.resnet_v1(images.astype(np.float64), ref.Weights(model),
                             UNITS["resnet_v1_50"], dilate_block4=False)
    for key in ("C2", "C3", "C4", "C5"):
        ref.assert_close(out[key], expected[key])
