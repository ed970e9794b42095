"""Tests of lhrcnn.backbones.layers.ConvBN against NumPy (float64) and an unfused TF computation."""
import numpy as np
import pytest
import tensorflow as tf

import backbone_reference as ref
from lhrcnn.backbones import layers
from lhrcnn.keras import keras

# (padding, kernel size, stride, rate, input [B, H, W, Cin]): the configurations the backbones use.
CASES = {
    "slim_same_3x3_stride2_even": ("slim_same", 3, 2, 1, (2, 8, 10, 3)),
    "slim_same_3x3_stride2_odd": ("slim_same", 3, 2, 1, (1, 9, 7, 3)),
    "slim_same_7x7_stride2": ("slim_same", 7, 2, 1, (1, 12, 11, 3)),
    "slim_same_3x3_stride1_rate2": ("slim_same", 3, 1, 2, (2, 9, 12, 4)),
    "same_1x1_stride2": ("same", 1, 2, 1, (2, 9, 10, 5)),
    "same_1x1_stride1": ("same", 1, 1, 1, (1, 6, 7, 5)),
}


def make_conv_bn(filters, kernel_size, channels_in, seed, **kwargs):
    """A built ConvBN with random kernel, affine parameters and moving statistics."""
    layer = layers.ConvBN(filters, kernel_size, **kwargs)
    layer.build((None, None, None, channels_in))
    rng = np.random.default_rng(seed)
    layer.kernel.assign(rng.normal(0, 0.3, layer.kernel.shape).astype(np.float32))
    layer.gamma.assign(rng.uniform(0.5, 1.5, filters).astype(np.float32))
    layer.beta.assign(rng.normal(0, 0.2, filters).astype(np.float32))
    layer.moving_mean.assign(rng.normal(0, 0.3, filters).astype(np.float32))
    layer.moving_variance.assign(rng.uniform(0.5, 2.0, filters).astype(np.float32))
    return layer


def numpy_conv(x, layer, padding, k, stride, rate):
    """The convolution alone, float64, with the padding rule written out (reference module)."""
    k_eff = k + (k - 1) * (rate - 1)
    if padding == "slim_same" and stride > 1:
        pads = (ref.conv2d_same_pads(k_eff),) * 2
    else:
        pads = (ref.tf_same_pads(x.shape[1], k_eff, stride),
                ref.tf_same_pads(x.shape[2], k_eff, stride))
    return ref.conv2d(x.astype(np.float64), layer.kernel.numpy().astype(np.float64), stride, rate,
                      pads)


def numpy_bn(y, layer, mean, variance):
    gamma, beta = layer.gamma.numpy().astype(np.float64), layer.beta.numpy().astype(np.float64)
    return (y - mean) / np.sqrt(variance + layer.bn_epsilon) * gamma + beta


def moving_statistics(layer):
    return layer.moving_mean.numpy().astype(np.float64), \
        layer.moving_variance.numpy().astype(np.float64)


def unfused_reference(x, layer, relu):
    """conv → BN with moving statistics → ReLU as separate TF ops (no folding)."""
    pads = layer.explicit_padding
    if pads is not None:
        x = tf.pad(x, [[0, 0], list(pads[0]), list(pads[1]), [0, 0]])
    y = tf.nn.convolution(x, layer.kernel, strides=layer.strides,
                          padding="SAME" if pads is None else "VALID",
                          dilations=layer.dilation_rate)
    y = (y - layer.moving_mean) * tf.math.rsqrt(layer.moving_variance + layer.bn_epsilon) \
        * layer.gamma + layer.beta
    return tf.nn.relu(y) if relu else y


# -------------------------------------------------------------------------- folded (frozen)


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("case", sorted(CASES))
def test_folded_path_equals_conv_then_bn_then_relu(case, relu):
    padding, k, stride, rate, shape = CASES[case]
    layer = make_conv_bn(6, k, shape[-1], seed=1, strides=stride, dilation_rate=rate,
                         padding=padding, relu=relu)
    x = np.random.default_rng(2).normal(0, 2, shape).astype(np.float32)
    expected = numpy_bn(numpy_conv(x, layer, padding, k, stride, rate), layer,
                        *moving_statistics(layer))
    if relu:
        expected = ref.relu(expected)
    assert expected.shape == (shape[0], -(-shape[1] // stride), -(-shape[2] // stride), 6)
    before = [v.numpy() for v in (layer.moving_mean, layer.moving_variance)]
    for training in (None, False, True):  # frozen: the training flag changes nothing
        ref.assert_close(layer(x, training=training), expected, rel=1e-5)
    for old, new in zip(before, (layer.moving_mean, layer.moving_variance)):
        np.testing.assert_array_equal(old, new.numpy())


def test_explicit_padding_is_that_of_slim_conv2d_same():
    def pads(k, stride=1, rate=1, padding="slim_same"):
        return layers.ConvBN(4, k, strides=stride, dilation_rate=rate,
                             padding=padding).explicit_padding
    assert pads(7, 2) == ((3, 3), (3, 3))
    assert pads(3, 2) == ((1, 1), (1, 1))
    assert pads(4, 2) == ((1, 2), (1, 2))  # pad_total 3: the odd one after
    assert pads((1, 3), 2) == ((0, 0), (1, 1))
    assert pads(3, 1, 2) is None and pads(3, 1) is None  # stride 1: TF SAME (dilated)
    assert pads(3, 2, padding="same") is None and pads(1, 2, padding="same") is None


# ------------------------------------------------------------------------------ training


@pytest.mark.parametrize("relu", [True, False])
def test_training_path_uses_batch_statistics_and_updates_moving_averages(relu):
    momentum, epsilon = 0.9, 1e-3
    layer = make_conv_bn(5, 3, 4, seed=3, strides=2, padding="slim_same", relu=relu,
                         bn_frozen=False, bn_momentum=momentum, bn_epsilon=epsilon)
    x = (np.random.default_rng(4).normal(0, 2, (2, 9, 11, 4)) + 0.5).astype(np.float32)
    y = numpy_conv(x, layer, "slim_same", 3, 2, 1)
    mean, variance = y.mean(axis=(0, 1, 2)), y.var(axis=(0, 1, 2))  # biased
    n = y.shape[0] * y.shape[1] * y.shape[2]
    expected = numpy_bn(y, layer, mean, variance)
    if relu:
        expected = ref.relu(expected)
    moving_mean, moving_variance = moving_statistics(layer)

    ref.assert_close(layer(x, training=True), expected, rel=1e-5)

    expected_mean = moving_mean * momentum + mean * (1 - momentum)
    expected_variance = moving_variance * momentum + variance * n / (n - 1) * (1 - momentum)
    np.testing.assert_allclose(layer.moving_mean.numpy(), expected_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), expected_variance, rtol=1e-5,
                               atol=1e-6)
    # Inference mode of the same (unfrozen) layer: the updated moving statistics, no update.
    inference = numpy_bn(y, layer, *moving_statistics(layer))
    ref.assert_close(layer(x, training=False), ref.relu(inference) if relu else inference,
                     rel=1e-5)
    np.testing.assert_allclose(layer.moving_mean.numpy(), expected_mean, rtol=1e-5, atol=1e-6)


def test_non_trainable_layer_runs_in_inference_mode():
    """As a Keras BatchNorm: `trainable = False` (e.g. `model.trainable = False` to freeze a
    backbone) normalises with the moving statistics and never updates them."""
    layer = make_conv_bn(4, 3, 2, seed=16, bn_frozen=False, padding="slim_same", strides=2)
    x = np.random.default_rng(17).normal(1, 2, (2, 6, 7, 2)).astype(np.float32)
    layer.trainable = False
    before = moving_statistics(layer)
    np.testing.assert_array_equal(layer(x, training=True).numpy(),
                                  layer(x, training=False).numpy())
    for old, new in zip(before, moving_statistics(layer)):
        np.testing.assert_array_equal(old, new)
    layer.trainable = True
    assert not np.allclose(layer(x, training=True).numpy(), layer(x, training=False).numpy())


def test_training_flag_given_as_a_tensor():
    """A symbolic flag (tf.cond) and a constant one agree with the Python-bool results."""
    x = np.random.default_rng(5).normal(0, 1, (2, 6, 6, 3)).astype(np.float32)
    layer = make_conv_bn(4, 1, 3, seed=6, bn_frozen=False, bn_momentum=0.5)
    twin = make_conv_bn(4, 1, 3, seed=6, bn_frozen=False, bn_momentum=0.5)
    call = tf.function(lambda images, training: layer(images, training=training),
                       input_signature=[tf.TensorSpec([None, None, None, 3]),
                                        tf.TensorSpec([], tf.bool)])
    for flag in (False, True, True, False):
        np.testing.assert_allclose(call(x, tf.constant(flag)).numpy(),
                                   twin(x, training=flag).numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(layer.moving_mean.numpy(), twin.moving_mean.numpy(),
                                   rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(layer(x, training=tf.constant(True)).numpy(),
                               twin(x, training=True).numpy(), rtol=1e-5, atol=1e-5)


def test_moving_statistics_update_under_a_distribution_strategy():
    x = np.random.default_rng(7).normal(1, 2, (2, 5, 5, 3)).astype(np.float32)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        layer = make_conv_bn(4, 3, 3, seed=8, bn_frozen=False, padding="slim_same")
    assert layer.moving_mean.synchronization == tf.VariableSynchronization.ON_READ
    assert layer.moving_variance.aggregation == tf.VariableAggregation.MEAN
    twin = make_conv_bn(4, 3, 3, seed=8, bn_frozen=False, padding="slim_same")

    @tf.function
    def step(images):
        return strategy.run(lambda t: layer(t, training=True), args=(images,))

    out = step(tf.constant(x))
    np.testing.assert_allclose(strategy.experimental_local_results(out)[0].numpy(),
                               twin(x, training=True).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.moving_mean.numpy(), twin.moving_mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), twin.moving_variance.numpy(),
                               rtol=1e-6)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("case", ["slim_same_3x3_stride2_even", "slim_same_3x3_stride1_rate2",
                                  "same_1x1_stride2"])
def test_folded_gradients_match_the_unfused_computation(case):
    padding, k, stride, rate, shape = CASES[case]
    layer = make_conv_bn(6, k, shape[-1], seed=9, strides=stride, dilation_rate=rate,
                         padding=padding, relu=True)
    layer.bn_trainable = True  # frozen statistics, trainable gamma and beta
    x = tf.constant(np.random.default_rng(10).normal(0, 2, shape).astype(np.float32))
    weights = tf.random.stateless_normal(layer(x).shape, seed=[11, 12])
    sources = [layer.kernel, layer.gamma, layer.beta]

    def gradients(fn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(fn(x) * weights)
        return tape.gradient(loss, sources + [x])

    for training in (False, True):
        folded = gradients(lambda t: layer(t, training=training))
        unfused = gradients(lambda t: unfused_reference(t, layer, relu=True))
        for name, got, want in zip(("kernel", "gamma", "beta", "input"), folded, unfused):
            scale = float(tf.reduce_max(tf.abs(want)))
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4 * scale,
                                       err_msg=name)


def test_frozen_statistics_made_trainable_still_use_moving_statistics():
    """`bn_trainable = True` on a frozen layer trains gamma and beta (e.g. fine-tuning) but keeps
    normalising with the moving statistics, also with training=True, and never updates them."""
    layer = make_conv_bn(3, 3, 2, seed=13, padding="slim_same", strides=2)
    assert layer.trainable_weights == [layer.kernel]
    layer.bn_trainable = True
    assert layer.trainable_weights == [layer.kernel, layer.gamma, layer.beta]
    x = tf.random.stateless_normal([4, 7, 7, 2], seed=[5, 6]) * 3.0 + 1.0
    before = moving_statistics(layer)
    with tf.GradientTape() as tape:
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * y)
    grads = tape.gradient(loss, layer.trainable_weights)
    np.testing.assert_allclose(y.numpy(), layer(x, training=False).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y.numpy(), unfused_reference(x, layer, relu=False).numpy(),
                               rtol=1e-4, atol=1e-4)
    for old, new in zip(before, moving_statistics(layer)):
        np.testing.assert_array_equal(old, new)
    assert all(g is not None and np.any(g.numpy() != 0) for g in grads)


# ------------------------------------------------------------------------------- graph


def op_types(fn, signature):
    graph = tf.function(fn).get_concrete_function(signature).graph
    return graph, [op.type for op in graph.get_operations()]


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("padding,stride", [("slim_same", 2), ("same", 1)])
def test_frozen_graph_is_conv_bias_add_relu_without_batch_norm(training, padding, stride):
    """The pattern grappler fuses into `_FusedConv2D`: Conv2D → BiasAdd → Relu, no BN op."""
    layer = make_conv_bn(8, 3, 4, seed=14, strides=stride, padding=padding, relu=True)
    graph, types = op_types(lambda x: layer(x, training=training),
                            tf.TensorSpec([1, 16, 16, 4], tf.float32))
    assert not [t for t in types if "BatchNorm" in t]
    assert types.count("Conv2D") == types.count("BiasAdd") == types.count("Relu") == 1
    relu = next(op for op in graph.get_operations() if op.type == "Relu")
    bias_add = relu.inputs[0].op
    assert bias_add.type == "BiasAdd" and bias_add.inputs[0].op.type == "Conv2D"


def test_unfrozen_training_graph_does_normalise_with_batch_statistics():
    """Sanity check of the test above: the op it looks for is there in the training path."""
    layer = make_conv_bn(8, 3, 4, seed=15, bn_frozen=False)
    _, types = op_types(lambda x: layer(x, training=True), tf.TensorSpec([1, 8, 8, 4]))
    assert "FusedBatchNormV3" in types
    _, types = op_types(lambda x: layer(x, training=False), tf.TensorSpec([1, 8, 8, 4]))
    assert not [t for t in types if "BatchNorm" in t]


# -------------------------------------------------------------------- variables, config


def test_variables_names_shapes_and_trainability():
    inputs = keras.Input((None, None, 3))
    layer = layers.ConvBN(16, (3, 5), name="block9_unit1_conv2")
    layer(inputs)
    assert [(v.name, tuple(v.shape)) for v in layer.weights] == [
        ("block9_unit1_conv2/kernel:0", (3, 5, 3, 16)),
        ("block9_unit1_conv2/gamma:0", (16,)), ("block9_unit1_conv2/beta:0", (16,)),
        ("block9_unit1_conv2/moving_mean:0", (16,)),
        ("block9_unit1_conv2/moving_variance:0", (16,))]
    assert layer.trainable_weights == [layer.kernel]  # bn_frozen=True by default
    for v in (layer.moving_mean, layer.moving_variance):
        assert not v.trainable
        assert v.synchronization == tf.VariableSynchronization.ON_READ
        assert v.aggregation == tf.VariableAggregation.MEAN
    np.testing.assert_array_equal(layer.gamma.numpy(), np.ones(16))
    np.testing.assert_array_equal(layer.moving_variance.numpy(), np.ones(16))
    np.testing.assert_array_equal(layer.beta.numpy() + layer.moving_mean.numpy(), np.zeros(16))
    # slim's variance scaling: truncated normal, stddev ~ sqrt(2 / fan_in) = sqrt(2 / 45)
    assert 0.5 * np.sqrt(2 / 45) < np.std(layer.kernel.numpy()) < 1.5 * np.sqrt(2 / 45)

    trainable = layers.ConvBN(4, 1, bn_frozen=False)
    trainable.build((None, None, None, 2))
    assert trainable.trainable_weights == [trainable.kernel, trainable.gamma, trainable.beta]
    assert trainable.non_trainable_weights == [trainable.moving_mean, trainable.moving_variance]
    stem = layers.ConvBN(4, 1, conv_trainable=False)
    stem.build((None, None, None, 2))
    assert stem.trainable_weights == [] and len(stem.non_trainable_weights) == 5
    trainable.trainable = False  # the layer flag switches everything off
    assert trainable.trainable_weights == [] and len(trainable.non_trainable_weights) == 5
    assert trainable.count_params() == 2 * 4 + 4 * 4


def test_config_round_trip_and_functional_model_serialization():
    layer = layers.ConvBN(8, 3, strides=2, padding="slim_same", relu=True, conv_trainable=False,
                          bn_frozen=False, bn_trainable=False, bn_epsilon=1e-3,
                          bn_momentum=0.9, name="c")
    config = layer.get_config()
    clone = layers.ConvBN.from_config(config)
    assert clone.get_config() == config
    for attribute in ("filters", "kernel_size", "strides", "dilation_rate", "padding", "relu",
                      "conv_trainable", "bn_frozen", "bn_trainable", "bn_epsilon", "bn_momentum"):
        assert getattr(clone, attribute) == getattr(layer, attribute), attribute
    assert isinstance(keras.layers.deserialize(keras.layers.serialize(layer)), layers.ConvBN)

    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, layers.ConvBN(4, 3, relu=True, name="c")(inputs))
    restored = keras.Model.from_config(model.get_config())
    restored.set_weights(model.get_weights())
    x = tf.random.stateless_normal([1, 5, 6, 3], seed=[1, 1])
    np.testing.assert_array_equal(restored(x).numpy(), model(x).numpy())


def test_invalid_arguments_are_named():
    with pytest.raises(ValueError, match="padding"):
        layers.ConvBN(4, 3, padding="valid")
    with pytest.raises(ValueError, match="dilation_rate"):
        layers.ConvBN(4, 3, strides=2, dilation_rate=2)
    with pytest.raises(ValueError, match="filters"):
        layers.ConvBN(0, 3)
    with pytest.raises(ValueError, match="kernel_size"):
        layers.ConvBN(4, (3, 3, 3))
