"""The depthwise layer of the SNet backbones and the compressed RPN: with the compiled filter
gradient switched on, the same outputs and gradients as Keras's DepthwiseConv2D with the same
weights; switched off, or where the op does not apply (bfloat16), it is Keras's layer."""
import numpy as np
import pytest
import tensorflow as tf

from lhrcnn import ops
from lhrcnn.config import Config
from lhrcnn.depthwise import DepthwiseConv2D, use_compiled_filter_grad
from lhrcnn.keras import keras

needs_ops = pytest.mark.skipif(not ops.custom_ops_available(), reason="needs the compiled ops")


def _pair(stride, padding, channels=24):
    ours = DepthwiseConv2D(5, strides=stride, padding=padding, use_bias=True)
    stock = keras.layers.DepthwiseConv2D(5, strides=stride, padding=padding, use_bias=True)
    x = tf.constant(np.random.default_rng(stride).normal(size=(2, 13, 11, channels)).astype(np.float32))
    ours(x), stock(x)
    stock.set_weights(ours.get_weights())
    return ours, stock, x


def _grads_tensors(layer, x, dy):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * dy)
    gx, *gw = tape.gradient(loss, [x] + layer.trainable_weights)
    return y, gx, gw


def _grads(layer, x, dy):
    y, gx, gw = _grads_tensors(layer, x, dy)
    return y.numpy(), gx.numpy(), [g.numpy() for g in gw]


@needs_ops
@pytest.mark.parametrize("stride,padding", [(1, "same"), (2, "same"), (2, "valid")])
def test_compiled_filter_gradient_matches_keras(stride, padding):
    ours, stock, x = _pair(stride, padding)
    ours.compiled_filter_grad = True
    dy = tf.constant(np.random.default_rng(7).normal(size=stock(x).shape).astype(np.float32))
    y1, gx1, gw1 = _grads(ours, x, dy)
    y2, gx2, gw2 = _grads(stock, x, dy)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_allclose(gx1, gx2, rtol=1e-5, atol=1e-5)
    for a, b in zip(gw1, gw2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    # and inside a tf.function, where the training step runs
    _, _, gw3 = tf.function(lambda: _grads_tensors(ours, x, dy))()
    np.testing.assert_allclose(gw3[0].numpy(), gw2[0], rtol=1e-5, atol=1e-4)


@needs_ops
def test_the_compiled_path_is_taken_only_when_switched_on():
    ours, _, x = _pair(1, "same")
    graph = lambda: tf.function(lambda: _grads_tensors(ours, x, tf.ones_like(ours(x)))).get_concrete_function().graph  # noqa: E731
    assert "LhrcnnDepthwiseFilterGrad" not in {op.type for op in graph().get_operations()}
    ours.compiled_filter_grad = True
    assert "LhrcnnDepthwiseFilterGrad" in {op.type for op in graph().get_operations()}
    bf16 = tf.cast(x, tf.bfloat16)
    assert not ours._compiled_applies(bf16)  # the op is float32 only: Keras's layer then


def test_the_switch_reaches_every_depthwise_layer_of_a_model():
    inputs = keras.Input((16, 16, 8))
    y = DepthwiseConv2D(5, padding="same")(inputs)
    y = keras.layers.Conv2D(8, 1)(y)
    y = DepthwiseConv2D(3, strides=2, padding="same")(y)
    model = keras.Model(inputs, y)
    assert use_compiled_filter_grad(model) == 2
    assert all(m.compiled_filter_grad for m in model.submodules if isinstance(m, DepthwiseConv2D))


def test_the_config_option_is_validated():
    assert Config().depthwise_filter_grad == "tf"
    Config(depthwise_filter_grad="custom")
    with pytest.raises(ValueError, match="depthwise_filter_grad"):
        Config(depthwise_filter_grad="fast")
