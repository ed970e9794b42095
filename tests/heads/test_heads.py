"""The RPN head, the large separable conv, the Light-Head and R-FCN subnets against second
implementations (tf.nn.conv2d with the layers' weights; NumPy pooling reference + matmuls)."""
import numpy as np
import pytest
import tensorflow as tf

import reference_ops as ref
from lhrcnn.heads import LightHead, RFCNHead, RPNHead
from lhrcnn.necks import LargeSeparableConv


def _conv(x, layer):
    kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
    return tf.nn.conv2d(x, kernel, 1, "SAME").numpy() + bias


def test_large_separable_conv_matches_four_convolutions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 11, 6)).astype(np.float32)
    layer = LargeSeparableConv(kernel_size=5, mid_channels=4, out_channels=18)
    y = layer(x).numpy()
    for v in layer.weights:  # non-trivial weights and biases
        v.assign(rng.normal(size=v.shape).astype(np.float32) * 0.3)
    y = layer(x).numpy()
    want = np.maximum(_conv(_conv(x, layer.w_pre), layer.w) + _conv(_conv(x, layer.h_pre), layer.h), 0)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
    shapes = {v.name.split("/")[-2]: tuple(v.shape) for v in layer.weights if "kernel" in v.name}
    assert shapes == {"conv_new_1_conv15_w_pre": (5, 1, 6, 4), "conv_new_1_conv15_w": (1, 5, 4, 18),
                      "conv_new_1_conv15_h_pre": (1, 5, 6, 4), "conv_new_1_conv15_h": (5, 1, 4, 18)}


def test_rpn_head_layout():
    head = RPNHead(num_anchors=15, channels=32)
    logits, deltas = head(tf.zeros([2, 5, 7, 16]))
    assert logits.shape == (2, 5, 7, 30) and deltas.shape == (2, 5, 7, 60)
    assert sum(int(np.prod(v.shape)) for v in head.weights) == (9 * 16 * 32 + 32) + (32 * 30 + 30) + (32 * 60 + 60)


def test_light_head_matches_numpy():
    rng = np.random.default_rng(1)
    g, k, classes = 3, 2, 4
    thin = rng.normal(size=(2, 6, 8, g * g * k)).astype(np.float32)
    rois = np.array([[0, 3, 5, 60, 80], [1, -10, 0, 40, 30], [1, 20, 20, 21, 22]], np.float32)
    head = LightHead(classes, group_size=g, spatial_scale=1 / 16, fc_channels=5, backend="custom")
    logits, deltas = head(thin, rois)
    assert logits.shape == (3, classes) and deltas.shape == (3, 4 * classes)
    pooled, _ = ref.ps_roi_align_ref(thin, rois, g, 1 / 16)
    flat = pooled.reshape(3, -1)  # (ph, pw, k) order
    hidden = np.maximum(flat @ head.fc.kernel.numpy() + head.fc.bias.numpy(), 0)
    np.testing.assert_allclose(logits.numpy(), hidden @ head.cls.kernel.numpy() + head.cls.bias.numpy(),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(deltas.numpy(), hidden @ head.bbox.kernel.numpy() + head.bbox.bias.numpy(),
                               rtol=1e-4, atol=1e-6)
    shared = LightHead(classes, group_size=g, spatial_scale=1 / 16, fc_channels=5, class_specific=False,
                       pooling="ps_roi_pool")
    assert shared(thin, rois)[1].shape == (3, 4)


def test_rfcn_head_matches_numpy():
    rng = np.random.default_rng(2)
    g, classes = 3, 4
    c5 = rng.normal(size=(1, 6, 8, 10)).astype(np.float32)
    rois = np.array([[0, 3, 5, 60, 80], [0, 10, 0, 40, 30]], np.float32)
    head = RFCNHead(classes, group_size=g, spatial_scale=1 / 16, channels=12, backend="custom")
    logits, deltas = head(c5, rois)
    hidden = np.maximum(_conv(c5, head.conv), 0).astype(np.float32)
    cls_map, box_map = _conv(hidden, head.cls).astype(np.float32), _conv(hidden, head.bbox).astype(np.float32)
    want_logits = ref.ps_roi_pool_ref(cls_map, rois, g, 1 / 16).mean(axis=(1, 2))
    want_box = ref.ps_roi_pool_ref(box_map, rois, g, 1 / 16).mean(axis=(1, 2))
    np.testing.assert_allclose(logits.numpy(), want_logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(deltas.numpy(), np.tile(want_box, (1, classes)), rtol=1e-4, atol=1e-5)


def test_large_separable_conv_batch_norm_option():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 6, 7, 4)).astype(np.float32)
    layer = LargeSeparableConv(kernel_size=3, mid_channels=3, out_channels=9, norm="batch", kernel_initializer="he_normal")
    layer(x)
    layer.bn.moving_mean.assign(rng.normal(size=9).astype(np.float32))
    layer.bn.moving_variance.assign(rng.uniform(0.5, 2, 9).astype(np.float32))
    pre = _conv(_conv(x, layer.w_pre), layer.w) + _conv(_conv(x, layer.h_pre), layer.h)
    bn = layer.bn
    want = np.maximum((pre - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
                      * bn.gamma.numpy() + bn.beta.numpy(), 0)
    np.testing.assert_allclose(layer(x, training=False).numpy(), want, rtol=1e-4, atol=1e-4)
    train = layer(x, training=True).numpy()  # batch statistics: about half the outputs are positive
    assert 0.3 < (train > 0).mean() < 0.7
    with pytest.raises(ValueError, match="norm"):
        LargeSeparableConv(norm="group")
