"""ThunderNet's modules against NumPy: the Context Enhancement Module, the Spatial Attention
Module and the compressed RPN head."""
import os

import numpy as np
import tensorflow as tf

from lhrcnn.heads.compressed_rpn import CompressedRPNHead
from lhrcnn.heads.sam import SpatialAttention
from lhrcnn.necks.cem import ContextEnhancement

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _conv1x1(x, kernel, bias=None):
    y = np.einsum("bhwc,cd->bhwd", x, kernel[0, 0])
    return y if bias is None else y + bias


def test_cem_against_numpy():
    rng = np.random.default_rng(0)
    c4 = rng.normal(size=(2, 7, 9, 6)).astype(np.float32)   # odd: the upsampled C5 is cropped
    c5 = rng.normal(size=(2, 4, 5, 10)).astype(np.float32)
    cem = ContextEnhancement(channels=12)
    out = cem(tf.constant(c4), tf.constant(c5)).numpy()
    for layer in (cem.c4, cem.c5, cem.glb):  # non-zero biases, so each term is checked
        layer.bias.assign(rng.normal(size=12).astype(np.float32))
    out = cem(tf.constant(c4), tf.constant(c5)).numpy()
    k4, b4 = cem.c4.kernel.numpy(), cem.c4.bias.numpy()
    k5, b5 = cem.c5.kernel.numpy(), cem.c5.bias.numpy()
    kg, bg = cem.glb.kernel.numpy(), cem.glb.bias.numpy()
    up = _conv1x1(c5, k5, b5).repeat(2, axis=1).repeat(2, axis=2)[:, :7, :9]
    glb = _conv1x1(c5.mean(axis=(1, 2), keepdims=True), kg, bg)
    want = _conv1x1(c4, k4, b4) + up + glb
    assert out.shape == (2, 7, 9, 12)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_sam_against_numpy():
    rng = np.random.default_rng(1)
    cem = rng.normal(size=(1, 5, 6, 8)).astype(np.float32)
    rpn = rng.normal(size=(1, 5, 6, 4)).astype(np.float32)
    sam = SpatialAttention(channels=8)
    sam(tf.constant(cem), tf.constant(rpn))
    gamma, beta = rng.normal(size=8).astype(np.float32), rng.normal(size=8).astype(np.float32)
    mean, var = rng.normal(size=8).astype(np.float32), rng.uniform(0.5, 2, size=8).astype(np.float32)
    for v, value in zip(sam.bn.weights, (gamma, beta, mean, var)):
        v.assign(value)
    out = sam(tf.constant(cem), tf.constant(rpn), training=False).numpy()
    theta = _conv1x1(rpn, sam.theta.kernel.numpy())
    normed = (theta - mean) / np.sqrt(var + 1e-5) * gamma + beta
    np.testing.assert_allclose(out, cem / (1 + np.exp(-normed)), rtol=1e-5, atol=1e-6)
    # the gradient reaches the RPN feature (the paper: R-CNN gradients stabilise the RPN)
    rpn_t = tf.constant(rpn)
    with tf.GradientTape() as tape:
        tape.watch(rpn_t)
        loss = tf.reduce_sum(sam(tf.constant(cem), rpn_t, training=False))
    assert float(tf.reduce_sum(tf.abs(tape.gradient(loss, rpn_t)))) > 0


def test_compressed_rpn_shapes_and_layers():
    head = CompressedRPNHead(num_anchors=25)
    logits, deltas, hidden = head.call_with_hidden(tf.zeros([2, 20, 20, 245]))
    assert tuple(logits.shape) == (2, 20, 20, 50) and tuple(deltas.shape) == (2, 20, 20, 100)
    assert tuple(hidden.shape) == (2, 20, 20, 256)
    assert head.dw.depthwise_kernel.shape == (5, 5, 245, 1) and head.pw.kernel.shape == (1, 1, 245, 256)
    assert not head.dw.use_bias and not head.pw.use_bias


THUNDERNET = os.path.join(ROOT, "experiments/lhrcnn/thundernet.snet146.synthetic")


def test_thundernet_detector_wiring():
    """CEM before the RPN, the compressed RPN's feature into SAM, SAM as the thin map: one
    training step's gradients reach every trainable variable, and the R-CNN loss alone reaches
    the RPN trunk through SAM (the paper's point); inference gives padded detections."""
    from lhrcnn.detector import build_detector
    from batches import tiny_batch as _tiny_batch
    tf.keras.utils.set_random_seed(0)
    detector = build_detector(THUNDERNET, train_rpn_pre_nms_top_n=300, train_rpn_post_nms_top_n=32)
    c = detector.config
    assert c.num_anchors == 25 and detector.backbone.name == "snet146"
    batch = _tiny_batch(0, 128)
    features = detector.features(batch["images"])
    logits, deltas, hidden = detector.rpn.head_outputs(features, training=False)
    assert tuple(features["CEM"].shape) == (2, 8, 8, 245) and tuple(hidden["CEM"].shape) == (2, 8, 8, 256)
    assert tuple(logits.shape) == (2, 8, 8, 50) and tuple(deltas.shape) == (2, 8, 8, 100)
    proposals, _ = detector.rpn(features, batch["image_info"])
    thin = detector.roi_heads.head_input(features, proposals)
    np.testing.assert_allclose(thin.numpy(), detector.roi_heads.thin_map.call(features["CEM"], hidden["CEM"]).numpy(),
                               rtol=1e-6)
    with tf.GradientTape(persistent=True) as tape:
        losses = detector.compute_losses(batch, training=True)
    grads = tape.gradient(losses["total"], detector.trainable_variables)
    assert all(g is not None for g in grads)
    rpn_trunk = [v for v in detector.trainable_variables if "rpn_pw" in v.name or "rpn_dw" in v.name]
    assert rpn_trunk
    rcnn_only = tape.gradient(losses["rcnn_cls"], rpn_trunk)
    assert all(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in rcnn_only)
    out = detector({"images": batch["images"], "image_info": batch["image_info"]})
    assert tuple(out["boxes"].shape) == (2, c.test_max_detections, 4)
    fc = detector.roi_heads.box_head.fc
    assert fc.kernel.shape == (245, 1024)  # 7 x 7 x 5 pooled -> one fc 1024


def test_thundernet_detector_multiply_adds_by_hand_and_against_the_paper():
    """SNet49 ThunderNet at 320x320 with COCO's 81 classes and 200 test RoIs: everything after the
    backbone counted by hand (C4 20x20x120, C5 = conv5 10x10x512), and the whole detector against
    the paper's 262 MFLOPs, which it matches with a shared (class-agnostic) box regressor."""
    from lhrcnn import flops
    exp = os.path.join(ROOT, "experiments/lhrcnn/thundernet.snet49.coco")
    result = flops.detector_complexity(exp)
    assert not result["unknown"] and result["input"] == "320x320" and result["rois"] == 200
    cem = 400 * 120 * 245 + 100 * 512 * 245 + 512 * 245
    rpn = 400 * 25 * 245 + 400 * 245 * 256 + 400 * 256 * (2 * 25 + 4 * 25)
    sam = 400 * 256 * 245
    head = 200 * (245 * 1024 + 1024 * 81 + 1024 * 4 * 81)
    assert result["macs"] - result["backbone_macs"] == cem + rpn + sam + head
    agnostic = flops.detector_complexity(exp, class_specific_regression=False)
    assert result["macs"] - agnostic["macs"] == 200 * 1024 * 4 * 80
    assert abs(agnostic["macs"] / 262e6 - 1) < 0.02, agnostic["macs"]


def test_flops_script_with_config_overrides(tmp_path):
    import json
    import subprocess
    import sys
    out = tmp_path / "flops.json"
    cmd = [sys.executable, os.path.join(ROOT, "scripts/flops.py"), "--experiment",
           os.path.join(ROOT, "experiments/lhrcnn/thundernet.snet49.coco"), "--set", "test_rpn_post_nms_top_n=100",
           "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(100 RoIs) at 320x320" in proc.stdout and json.loads(out.read_text())["rois"] == 100
    proc = subprocess.run(cmd[:-2] + ["--set", "test_rpn_post_nms_top_n"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "FIELD=VALUE" in proc.stderr
    proc = subprocess.run(cmd[:4] + ["--set", "no_such_field=1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "unknown config field 'no_such_field'" in proc.stderr
