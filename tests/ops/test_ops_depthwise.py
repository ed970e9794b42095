"""The depthwise convolution's filter gradient (`ops.depthwise_filter_grad`): the compiled op
against a float64 NumPy reference and against TensorFlow's DepthwiseConv2dNativeBackpropFilter,
over kernel sizes, strides, both paddings and channel counts that leave a partial 16-lane block;
bad input gets InvalidArgument / ValueError naming the problem."""
import numpy as np
import pytest
import tensorflow as tf

from lhrcnn import ops

pytestmark = pytest.mark.skipif(not ops.custom_ops_available(), reason="needs the compiled ops")


def _axis(size, kernel, stride, same):
    if same:
        out = -(-size // stride)
        return out, max((out - 1) * stride + kernel - size, 0) // 2
    return (size - kernel) // stride + 1 if size >= kernel else 0, 0


def _reference(x, dy, kernel, strides, padding):
    """sum over n, oh, ow of x[n, oh*sh + kh - pt, ow*sw + kw - pl, c] * dy[n, oh, ow, c], in float64."""
    (kh, kw), (sh, sw) = kernel, strides
    oh, pt = _axis(x.shape[1], kh, sh, padding == "SAME")
    ow, pl = _axis(x.shape[2], kw, sw, padding == "SAME")
    assert dy.shape[1:3] == (oh, ow)
    out = np.zeros((kh, kw, x.shape[3]))
    for i in range(kh):
        for j in range(kw):
            for o in range(oh):
                r = o * sh + i - pt
                if not 0 <= r < x.shape[1]:
                    continue
                for q in range(ow):
                    c = q * sw + j - pl
                    if 0 <= c < x.shape[2]:
                        out[i, j] += np.sum(x[:, r, c, :].astype(np.float64) * dy[:, o, q, :], axis=0)
    return out[..., None]


@pytest.mark.parametrize("shape,kernel,strides,padding", [
    ((2, 9, 11, 16), (5, 5), (1, 1), "SAME"),     # one whole 16-lane block, the 5 x 5 loop
    ((2, 9, 11, 37), (5, 5), (2, 2), "SAME"),     # two blocks and a partial one, stride 2
    ((1, 8, 7, 5), (3, 3), (1, 1), "VALID"),      # a partial block only, the 3 x 3 loop
    ((2, 10, 9, 20), (3, 3), (2, 1), "SAME"),
    ((1, 12, 13, 24), (7, 5), (2, 3), "VALID"),   # a kernel size without its own loop
    ((1, 4, 5, 3), (5, 5), (1, 1), "VALID"),      # kernel taller than the map: no output rows
])
def test_matches_reference_and_tensorflow(shape, kernel, strides, padding):
    rng = np.random.default_rng(sum(shape) + kernel[0])
    x = rng.normal(size=shape).astype(np.float32)
    oh, _ = _axis(shape[1], kernel[0], strides[0], padding == "SAME")
    ow, _ = _axis(shape[2], kernel[1], strides[1], padding == "SAME")
    dy = rng.normal(size=(shape[0], oh, ow, shape[3])).astype(np.float32)
    want = _reference(x, dy, kernel, strides, padding)
    got = ops.depthwise_filter_grad(x, dy, kernel, strides, padding, backend="custom").numpy()
    assert got.shape == kernel + (shape[3], 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    if oh and ow:  # TensorFlow's kernel, the "tf" backend, agrees too
        stock = ops.depthwise_filter_grad(x, dy, kernel, strides, padding, backend="tf").numpy()
        np.testing.assert_allclose(got, stock, rtol=1e-5, atol=1e-4)


def test_gives_the_gradient_of_the_depthwise_convolution():
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(size=(2, 16, 12, 40)).astype(np.float32))
    w = tf.Variable(rng.normal(size=(5, 5, 40, 1)).astype(np.float32))
    dy = tf.constant(rng.normal(size=(2, 8, 6, 40)).astype(np.float32))  # the output's gradient
    with tf.GradientTape() as tape:
        y = tf.nn.depthwise_conv2d(x, w, [1, 2, 2, 1], "SAME")
        loss = tf.reduce_sum(y * dy)
    np.testing.assert_allclose(ops.depthwise_filter_grad(x, dy, 5, 2, "SAME", backend="custom").numpy(),
                               tape.gradient(loss, w).numpy(), rtol=1e-5, atol=1e-4)


def test_bad_input_is_refused_with_the_reason():
    x = np.zeros((1, 8, 8, 4), np.float32)
    dy = np.zeros((1, 8, 8, 4), np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="out_backprop must have shape"):
        ops.depthwise_filter_grad(x, dy[:, :7], 3, 1, "SAME", backend="custom")
    with pytest.raises(tf.errors.InvalidArgumentError, match="out_backprop must have shape"):
        ops.depthwise_filter_grad(x, dy[..., :3], 3, 1, "SAME", backend="custom")
    with pytest.raises(tf.errors.InvalidArgumentError, match="rank 4"):
        ops._lib().lhrcnn_depthwise_filter_grad(x[0], dy, kernel_size=[3, 3], strides=[1, 1], padding="SAME")
    with pytest.raises(ValueError, match="kernel_size"):
        ops.depthwise_filter_grad(x, dy, 16, 1, "SAME", backend="custom")
    with pytest.raises(ValueError, match="padding"):
        ops.depthwise_filter_grad(x, dy, 3, 1, "same", backend="custom")
    with pytest.raises(ValueError, match="float32"):
        ops.depthwise_filter_grad(x.astype(np.float64), dy, 3, 1, "SAME", backend="custom")
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="kernel_size"):
        ops._lib().lhrcnn_depthwise_filter_grad(x, dy, kernel_size=[3], strides=[1, 1], padding="SAME")
