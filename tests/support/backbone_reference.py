"""NumPy (float64) reference of the backbones, written from their description in docs/original.md
(#resnet-v1-backbone, #xception-backbone), not from the library.

Convolutions are explicit tap sums over an explicitly padded input; the padding rules are TF1's:
slim `conv2d_same` pads `(k_eff - 1) // 2` before and the rest after when strided, TF `SAME`
pads `max((ceil(n/s) - 1) * s + k_eff - n, 0)` in total with the smaller half before.
Weights are looked up by the Keras weight names of the documented naming scheme.
"""
import math

import numpy as np


def tf_same_pads(n, k_eff, stride):
    """TF `SAME` padding (before, after) of one axis of size n."""
    out = -(-n // stride)
    total = max((out - 1) * stride + k_eff - n, 0)
    return total // 2, total - total // 2


def conv2d_same_pads(k_eff):
    """slim `conv2d_same` explicit padding (before, after) of a strided convolution."""
    total = k_eff - 1
    return total // 2, total - total // 2


def conv2d(x, w, stride=1, rate=1, pads=((0, 0), (0, 0)), bias=None):
    """`x [B, H, W, Cin]`, HWIO `w [kh, kw, Cin, Cout]`, zero padding `pads` then VALID."""
    kh, kw = w.shape[:2]
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    out_h = (xp.shape[1] - (rate * (kh - 1) + 1)) // stride + 1
    out_w = (xp.shape[2] - (rate * (kw - 1) + 1)) // stride + 1
    y = np.zeros((x.shape[0], out_h, out_w, w.shape[3]))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i * rate:i * rate + (out_h - 1) * stride + 1:stride,
                       j * rate:j * rate + (out_w - 1) * stride + 1:stride, :]
            y += patch @ w[i, j]
    return y if bias is None else y + bias


def depthwise_conv2d(x, w, stride=1, pads=((0, 0), (0, 0))):
    """`x [B, H, W, C]`, `w [kh, kw, C, 1]` (depth multiplier 1)."""
    kh, kw = w.shape[:2]
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    out_h = (xp.shape[1] - kh) // stride + 1
    out_w = (xp.shape[2] - kw) // stride + 1
    y = np.zeros((x.shape[0], out_h, out_w, x.shape[3]))
    for i in range(kh):
        for j in range(kw):
            y += xp[:, i:i + (out_h - 1) * stride + 1:stride,
                    j:j + (out_w - 1) * stride + 1:stride, :] * w[i, j, :, 0]
    return y


def max_pool_same(x, k=3, stride=2):
    """TF `SAME` max-pool: padded positions never win."""
    pads = [tf_same_pads(x.shape[a], k, stride) for a in (1, 2)]
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-np.inf)
    out_h, out_w = -(-x.shape[1] // stride), -(-x.shape[2] // stride)
    y = np.full((x.shape[0], out_h, out_w, x.shape[3]), -np.inf)
    for i in range(k):
        for j in range(k):
            y = np.maximum(y, xp[:, i:i + (out_h - 1) * stride + 1:stride,
                                 j:j + (out_w - 1) * stride + 1:stride, :])
    return y


def relu(x):
    return np.maximum(x, 0.0)


class Weights:
    """Keras weights by name, as float64: `w.kernel("conv1")`, `w.bn(x, "conv1")`."""

    def __init__(self, model, epsilon=1e-5):
        self.values = {v.name: v.numpy().astype(np.float64) for v in model.weights}
        self.epsilon = epsilon

    def __getitem__(self, name):
        return self.values[name + ":0"]

    def kernel(self, layer):
        return self[f"{layer}/kernel"]

    def bn(self, x, layer):
        gamma, beta = self[f"{layer}/gamma"], self[f"{layer}/beta"]
        mean, var = self[f"{layer}/moving_mean"], self[f"{layer}/moving_variance"]
        return (x - mean) / np.sqrt(var + self.epsilon) * gamma + beta


def slim_conv(x, w, layer, k, stride=1, rate=1):
    """slim conv (conv2d_same rule for k > 1, TF SAME for 1x1) + BN, no activation."""
    k_eff = k + (k - 1) * (rate - 1)
    if k > 1 and stride > 1:
        pads = (conv2d_same_pads(k_eff),) * 2
    else:
        pads = (tf_same_pads(x.shape[1], k_eff, stride), tf_same_pads(x.shape[2], k_eff, stride))
    return w.bn(conv2d(x, w.kernel(layer), stride, rate, pads), layer)


def resnet_v1(images, w, units, dilate_block4=True):
    """docs/original.md#resnet-v1-backbone: returns {"C2".."C5"} as float64 arrays."""
    x = relu(slim_conv(images, w, "conv1", 7, stride=2))
    x = max_pool_same(x)
    blocks = [(256, 64, 1, 1), (512, 128, 2, 1), (1024, 256, 2, 1),
              (2048, 512, 1, 2) if dilate_block4 else (2048, 512, 2, 1)]
    features = {}
    for b, ((depth, bottleneck, stride, rate), n) in enumerate(zip(blocks, units), start=1):
        for u in range(1, n + 1):
            s = stride if u == 1 else 1
            name = f"block{b}_unit{u}"
            shortcut = x if x.shape[3] == depth else slim_conv(x, w, name + "_shortcut", 1, s)
            r = relu(slim_conv(x, w, name + "_conv1", 1))
            r = relu(slim_conv(r, w, name + "_conv2", 3, s, rate))
            r = slim_conv(r, w, name + "_conv3", 1)
            x = relu(shortcut + r)
        features[f"C{b + 1}"] = x
    return features


def xception_star(images, w):
    """docs/original.md#xception-backbone: returns {"C2".."C5"} as float64 arrays."""
    x = relu(slim_conv(images, w, "conv1", 3, stride=2))
    x = max_pool_same(x)
    features = {"C2": x}
    blocks = [(144, 24, 2, 4), (288, 144, 2, 8), (576, 288, 1, 4)]
    for b, (depth, bottleneck, stride, n) in enumerate(blocks, start=1):
        for u in range(1, n + 1):
            s = stride if u == 1 else 1
            name = f"block{b}_unit{u}"
            shortcut = x if x.shape[3] == depth else slim_conv(x, w, name + "_shortcut", 1, s)
            r = relu(slim_conv(x, w, name + "_conv1", 1))
            pads = (tf_same_pads(r.shape[1], 3, s), tf_same_pads(r.shape[2], 3, s))
            r = depthwise_conv2d(r, w[f"{name}_dws_conv2/depthwise_kernel"], s, pads)
            r = conv2d(r, w[f"{name}_dws_conv2/pointwise_kernel"],
                       bias=w[f"{name}_dws_conv2/bias"])
            r = slim_conv(relu(r), w, name + "_conv3", 1)
            x = relu(shortcut + r)
        features[f"C{b + 2}"] = x
    return features


def randomize_batch_norms(model, seed):
    """Random BN statistics and affine parameters (and separable-conv biases), so that the
    reference comparison and the frozen-BN checks see non-trivial values. BN variables are found
    by name: a layer with `<layer>/moving_mean` also has `gamma`, `beta`, `moving_variance`."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        variables = {v.name.split("/")[-1].split(":")[0]: v for v in layer.weights}
        if "moving_mean" in variables:
            c = variables["gamma"].shape[0]
            variables["gamma"].assign(rng.uniform(0.5, 1.5, c))
            variables["beta"].assign(rng.normal(0, 0.2, c))
            variables["moving_mean"].assign(rng.normal(0, 0.2, c))
            variables["moving_variance"].assign(rng.uniform(0.5, 2.0, c))
        elif layer.name.endswith("dws_conv2"):
            variables["bias"].assign(rng.normal(0, 0.1, variables["bias"].shape))


def assert_close(actual, expected, rel=1e-4):
    """Compare float32 TF output with the float64 reference, tolerance scaled by the magnitude."""
    actual = np.asarray(actual, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(float(np.max(np.abs(expected))), 1e-6)
    np.testing.assert_allclose(actual, expected, rtol=rel, atol=rel * scale)


def ceil_div(n, d):
    return math.ceil(n / d)
