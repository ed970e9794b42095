"""TF1 checkpoint conversion (lhrcnn/convert/tf1.py, scripts/convert_tf1.py, scripts/train.py
--init-checkpoint) against the original network built as a TF1 graph (tests/support/tf1_original.py,
written from the network, checkpoint and box sections of docs/original.md): random weights,
non-trivial BN statistics, the full set of checkpoint tensors; the converted TF2 detector must
reproduce the graph's C4, C5, RPN outputs, thin feature map (or R-FCN score maps), head outputs
for given RoIs and the final detections within 1e-4 relative error. Mismatching checkpoints are
errors naming the tensors."""
import importlib.util
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

from lhrcnn.config import load_config
from lhrcnn.convert import tf1 as convert_tf1
from lhrcnn.detector import build_detector, load_detector
from tf1_original import OriginalNetwork, postprocess_detections

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PS_ALIGN = os.path.join(ROOT, "experiments/lizeming/light_head_rcnn.ori_res101.coco.ps_roialign")
PS_POOL = os.path.join(ROOT, "experiments/lizeming/light_head_rcnn.ori_res101.coco")
RFCN = os.path.join(ROOT, "experiments/lizeming/rfcn_reproduce.ori_res101.coco.baseline")
XCEPTION = os.path.join(ROOT, "experiments/geonseoks/light_head_rcnn.xception_star.coco")
SYNTHETIC = os.path.join(ROOT, "experiments/lhrcnn/light_head_rcnn.xception_star.synthetic")
CONVERT_PY = os.path.join(ROOT, "scripts/convert_tf1.py")
TRAIN_PY = os.path.join(ROOT, "scripts/train.py")

H, W = 64, 96
IMAGE = np.random.default_rng(7).normal(0, 50, (1, H, W, 3)).astype(np.float32)
INFO_TF1 = np.array([[H, W, 2.0, 32, 48, 0]], np.float32)  # resized 64x96 from a 32x48 image
INFO = tf.constant(INFO_TF1[:, :5])
ROIS = np.array([[0, 1.3, 2.7, 50.2, 60.9], [0, 10.5, 10.1, 90.7, 63.2], [0, 0.4, 0.2, 5.3, 5.6],
                 [0, 30.2, 5.5, 70.9, 40.1], [0, 47.7, 20.3, 95.1, 62.8]], np.float32)


def assert_close(actual, expected, rel=1e-4, what=""):
    """Relative error: |actual - expected| <= rel·(|expected| + max|expected|)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = max(float(np.max(np.abs(expected))), 1e-6)
    np.testing.assert_allclose(actual, expected, rtol=rel, atol=rel * scale, err_msg=what)


def compare_with_tf1(net, detector, nms):
    """The TF2 detector against the TF1 graph on IMAGE: features, RPN outputs, proposals, the map
    the RoIs are pooled from, head outputs for ROIS, detections (test.py's post-processing).

    With PS-RoI-Align the detections are compared end to end (the TF1 graph's own proposals).
    PSROIPool rounds RoI corners to whole pixels, so a 1e-5 float difference in a proposal can
    legitimately change a pooled bin there; its detections are compared on the TF2 proposals
    fed to the TF1 head (the proposals themselves are compared to the graph's just before)."""
    light = net.head == "light_head"
    ref = net.run(["C2", "C3", "C4", "C5", "rpn_cls_score", "rpn_bbox_pred", "rois", "cls_prob", "bbox_pred",
                   "ps_fm" if light else "rfcn_cls"] + ([] if light else ["rfcn_bbox"]), IMAGE, INFO_TF1)
    ref_head = net.run(["cls_score", "bbox_fc"], IMAGE, INFO_TF1, rois=ROIS)
    features = detector.backbone(IMAGE, training=False)
    for name in ("C2", "C3", "C4", "C5"):
        assert_close(features[name], ref[name], what=name)
    logits, deltas, _ = detector.rpn.head_outputs(features)
    assert_close(logits, ref["rpn_cls_score"], what="rpn_cls_score")
    assert_close(deltas, ref["rpn_bbox_pred"], what="rpn_bbox_pred")
    rois, _, valid = detector.rpn.proposals(logits, deltas, detector.rpn.anchors(features), INFO,
                                            training_counts=False)  # what call() runs
    rois = rois.numpy()[valid.numpy()]
    assert len(ref["rois"]) > 20
    assert_close(rois, ref["rois"], what="proposals")  # same boxes, same (descending score) order
    if light:
        assert_close(detector.roi_heads.head_input(features), ref["ps_fm"], what="thin feature map")
    else:
        cls_map, bbox_map = detector.roi_heads.box_head.score_maps(features["C5"])
        assert_close(cls_map, ref["rfcn_cls"], what="rfcn_cls")
        assert_close(bbox_map, ref["rfcn_bbox"], what="rfcn_bbox")
    class_logits, box_deltas = detector.roi_heads.predict_boxes(features, tf.constant(ROIS))
    assert_close(class_logits, ref_head["cls_score"], what="cls_score")
    assert_close(box_deltas, ref_head["bbox_fc"], what="bbox_fc")

    out = detector({"images": tf.constant(IMAGE), "image_info": INFO})
    if net.pooling != "ps_roi_align":
        ref = dict(net.run(["cls_prob", "bbox_pred"], IMAGE, INFO_TF1, rois=rois), rois=rois)
    expected = canonical(*postprocess_detections(ref["cls_prob"], ref["bbox_pred"], ref["rois"], INFO_TF1[0], nms))
    n = int(out["num_detections"][0])
    got = canonical(out["boxes"][0, :n].numpy(), out["scores"][0, :n].numpy(), out["classes"][0, :n].numpy())
    assert n == len(expected[1]) == 100
    assert_close(got[0], expected[0], what="detection boxes")
    assert_close(got[1], expected[1], what="detection scores")
    np.testing.assert_array_equal(got[2], expected[2])
    return ref_head


def canonical(boxes, scores, classes):
    """Detections by descending score; exactly tied scores (PSROIPool) by box."""
    order = np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], -scores))
    return boxes[order], scores[order], classes[order]


def rewrite_checkpoint(source, prefix, names=None, drop=(), replace=None, add=None):
    """A copy of checkpoint `source` (only `names`, when given) without `drop`, with `replace` and
    `add` tensors, written with SaveV2."""
    reader = tf.train.load_checkpoint(source)
    names = names if names is not None else reader.get_variable_to_shape_map()
    tensors = {n: reader.get_tensor(n) for n in names if n not in drop}
    tensors.update(replace or {})
    tensors.update(add or {})
    keys = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=keys, shape_and_slices=[""] * len(keys),
                      tensors=[tensors[k] for k in keys])
    return prefix


def run_script(script, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def reference_r101_tensors():
    """docs/original.md#model-variables and #training-state written out: the 540 model tensors with
    shapes, and the 113 trainable."""
    shapes, trainable = {}, set()

    def conv_bn(scope, shape, train):
        shapes[f"{scope}/weights"] = list(shape)
        if train:
            trainable.add(f"{scope}/weights")
        for v in ("beta", "gamma", "moving_mean", "moving_variance"):
            shapes[f"{scope}/BatchNorm/{v}"] = [shape[3]]

    conv_bn("resnet_v1_101/conv1", (7, 7, 3, 64), False)
    depth_in = 64
    for b, (units, depth, bottleneck) in enumerate(((3, 256, 64), (4, 512, 128), (23, 1024, 256), (3, 2048, 512)), 1):
        for u in range(1, units + 1):
            scope = f"resnet_v1_101/block{b}/unit_{u}/bottleneck_v1"
            if u == 1:
                conv_bn(f"{scope}/shortcut", (1, 1, depth_in, depth), b > 1)
            conv_bn(f"{scope}/conv1", (1, 1, depth_in if u == 1 else depth, bottleneck), b > 1)
            conv_bn(f"{scope}/conv2", (3, 3, bottleneck, bottleneck), b > 1)
            conv_bn(f"{scope}/conv3", (1, 1, bottleneck, depth), b > 1)
        depth_in = depth
    head = {"rpn_conv/3x3": [3, 3, 1024, 512], "rpn_cls_score": [1, 1, 512, 30], "rpn_bbox_pred": [1, 1, 512, 60],
            "conv_new_1_conv15_w_pre": [15, 1, 2048, 256], "conv_new_1_conv15_w": [1, 15, 256, 490],
            "conv_new_1_conv15_h_pre": [1, 15, 2048, 256], "conv_new_1_conv15_h": [15, 1, 256, 490],
            "ps_fc_1": [490, 2048], "cls_fc": [2048, 81], "bbox_fc": [2048, 324]}
    for scope, shape in head.items():
        shapes[f"resnet_v1_101/{scope}/weights"] = shape
        shapes[f"resnet_v1_101/{scope}/biases"] = shape[-1:]
        trainable |= {f"resnet_v1_101/{scope}/weights", f"resnet_v1_101/{scope}/biases"}
    return shapes, trainable


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(autouse=True)
def remove_checkpoints_after_the_test(request):
    """The checkpoints here are large (up to 0.8 GB): a test's tmp_path is removed after it."""
    folder = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def r101(tmp_path_factory):
    """The ps_roialign network in TF1 with its full training checkpoint (768 tensors)."""
    net = OriginalNetwork("resnet_v1_101", "light_head", "ps_roi_align", seed=1)
    folder = tmp_path_factory.mktemp("tf1_r101")
    yield net, net.save(str(folder / "epoch_26.ckpt"))
    net.session.close()
    shutil.rmtree(folder)


@pytest.fixture(scope="module")
def xception(tmp_path_factory):
    """geonseoks' Xception* Light-Head in TF1 with its training state."""
    net = OriginalNetwork("xception_star", "light_head", "ps_roi_align", rpn_channels=256, mid_channels=64, seed=3)
    folder = tmp_path_factory.mktemp("tf1_xception")
    yield net, net.save(str(folder / "epoch_30.ckpt"))
    net.session.close()
    shutil.rmtree(folder)


@pytest.fixture(scope="module")
def imagenet_r101(tmp_path_factory):
    """The slim ImageNet ResNet-v1-101: backbone, logits, int64 global_step (V2 format)."""
    net = OriginalNetwork("resnet_v1_101", head=None, seed=5)
    folder = tmp_path_factory.mktemp("imagenet_r101")
    yield net, net.save(str(folder / "resnet_v1_101.ckpt"))
    net.session.close()
    shutil.rmtree(folder)


# ----------------------------------------------------------------------------- tables

def test_tables_name_exactly_the_tensors_of_reference_section_4(r101):
    shapes, trainable = reference_r101_tensors()
    assert len(shapes) == 540 and len(trainable) == 113
    assert sum(int(np.prod(s)) for s in shapes.values()) == 68_699_523
    for experiment in (PS_ALIGN, PS_POOL):
        table = convert_tf1.detector_table(build_detector(experiment))
        assert {e.source for e in table} == set(shapes) and len(table) == 540
        assert {e.source for e in table if e.trainable} == trainable
    # the TF1 graph of tests/support/tf1_original.py has the same variables, so it tests these names
    net, prefix = r101
    assert net.model_variables == shapes and net.trainable_names == trainable
    saved = dict(tf.train.list_variables(prefix))
    assert len(saved) == 768
    assert {n for n in saved if n.endswith("/Momentum")} == {f"{n}/Momentum" for n in trainable}
    assert {n for n in saved if n.endswith("/ExponentialMovingAverage")} == \
        {f"{n}/ExponentialMovingAverage" for n in trainable}
    reader = tf.train.load_checkpoint(prefix)
    assert reader.get_variable_to_dtype_map()["global_step"] == tf.float32 and "Variable" in saved

    rfcn = convert_tf1.detector_table(build_detector(RFCN))
    head = {e.source for e in rfcn} - {n for n in shapes if "/block" in n or "/conv1/" in n}
    assert head == {f"resnet_v1_101/{s}/{v}" for s in ("rpn_conv/3x3", "rpn_cls_score", "rpn_bbox_pred", "conv_new_1",
                                                        "rfcn_cls", "rfcn_bbox") for v in ("weights", "biases")}
    xception = convert_tf1.detector_table(build_detector(XCEPTION))
    dws = [e for e in xception if "/dws_conv2/" in e.source]
    assert len(dws) == 16 * 3 and all(e.trainable for e in dws)  # trainable even in the frozen block1
    assert all(e.source.startswith("resnet_v1_xception/") for e in xception)


def test_table_targets_are_structural_paths_not_generated_names():
    """A second detector built in the same process gets uniquified Keras names
    (detector/rpn/rpn_head_1/...); the table still finds each variable at its place."""
    first, second = build_detector(XCEPTION), build_detector(XCEPTION)
    renamed = 0
    for entry in convert_tf1.detector_table(second):
        a, b = convert_tf1.resolve(first, entry.target), convert_tf1.resolve(second, entry.target)
        assert a is not b and a.shape == b.shape and a.name.split("/")[-1] == b.name.split("/")[-1]
        renamed += a.name != b.name
    assert renamed > 0
    with pytest.raises(ValueError, match="no layer or attribute 'nope'"):
        convert_tf1.resolve(first, "roi_heads/box_head/nope/kernel")


# ----------------------------------------------------------------------------- the original's checkpoints

def test_ps_roialign_checkpoint_reproduces_the_tf1_graph(r101, tmp_path):
    net, prefix = r101
    out = tmp_path / "converted"
    written, report = convert_tf1.convert(prefix, PS_ALIGN, str(out))
    assert report.part == "detector" and len(report.mapped) == 540 and report.parameters == 68_699_523
    skipped = {reason: len(names) for reason, names in report.skipped.items()}
    assert sorted(skipped.values()) == [1, 1, 113, 113] and sum(skipped.values()) == 228
    assert sorted(os.listdir(out)) == ["checkpoint", "conversion.json", "converted-0.data-00000-of-00001",
                                       "converted-0.index"]
    assert sorted(os.listdir(tmp_path)) == ["converted"]  # no temporary folder left
    detector = load_detector(PS_ALIGN, checkpoint=str(out))
    compare_with_tf1(net, detector, nms=0.5)

    from lhrcnn.paths import resolve_checkpoint  # what scripts/test.py --checkpoint does
    assert resolve_checkpoint(str(out)) == written


def test_ps_roialign_checkpoint_in_the_ps_roi_pool_experiment(r101, tmp_path):
    """light_head_rcnn.ori_res101.coco has the same variables: its TF1 graph (PSROIPool) restored
    from the same checkpoint is reproduced by the converted ps_roi_pool detector."""
    _, prefix = r101
    net = OriginalNetwork("resnet_v1_101", "light_head", "ps_roi_pool", training_state=False, checkpoint=prefix)
    try:
        detector = build_detector(PS_POOL)
        report = convert_tf1.load_tf1_checkpoint(detector, prefix)
        assert len(report.mapped) == 540
        compare_with_tf1(net, detector, nms=0.3)
    finally:
        net.session.close()


def test_ema_weights_reproduce_the_tf1_graph_with_its_shadows(r101):
    net, prefix = r101
    detector = build_detector(PS_ALIGN)
    report = convert_tf1.load_tf1_checkpoint(detector, prefix, weights="ema")
    shadows = [name for name, _, _ in report.mapped if name.endswith("/ExponentialMovingAverage")]
    assert len(report.mapped) == 540 and len(shadows) == 113
    assert len(report.skipped["raw weights (EMA shadows used instead)"]) == 113
    reader = tf.train.load_checkpoint(prefix)
    name = "resnet_v1_101/block4/unit_2/bottleneck_v1/conv2/weights"
    kernel = detector.backbone.get_layer("block4_unit2_conv2").kernel.numpy()
    np.testing.assert_array_equal(kernel, reader.get_tensor(name + "/ExponentialMovingAverage"))
    assert not np.allclose(kernel, reader.get_tensor(name))
    net.restore_ema(prefix)  # the TF1 way to evaluate EMA weights: Saver(ema.variables_to_restore())
    try:
        compare_with_tf1(net, detector, nms=0.5)
    finally:
        net.restore(prefix)


def test_missing_tensor_is_an_error_naming_it_and_nothing_is_written(r101, tmp_path):
    _, prefix = r101
    missing = "resnet_v1_101/block3/unit_7/bottleneck_v1/conv2/BatchNorm/moving_variance"
    model_tensors = [n for n, _ in tf.train.list_variables(prefix) if "/Momentum" not in n
                     and "/ExponentialMovingAverage" not in n and n not in ("global_step", "Variable")]
    broken = rewrite_checkpoint(prefix, str(tmp_path / "broken.ckpt"), names=model_tensors, drop=[missing])
    out = tmp_path / "converted"
    with pytest.raises(ValueError) as error:
        convert_tf1.convert(broken, PS_ALIGN, str(out))
    message = str(error.value)
    assert missing in message and "1 tensor(s) the table needs are not in the checkpoint" in message
    assert sorted(os.listdir(tmp_path)) == ["broken.ckpt.data-00000-of-00001", "broken.ckpt.index"]


def test_rfcn_baseline_checkpoint_reproduces_the_tf1_graph(tmp_path):
    net = OriginalNetwork("resnet_v1_101", "rfcn", "ps_roi_pool", seed=2)
    try:
        prefix = net.save(str(tmp_path / "epoch_26.ckpt"))
        assert len(tf.train.list_variables(prefix)) == 532 + 2 * 105 + 2
        out = tmp_path / "converted"
        _, report = convert_tf1.convert(prefix, RFCN, str(out))
        assert len(report.mapped) == 532 and sum(map(len, report.skipped.values())) == 212
        compare_with_tf1(net, load_detector(RFCN, checkpoint=str(out)), nms=0.3)
    finally:
        net.session.close()


# ----------------------------------------------------------------------------- ImageNet backbones

def backbone_features_match(net, detector):
    ref = net.run(["C2", "C3", "C4", "C5"], IMAGE)
    features = detector.backbone(IMAGE, training=False)
    for name, value in ref.items():
        assert_close(features[name], value, what=name)


def test_imagenet_resnet_v1_50_v1_format_checkpoint_gives_the_tf1_features(tmp_path):
    net = OriginalNetwork("resnet_v1_50", head=None, seed=4)
    try:
        prefix = net.save(str(tmp_path / "resnet_v1_50.ckpt"), version="V1")  # the 2016 single-file format
        assert os.path.isfile(prefix) and not os.path.exists(prefix + ".index")
        assert tf.train.load_checkpoint(prefix).get_variable_to_dtype_map()["global_step"] == tf.int64
        detector = build_detector(PS_ALIGN, backbone="resnet_v1_50")
        head_before = detector.roi_heads.box_head.fc.kernel.numpy()
        report = convert_tf1.load_tf1_checkpoint(detector, prefix)
        assert report.part == "backbone" and len(report.mapped) == 5 * 53 == len(detector.backbone.variables)
        assert sorted(n for names in report.skipped.values() for n in names) == \
            ["global_step", "resnet_v1_50/logits/biases", "resnet_v1_50/logits/weights"]
        np.testing.assert_array_equal(detector.roi_heads.box_head.fc.kernel.numpy(), head_before)
        backbone_features_match(net, detector)
    finally:
        net.session.close()


def test_imagenet_resnet_v1_101_checkpoint_gives_the_tf1_features_and_initialises_training(imagenet_r101, tmp_path):
    net, prefix = imagenet_r101
    out = tmp_path / "init"
    written, report = convert_tf1.convert(prefix, PS_ALIGN, str(out))
    assert report.part == "backbone" and len(report.mapped) == 520
    with pytest.raises(ValueError, match="does not match the model"):  # a backbone alone is no detector
        load_detector(PS_ALIGN, checkpoint=str(out))
    from lhrcnn.train.checkpoints import initialize_from  # scripts/train.py --init-checkpoint with it
    detector = build_detector(PS_ALIGN)
    head_before = detector.rpn.head.conv.kernel.numpy()
    initialize_from(detector, str(out))
    np.testing.assert_array_equal(detector.rpn.head.conv.kernel.numpy(), head_before)
    backbone_features_match(net, detector)

    with pytest.raises(ValueError) as error:  # an ImageNet checkpoint has no EMA shadows
        convert_tf1.load_tf1_checkpoint(build_detector(PS_ALIGN), prefix, weights="ema")
    assert "resnet_v1_101/block2/unit_1/bottleneck_v1/conv1/weights/ExponentialMovingAverage" in str(error.value)
    with pytest.raises(ValueError) as error:  # the ResNet-101 weights do not fit a ResNet-50 experiment
        convert_tf1.load_tf1_checkpoint(build_detector(PS_ALIGN, backbone="resnet_v1_50"), prefix)
    assert "expects 'resnet_v1_50'" in str(error.value) and "['resnet_v1_101']" in str(error.value)


def _import_train_script():
    spec = importlib.util.spec_from_file_location("lhrcnn_scripts_train", TRAIN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_script_initialises_the_backbone_from_a_tf1_imagenet_checkpoint(imagenet_r101, monkeypatch):
    """scripts/train.py --init-checkpoint resnet_v1_101.ckpt: the TF1 checkpoint goes through the
    table into the trainer's detector; a run that resumes from its own checkpoint ignores it."""
    from absl import flags
    net, prefix = imagenet_r101
    trainers = []

    class RecordingTrainer:  # stands in for lhrcnn.train.trainer.Trainer: builds the detector, does not train
        def __init__(self, experiment_dir, *, init_checkpoint=None, **kwargs):
            self.detector = build_detector(experiment_dir)
            self.init_checkpoint, self.trained = init_checkpoint, False
            latest = "model_dump/ckpt-5" if trainers else None  # the second run resumes
            self.checkpoints = types.SimpleNamespace(latest=lambda: latest)
            trainers.append(self)

        def train(self):
            self.trained = True

    monkeypatch.setattr("lhrcnn.train.trainer.Trainer", RecordingTrainer)
    script = _import_train_script()
    try:
        for _ in range(2):
            flags.FLAGS.unparse_flags()
            flags.FLAGS(["train.py", f"--experiment={PS_ALIGN}", f"--init_checkpoint={prefix}"])
            script.main([])
    finally:
        flags.FLAGS.unparse_flags()
    first, resumed = trainers
    assert first.trained and first.init_checkpoint is None  # not handed to the TF2 path
    backbone_features_match(net, first.detector)
    name = "resnet_v1_101/block3/unit_2/bottleneck_v1/conv1/weights"
    kernel = tf.train.load_checkpoint(prefix).get_tensor(name)
    np.testing.assert_array_equal(first.detector.backbone.get_layer("block3_unit2_conv1").kernel.numpy(), kernel)
    assert resumed.trained and not np.array_equal(
        resumed.detector.backbone.get_layer("block3_unit2_conv1").kernel.numpy(), kernel)


# ----------------------------------------------------------------------------- Xception*

def test_xception_star_checkpoint_through_the_script_reproduces_the_tf1_graph(xception, tmp_path):
    net, prefix = xception
    assert len(net.trainable_names) == 17 + 9 + 48 + 20  # block2-3 convs, every dws_conv2, the head
    out = tmp_path / "converted"
    proc = run_script(CONVERT_PY, "--checkpoint", prefix, "--experiment", XCEPTION, "--output", out)
    assert proc.returncode == 0, proc.stderr
    mapped = len(net.model_variables)
    assert f"{mapped} tensors mapped" in proc.stdout and "94  optimizer slots (/Momentum)" in proc.stdout
    detector = load_detector(XCEPTION, checkpoint=str(out))
    ref_head = compare_with_tf1(net, detector, nms=0.5)

    # A layout check that can fail: ps_fc_1 rows permuted from the (ph, pw, k) flatten order of
    # the TF1 graph to (k, ph, pw) no longer reproduce it, so no permutation is the right one.
    fc = detector.roi_heads.box_head.fc
    kernel = fc.kernel.numpy()
    fc.kernel.assign(kernel.reshape(7, 7, 10, -1).transpose(2, 0, 1, 3).reshape(490, -1))
    class_logits, _ = detector.roi_heads.predict_boxes(detector.backbone(IMAGE), tf.constant(ROIS))
    error = np.max(np.abs(class_logits.numpy() - ref_head["cls_score"])) / np.max(np.abs(ref_head["cls_score"]))
    assert error > 1e-2


def test_xception_star_ema_through_the_script(xception, tmp_path):
    net, prefix = xception
    out = tmp_path / "ema"
    proc = run_script(CONVERT_PY, "--checkpoint", prefix, "--experiment", XCEPTION, "--output", out, "--weights", "ema")
    assert proc.returncode == 0, proc.stderr
    detector = load_detector(XCEPTION, checkpoint=str(out))
    net.restore_ema(prefix)
    try:
        compare_with_tf1(net, detector, nms=0.5)
    finally:
        net.restore(prefix)


def test_mismatching_checkpoints_are_errors_naming_the_tensors(xception, tmp_path):
    _, prefix = xception
    reader = tf.train.load_checkpoint(prefix)
    wrong = "resnet_v1_xception/block2/unit_3/bottleneck_v1/dws_conv2/pointwise_weights"
    extra = "resnet_v1_xception/conv_new_2/weights"
    bad = rewrite_checkpoint(prefix, str(tmp_path / "bad.ckpt"), replace={wrong: reader.get_tensor(wrong)[..., :100]},
                             add={extra: np.zeros([3], np.float32), extra + "/Momentum": np.zeros([3], np.float32)})
    out = tmp_path / "out"
    proc = run_script(CONVERT_PY, "--checkpoint", bad, "--experiment", XCEPTION, "--output", out)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{wrong} float32[1, 1, 144, 100] (model backbone/block2_unit3_dws_conv2/pointwise_kernel " \
           f"[1, 1, 144, 144])" in proc.stderr
    assert "2 checkpoint tensor(s) are unknown" in proc.stderr and extra in proc.stderr
    assert not out.exists()

    # An experiment that differs from the original's network: the synthetic one's thin-map BN.
    with pytest.raises(ValueError) as error:
        convert_tf1.load_tf1_checkpoint(build_detector(SYNTHETIC, class_names=load_config(XCEPTION).class_names),
                                        prefix)
    assert "4 model variable(s) have no entry" in str(error.value) and "conv_new_1_bn/gamma" in str(error.value)

    proc = run_script(CONVERT_PY, "--checkpoint", tmp_path / "nothing.ckpt", "--experiment", XCEPTION, "--output", out)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == (
        f"error: checkpoint {tmp_path / 'nothing.ckpt'} does not exist (expected {tmp_path / 'nothing.ckpt'}.index, "
        f"a V1 checkpoint file, or a folder of checkpoints)")
    out.mkdir()
    (out / "keep.txt").write_text("x")
    proc = run_script(CONVERT_PY, "--checkpoint", prefix, "--experiment", XCEPTION, "--output", out)
    assert proc.returncode == 1 and "already exists" in proc.stderr and os.listdir(out) == ["keep.txt"]
