"""The feature-pyramid family against NumPy and hand-computed values: the FPN neck (DetNet's
add-without-upsampling and ResNet-FPN's P6), the FPN level rule, multi-level RoIAlign, the 1.3x
RoI enlargement, the multi-level RPN's anchors, Double-Head's blocks, losses and score fusion,
the config checks, multi-scale training sizes and the backbones' width divisor."""
import math

import numpy as np
import pytest
import tensorflow as tf

from lhrcnn import losses, ops
from lhrcnn.backbones import build_backbone
from lhrcnn.boxes import generate_base_anchors, grid_anchors
from lhrcnn.config import Config
from lhrcnn.heads.double_head import DoubleHead, NonLocalBlock, fuse_scores
from lhrcnn.heads.fpn_head import MultiLevelRoIAlign, fpn_levels, scale_rois
from lhrcnn.necks.fpn import FPN


def _conv(x, kernel, bias):
    """NumPy 'same' convolution, stride 1 (x [B, H, W, C], kernel [k, k, C, D])."""
    k = kernel.shape[0]
    pad = k // 2
    xp = np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    out = np.zeros(x.shape[:3] + (kernel.shape[3],), np.float64)
    for dy in range(k):
        for dx in range(k):
            out += np.einsum("bhwc,cd->bhwd", xp[:, dy:dy + x.shape[1], dx:dx + x.shape[2]], kernel[dy, dx])
    return out + bias


def _np_fpn(fpn, inputs, strides):
    names = sorted(inputs, key=lambda n: int(n[1:]))
    out, top = {}, None
    for i in reversed(range(len(names))):
        n = names[i]
        lat = _conv(inputs[n], fpn.lateral[n].kernel.numpy(), fpn.lateral[n].bias.numpy())
        if top is not None:
            f = strides[names[i + 1]] // strides[n]
            up = top.repeat(f, axis=1).repeat(f, axis=2)[:, :lat.shape[1], :lat.shape[2]]
            lat = lat + up
        top = lat
        out["P" + n[1:]] = _conv(lat, fpn.output_conv[n].kernel.numpy(), fpn.output_conv[n].bias.numpy())
    return out


def _randomise_biases(layer, rng):
    for v in layer.weights:
        if "bias" in v.name:
            v.assign(rng.normal(size=v.shape).astype(np.float32))


def test_detnet_fpn_adds_stride16_levels_without_upsampling_against_numpy():
    rng = np.random.default_rng(0)
    strides = {"C2": 4, "C3": 8, "C4": 16, "C5": 16, "C6": 16}
    sizes = {"C2": (13, 18), "C3": (7, 9), "C4": (4, 5), "C5": (4, 5), "C6": (4, 5)}  # odd C2: crop
    inputs = {n: rng.normal(size=(2,) + sizes[n] + (3 + i,)).astype(np.float32) for i, n in enumerate(strides)}
    fpn = FPN(strides, channels=4)
    fpn({n: tf.constant(v) for n, v in inputs.items()})
    _randomise_biases(fpn, rng)
    out = {k: v.numpy() for k, v in fpn({n: tf.constant(v) for n, v in inputs.items()}).items()}
    assert fpn.output_strides == {"P2": 4, "P3": 8, "P4": 16, "P5": 16, "P6": 16}
    assert sorted(out) == ["P2", "P3", "P4", "P5", "P6"]
    assert out["P4"].shape == out["P5"].shape == out["P6"].shape == (2, 4, 5, 4)
    want = _np_fpn(fpn, inputs, strides)
    for k in want:
        np.testing.assert_allclose(out[k], want[k], rtol=1e-4, atol=1e-4, err_msg=k)


def test_resnet_fpn_upsamples_and_adds_the_pooled_p6():
    rng = np.random.default_rng(1)
    strides = {"C2": 4, "C3": 8, "C4": 16, "C5": 32}
    sizes = {"C2": (16, 20), "C3": (8, 10), "C4": (4, 5), "C5": (2, 3)}  # C4 odd-width: crop
    inputs = {n: rng.normal(size=(1,) + sizes[n] + (5,)).astype(np.float32) for n in strides}
    fpn = FPN(strides, channels=3, extra_pool_level=True)
    fpn({n: tf.constant(v) for n, v in inputs.items()})
    _randomise_biases(fpn, rng)
    out = {k: v.numpy() for k, v in fpn({n: tf.constant(v) for n, v in inputs.items()}).items()}
    assert fpn.output_strides == {"P2": 4, "P3": 8, "P4": 16, "P5": 32, "P6": 64}
    want = _np_fpn(fpn, inputs, strides)
    for k in want:
        np.testing.assert_allclose(out[k], want[k], rtol=1e-4, atol=1e-4, err_msg=k)
    np.testing.assert_array_equal(out["P6"], out["P5"][:, ::2, ::2])


def test_fpn_rejects_bad_strides():
    with pytest.raises(ValueError, match="equal or double"):
        FPN({"C2": 4, "C3": 16})
    with pytest.raises(ValueError, match="C<level>"):
        FPN({"P2": 4})


def test_fpn_level_rule_by_hand():
    # k = floor(4 + log2(sqrt(wh) / 224)), clamped to [2, 5]
    boxes = np.array([[0, 0, 224, 224], [0, 0, 223, 223], [0, 0, 112, 112], [0, 0, 111.9, 112], [10, 10, 458, 458],
                      [0, 0, 56, 56], [0, 0, 8, 8], [0, 0, 2000, 2000], [5, 5, 5, 5], [0, 0, 448, 112]], np.float32)
    want = [4, 3, 3, 2, 5, 2, 2, 5, 2, 4]  # the last: sqrt(448 · 112) = 224
    np.testing.assert_array_equal(fpn_levels(tf.constant(boxes), 2, 5).numpy(), want)
    rois = np.concatenate([np.zeros((len(boxes), 1), np.float32), boxes], axis=1)
    np.testing.assert_array_equal(fpn_levels(tf.constant(rois), 2, 6).numpy(), [4, 3, 3, 2, 5, 2, 2, 6, 2, 4])


def test_scale_rois_against_numpy():
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 100, (6, 2))
    wh = rng.uniform(1, 80, (6, 2))
    rois = np.concatenate([rng.integers(0, 3, (6, 1)), xy, xy + wh], axis=1).astype(np.float32)
    out = scale_rois(tf.constant(rois), 1.3).numpy()
    centre = xy + wh / 2
    want = np.concatenate([rois[:, :1], centre - 0.65 * wh, centre + 0.65 * wh], axis=1)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)


def _pyramid(rng, channels=3):
    strides = {"P2": 4, "P3": 8, "P4": 16, "P5": 32}
    return strides, {n: tf.constant(rng.normal(size=(2, 128 // s, 160 // s, channels)).astype(np.float32))
                     for n, s in strides.items()}


def test_multi_level_roi_align_pools_each_roi_from_its_level():
    rng = np.random.default_rng(3)
    strides, features = _pyramid(rng)
    sides = [20, 60, 150, 300, 100, 230, 10, 700]
    rois = np.array([[i % 2, 5 + i, 3 + 2 * i, 5 + i + s, 3 + 2 * i + s * 0.7] for i, s in enumerate(sides)],
                    np.float32)
    pooler = MultiLevelRoIAlign(strides, output_size=7, sampling_ratio=2, aligned=True)
    out = pooler(features, tf.constant(rois)).numpy()
    levels = np.clip(np.floor(4 + np.log2(np.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])) / 224)), 2, 5)
    assert len(set(levels.tolist())) == 4  # every level used
    for i, level in enumerate(levels.astype(int)):
        name = f"P{level}"
        want = ops.roi_align(features[name], rois[i:i + 1], 7, 1.0 / strides[name], sampling_ratio=2,
                             pooling="avg", aligned=True).numpy()[0]
        np.testing.assert_allclose(out[i], want, rtol=1e-6, atol=1e-6, err_msg=f"roi {i}")
    # level_rois: the level comes from other boxes (Double-Head: the original box of an enlarged RoI)
    small = rois.copy()
    small[:, 3:] = small[:, 1:3] + 8  # all level 2
    out = pooler(features, tf.constant(rois), level_rois=tf.constant(small)).numpy()
    want = ops.roi_align(features["P2"], rois, 7, 0.25, sampling_ratio=2, pooling="avg", aligned=True).numpy()
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
    # gradients flow back through the gather to every level used
    with tf.GradientTape() as tape:
        tape.watch(list(features.values()))
        loss = tf.reduce_sum(pooler(features, tf.constant(rois)))
    grads = tape.gradient(loss, list(features.values()))
    assert all(float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)
    # no RoI at all
    assert pooler(features, tf.zeros([0, 5])).shape == (0, 7, 7, 3)


def test_double_head_conv_head_pools_enlarged_rois_from_the_original_level():
    rng = np.random.default_rng(4)
    strides, features = _pyramid(rng, channels=8)
    # 200 px: level 3 (floor(4 + log2(200/224)) = 3); enlarged 1.3x = 260 px would be level 4
    rois = np.array([[0, 30, 20, 230, 220], [1, 10, 10, 50, 40]], np.float32)
    head = DoubleHead(4, strides, fc_channels=16, conv_channels=8, conv_mid_channels=4, conv_blocks=1,
                      non_local=True, non_local_channels=4, non_local_groups=2)
    head.outputs(features, tf.constant(rois))
    captured = {}
    original = head.blocks[0].call

    def spy(x, training=None):
        captured["x"] = x
        return original(x, training=training)
    head.blocks[0].call = spy
    head.outputs(features, tf.constant(rois), training=False)
    x1, y1, x2, y2 = rois[0, 1:]
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * 1.3, (y2 - y1) * 1.3
    enlarged = np.array([[0, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]], np.float32)
    want = ops.roi_align(features["P3"], enlarged, 7, 1.0 / 8, sampling_ratio=2, pooling="avg", aligned=True)
    np.testing.assert_allclose(captured["x"].numpy()[0], want.numpy()[0], rtol=1e-5, atol=1e-5)


def test_fused_scores_by_hand():
    fc = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
    conv = np.array([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0]], np.float32)
    want = 1 - (1 - fc) * (1 - conv)
    np.testing.assert_allclose(fuse_scores(tf.constant(fc), tf.constant(conv)).numpy(), want, rtol=1e-6)
    np.testing.assert_allclose(want[0], [0.85, 0.4, 0.325], rtol=1e-6)


def test_double_head_inference_scores_are_the_fused_softmaxes():
    rng = np.random.default_rng(5)
    strides, features = _pyramid(rng, channels=8)
    rois = tf.constant([[0, 10, 10, 90, 70], [1, 0, 5, 40, 100]], tf.float32)
    for ext in (True, False):
        head = DoubleHead(3, strides, fc_channels=16, conv_channels=8, conv_mid_channels=4, conv_blocks=2, ext=ext)
        raw = head.outputs(features, rois, training=False)
        probs, deltas = head(features, rois, training=False)
        softmax = lambda z: np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)  # noqa: E731
        fc = softmax(raw["fc_cls"].numpy())
        want = 1 - (1 - fc) * (1 - softmax(raw["conv_cls"].numpy())) if ext else fc
        np.testing.assert_allclose(probs.numpy(), want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(deltas.numpy(), raw["conv_reg"].numpy())
        assert sorted(raw) == (["conv_cls", "conv_reg", "fc_cls", "fc_reg"] if ext else ["conv_reg", "fc_cls"])
        assert raw["conv_reg"].shape == (2, 12)


def test_non_local_block_against_numpy():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 3, 4, 6)).astype(np.float32)
    block = NonLocalBlock(4, groups=2)
    block(tf.constant(x))
    for v in block.weights:  # non-zero W/γ so the non-local term shows
        v.assign(rng.uniform(0.5, 1.5, size=v.shape).astype(np.float32) if "variance" in v.name
                 else rng.normal(size=v.shape).astype(np.float32))
    out = block(tf.constant(x), training=False).numpy()
    c1 = lambda layer, t: np.einsum("bhwc,cd->bhwd", t, layer.kernel.numpy()[0, 0]) + (  # noqa: E731
        layer.bias.numpy() if layer.use_bias else 0)
    theta, phi, g = (c1(l, x).reshape(2, 12, 2, 2) for l in (block.theta, block.phi, block.g))
    y = np.zeros((2, 12, 2, 2))
    for b in range(2):
        for grp in range(2):
            y[b, :, grp] = (theta[b, :, grp] @ phi[b, :, grp].T / 12) @ g[b, :, grp]
    w = c1(block.w, y.reshape(2, 3, 4, 4))
    gamma, beta, mean, var = (v.numpy() for v in block.bn.weights)
    want = np.maximum(x + (w - mean) / np.sqrt(var + 1e-5) * gamma + beta, 0)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
    fresh = NonLocalBlock(4, groups=2)  # zero-initialised γ: starts as ReLU(x)
    np.testing.assert_allclose(fresh(tf.constant(x), training=False).numpy(), np.maximum(x, 0), atol=1e-6)


def test_double_head_losses_weigh_the_four_terms():
    rng = np.random.default_rng(7)
    r, c = 10, 4
    out = {k: tf.constant(rng.normal(size=(r, c if "cls" in k else 4 * c)).astype(np.float32))
           for k in ("fc_cls", "fc_reg", "conv_cls", "conv_reg")}
    labels = tf.constant(rng.integers(0, c, r), tf.int32)
    targets = tf.constant(rng.normal(size=(r, 4 * c)).astype(np.float32))
    valid = tf.constant(rng.uniform(size=r) < 0.8)
    term = lambda cls, reg: [float(v) for v in losses.rcnn_losses(out[cls], out[reg], labels, targets, valid)]  # noqa: E731
    fc_cls, fc_reg = term("fc_cls", "fc_reg")
    conv_cls, conv_reg = term("conv_cls", "conv_reg")
    cls, box = losses.double_head_losses(out, labels, targets, valid, weights=(0.5, 2.0, 1.4, 0.6))
    assert math.isclose(float(cls), 1.4 * fc_cls + 0.5 * conv_cls, rel_tol=1e-5)
    assert math.isclose(float(box), 2.0 * conv_reg + 0.6 * fc_reg, rel_tol=1e-5)
    plain = {k: out[k] for k in ("fc_cls", "conv_reg")}
    cls, box = losses.double_head_losses(plain, labels, targets, valid, weights=(0, 2.5, 2.0, 0))
    assert math.isclose(float(cls), 2.0 * fc_cls, rel_tol=1e-5) and math.isclose(float(box), 2.5 * conv_reg, rel_tol=1e-5)
    with pytest.raises(ValueError, match="conv_cls"):
        losses.double_head_losses(plain, labels, targets, valid, weights=(0.5, 2.0, 1.4, 0.6))


def _fpn_config(**overrides):
    fields = dict(backbone="resnet_v1_50", rpn_feature=("P2", "P3", "P4"), anchor_strides=(4, 8, 16),
                  level_anchor_scales=((8,), (8,), (8,)), head="fpn_2fc", roi_levels=("P2", "P3", "P4"))
    fields.update(overrides)
    return Config(**fields)


def test_config_checks_for_pyramids():
    assert _fpn_config().num_anchors == 3 and _fpn_config().multi_level_rpn
    with pytest.raises(ValueError, match="anchor_strides"):
        _fpn_config(anchor_strides=(4, 8))
    with pytest.raises(ValueError, match="level_anchor_scales"):
        _fpn_config(level_anchor_scales=((8,), (8, 16), (8,)))
    with pytest.raises(ValueError, match="roi_levels"):
        _fpn_config(roi_levels=None)
    with pytest.raises(ValueError, match="ohem_top_k = 0"):
        _fpn_config(head="double_head", ohem_top_k=256)
    with pytest.raises(ValueError, match="loss weights must be 0"):
        _fpn_config(head="double_head", ohem_top_k=0, double_head_ext=False)


def test_multi_level_anchors_follow_the_rpn_output_order():
    """DetNet: P4, P5 and P6 share stride 16, so their anchors sit on the same grid, differing in size."""
    from lhrcnn.detector import build_detector
    detector = build_detector("experiments/lhrcnn/detnet59.fpn.synthetic")
    features = {f"P{k}": tf.zeros([1, h, w, 1]) for k, (h, w) in
                {2: (16, 20), 3: (8, 10), 4: (4, 5), 5: (4, 5), 6: (4, 5)}.items()}
    anchors = detector.rpn.anchors(features).numpy()
    ratios = (0.5, 1.0, 2.0)
    want = np.concatenate([grid_anchors(generate_base_anchors(s, ratios, (sc,)), h, w, s).numpy() for s, sc, (h, w) in
                           zip((4, 8, 16, 16, 16), (4, 4, 4, 8, 16), ((16, 20), (8, 10), (4, 5), (4, 5), (4, 5)))])
    np.testing.assert_array_equal(anchors, want)
    # the anchor of P5's cell (y=1, x=2), ratio 1: a 128-px box centred at (2·16 + 7.5, 1·16 + 7.5)
    start = (16 * 20 + 8 * 10 + 4 * 5) * 3
    a = anchors[start + (1 * 5 + 2) * 3 + 1]
    np.testing.assert_allclose([(a[0] + a[2]) / 2, (a[1] + a[3]) / 2, a[2] - a[0] + 1], [39.5, 23.5, 128])
    # the RPN's flattened outputs have one row per anchor, in this order
    logits, deltas, _ = detector.rpn.head_outputs({k: tf.zeros([1] + v.shape[1:3] + [64]) for k, v in features.items()})
    assert logits.shape[1] * logits.shape[3] // 2 == len(anchors) and deltas.shape[3] == 12


def test_multi_scale_training_sizes(tmp_path):
    from PIL import Image

    from lhrcnn.data import DetectionDataset, ImageRecord, make_dataset
    records = []
    for i in range(12):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((40, 60, 3), i, np.uint8)).save(path)
        records.append(ImageRecord(image_id=i, path=str(path), height=40, width=60,
                                   boxes=np.array([[1.0, 2.0, 20.0, 30.0]]), classes=np.array([1])))
    dataset = DetectionDataset(records=records, class_names=("background", "a"), category_ids=[-1, 1],
                               annotation_file="t.json")
    config = Config(image_short_size=(16, 24, 32), image_max_size=(100, 100, 40), size_divisor=8, box_offset=0.0)
    heights = []
    for seed in (1, 1, 2):
        data = make_dataset(dataset, config, training=True, batch_size=1, seed=seed, repeat=False)
        heights.append([float(b["image_info"][0, 0]) for b in data])
    assert heights[0] == heights[1] and heights[0] != heights[2]  # reproducible per seed
    assert set(heights[0]) <= {16.0, 24.0, 27.0} and len(set(heights[0])) >= 2  # 32 short is capped by max 40
    with pytest.raises(ValueError, match="same length"):
        make_dataset(dataset, Config(image_short_size=(16, 24), image_max_size=(100,)), training=True, batch_size=1)


def test_width_divisor_divides_every_width():
    full = build_backbone("detnet59")
    quarter = build_backbone("detnet59", width_divisor=4)
    assert {k: v // 4 for k, v in full.feature_channels.items()} == quarter.feature_channels
    assert quarter.output["C6"].shape[-1] == 256
    r50 = build_backbone("resnet_v1_50", width_divisor=4, dilate_block4=False)
    assert r50.feature_channels == {"C2": 64, "C3": 128, "C4": 256, "C5": 512}
    assert r50.feature_strides["C5"] == 32
    with pytest.raises(ValueError, match="width_divisor"):
        build_backbone("resnet_v1_50", width_divisor=3)


def test_double_head_multiply_adds_per_roi_by_hand():
    """The official head (up-channel block, [non-local -> bottleneck] x 2, Ext) on 256-channel
    levels, counted by hand per RoI (docs/models.md#conv-head: ≈ 0.37 GMAC/RoI)."""
    from lhrcnn.flops import count_macs
    strides = {"P2": 4, "P3": 8, "P4": 16, "P5": 32}
    head = DoubleHead(81, strides, conv_blocks=2, non_local=True)
    specs = {n: tf.TensorSpec([1, 256 // s, 256 // s, 256]) for n, s in strides.items()}
    macs, by_op, unknown = count_macs(lambda f, r: head.outputs(f, r, training=False), specs,
                                      tf.TensorSpec([10, 5]))
    assert not unknown
    up = 49 * 9 * 256 * 256 + 2 * 49 * 256 * 1024
    non_local = 3 * 49 * 1024 * 512 + 2 * 49 * 49 * 512 + 49 * 512 * 1024
    bottleneck = 49 * 1024 * 256 + 49 * 9 * 256 * 256 + 49 * 256 * 1024
    conv_head = up + 2 * (non_local + bottleneck) + 1024 * (81 + 4 * 81)
    fc_head = 7 * 7 * 256 * 1024 + 1024 * 1024 + 1024 * (81 + 4 * 81)
    assert macs == 10 * (conv_head + fc_head), (macs, by_op)
    assert 0.37e9 < conv_head < 0.38e9
