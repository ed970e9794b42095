"""SavedModel export: in-graph preprocessing against the eval path, the version
folder's layout and atomic write, the graph's ops, the stock-op export loaded and run in a process
that never imports lhrcnn (compared with the in-process detector), the custom-op export failing
to load without the op library and working with it, and scripts/export.py."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import export_fixtures as fx
from lhrcnn.config import load_config
from lhrcnn.evaluation.preprocess import preprocess_image
from lhrcnn.export import categories, saved_model, serving, warmup

CHECK_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support", "saved_model_check.py")
EXPORT_PY = os.path.join(fx.ROOT, "scripts/export.py")


@pytest.fixture(scope="module")
def config():
    return load_config(fx.SYNTHETIC, **fx.SMALL)


# ----------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("shape", [(37, 53), (53, 37), (10, 200), (64, 64)])
def test_preprocess_images_is_the_eval_preprocessing(config, shape):
    images = np.stack([fx.make_image(*shape, seed=s) for s in (1, 2)])
    batch, info = tf.function(lambda x: serving.preprocess_images(serving.check_images(x), config))(images)
    for b in range(2):
        expected, expected_info = preprocess_image(images[b], config)
        np.testing.assert_allclose(batch[b:b + 1].numpy(), expected.numpy(), atol=1e-4)
        np.testing.assert_allclose(info[b:b + 1].numpy(), expected_info.numpy(), rtol=1e-6)
    assert batch.shape[1] % config.size_divisor == 0 and batch.shape[2] % config.size_divisor == 0


def test_preprocess_encoded_pads_each_image_like_the_eval_pipeline(config):
    images = [fx.make_image(40, 70, 3), fx.make_image(90, 30, 4), fx.make_image(33, 33, 5)]
    raw = [fx.encode(images[0], "PNG"), fx.encode(images[1], "JPEG"), fx.encode(images[2], "BMP")]
    batch, info = tf.function(lambda x: serving.preprocess_encoded(serving.check_image_bytes(x), config))(
        tf.constant(raw))
    decoded = [tf.io.decode_image(r, channels=3).numpy() for r in raw]  # what TF decodes (JPEG: not Pillow)
    np.testing.assert_array_equal(decoded[0], images[0])
    prepared = [preprocess_image(d, config) for d in decoded]
    height = max(p.shape[1] for p, _ in prepared)
    width = max(p.shape[2] for p, _ in prepared)
    assert batch.shape == (3, height, width, 3)
    for b, (p, i) in enumerate(prepared):
        expected = np.zeros([height, width, 3], np.float32)
        expected[:p.shape[1], :p.shape[2]] = p.numpy()[0]
        np.testing.assert_allclose(batch[b].numpy(), expected, atol=1e-4)
        np.testing.assert_allclose(info[b].numpy(), i.numpy()[0], rtol=1e-6)


# ----------------------------------------------------------------------------- categories


def test_category_ids(tmp_path):
    names = ("background", "cat", "dog")
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]}))
    assert categories.categories_from_annotations(str(path), names) == [0, 3, 7]
    path.write_text(json.dumps({"categories": [{"id": 7, "name": "dog"}]}))
    with pytest.raises(ValueError, match=r"a.json has no category named \['cat'\]"):
        categories.categories_from_annotations(str(path), names)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        categories.categories_from_annotations(str(tmp_path / "missing.json"), names)
    coco = load_config(fx.SYNTHETIC, class_names=categories.COCO_CLASS_NAMES, eval_annotations="")
    ids, _ = categories.resolve_category_ids(coco)
    assert (ids[1], ids[12], ids[-1], len(set(ids))) == (1, 13, 90, 81)  # person, stop sign, toothbrush
    other = load_config(fx.SYNTHETIC, eval_annotations=str(tmp_path / "none.json"))
    assert categories.resolve_category_ids(other)[0] == list(range(7))


# ----------------------------------------------------------------------------- the version folder


def test_layout_warmup_and_label_map(tmp_path_factory):
    path = fx.export(tmp_path_factory, "tf")
    base = os.path.dirname(path)
    assert os.path.basename(path) == "1" and sorted(os.listdir(base)) == ["1"]  # no temporary folder left
    for name in ("saved_model.pb", "variables/variables.index", "assets.extra/tf_serving_warmup_requests",
                 "assets.extra/label_map.json", "assets.extra/export_info.json"):
        assert os.path.isfile(os.path.join(path, name)), name
    logs = warmup.read_warmup_file(os.path.join(path, "assets.extra", warmup.WARMUP_FILE))
    requests = {log.predict_log.request.model_spec.signature_name: log.predict_log.request for log in logs}
    assert set(requests) == {"serving_default", "serve_bytes"}
    images = tf.make_ndarray(requests["serving_default"].inputs["images"])
    assert images.dtype == np.uint8 and images.shape == (1, 64, 85, 3)
    encoded = tf.make_ndarray(requests["serve_bytes"].inputs["image_bytes"])
    assert [tf.io.decode_image(e).shape.as_list() for e in encoded] == [[64, 85, 3], [85, 64, 3]]
    assert all(log.predict_log.request.model_spec.name == "lhrcnn" for log in logs)
    label_map = json.loads(open(os.path.join(path, "assets.extra", "label_map.json")).read())
    assert label_map == {str(i): n for n, i in fx.CATEGORY_IDS.items()}
    info = json.loads(open(os.path.join(path, "assets.extra", "export_info.json")).read())
    assert info["ops"] == "tf" and info["lhrcnn_ops_in_graph"] == [] and info["warmup_requests_verified"] == 2


def test_versions_are_never_overwritten_and_failures_leave_nothing(tmp_path_factory, tmp_path, monkeypatch):
    detector = fx.detector(tmp_path_factory, "tf")
    ids = fx.model(tmp_path_factory)["category_ids"]
    for v in ("1", "3", "junk", ".tmp-9-x"):
        (tmp_path / v).mkdir()
    assert saved_model.next_version(str(tmp_path)) == 4
    assert saved_model.next_version(str(tmp_path / "absent")) == 1
    with pytest.raises(FileExistsError, match=f"{tmp_path}/3 exists already"):
        saved_model.export_saved_model(detector, str(tmp_path), category_ids=ids, version=3)
    with pytest.raises(ValueError, match="positive integer"):
        saved_model.export_saved_model(detector, str(tmp_path), category_ids=ids, version=0)

    def failing_save(module, directory, signatures):
        open(os.path.join(directory, "saved_model.pb"), "wb").close()  # half written
        raise OSError("disk full")

    monkeypatch.setattr(saved_model.tf.saved_model, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        saved_model.export_saved_model(detector, str(tmp_path), category_ids=ids)
    assert sorted(os.listdir(tmp_path)) == [".tmp-9-x", "1", "3", "junk"]  # no version 4, no new temporary


def test_graph_ops(tmp_path_factory):
    stock = saved_model.graph_op_types(fx.export(tmp_path_factory, "tf"))
    assert not [op for op in stock if op.startswith("Lhrcnn")]
    assert {"NonMaxSuppressionV4", "DecodeImage", "ResizeBilinear", "Conv2D"} <= set(stock)
    custom = saved_model.graph_op_types(fx.export(tmp_path_factory, "custom"))
    assert {"LhrcnnPsRoiAlign", "LhrcnnNms"} <= set(custom)
    with pytest.raises(RuntimeError, match="LhrcnnNms"):
        saved_model.check_graph_ops(custom, "tf")
    with pytest.raises(RuntimeError, match="EagerPyFunc"):
        saved_model.check_graph_ops({"EagerPyFunc": 1}, "custom")


# ----------------------------------------------------------------------------- loaded elsewhere


def _inputs(tmp_path):
    """Test images: a batch of two of one size for serving_default; a PNG and a JPEG of other
    sizes for serve_bytes. Returns (npz path, the serving_default images, the decoded bytes)."""
    images = np.stack([fx.make_image(48, 80, 11), fx.make_image(48, 80, 12)])
    raw = [fx.encode(fx.make_image(70, 40, 13), "PNG"), fx.encode(fx.make_image(50, 50, 14), "JPEG")]
    path = str(tmp_path / "inputs.npz")
    np.savez(path, images=images, image_bytes=np.array(raw, dtype=object))
    return path, images, [tf.io.decode_image(r, channels=3).numpy() for r in raw]


def _run_check(tmp_path, saved_model_dir, *extra):
    inputs, images, decoded = _inputs(tmp_path)
    outputs = str(tmp_path / "outputs.npz")
    env = {k: v for k, v in os.environ.items() if k not in ("LHRCNN_OPS",)}
    proc = subprocess.run([sys.executable, CHECK_SCRIPT, "--saved-model", saved_model_dir, "--inputs", inputs,
                           "--outputs", outputs, *extra], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(open(outputs + ".json").read())
    results = np.load(outputs)
    by_signature = {s: {k.split("/", 1)[1]: results[k] for k in results.files if k.startswith(s + "/")}
                    for s in ("serving_default", "serve_bytes")}
    return report, by_signature, images, decoded


def test_stock_export_runs_in_a_process_without_lhrcnn(tmp_path_factory, tmp_path):
    path = fx.export(tmp_path_factory, "tf")
    report, outputs, images, decoded = _run_check(tmp_path, path)
    assert report["lhrcnn_modules"] == [] and not report["library_mapped"]
    assert report["unregistered"] == [] and report["python_only"] == []
    assert len(report["op_types"]) > 50 and report["functions"] > 5
    names = sorted(serving.OUTPUT_NAMES)
    assert report["signatures"] == {"serving_default": {"inputs": ["images"], "outputs": names},
                                    "serve_bytes": {"inputs": ["image_bytes"], "outputs": names}}
    detector = fx.detector(tmp_path_factory, "tf")
    ids = fx.model(tmp_path_factory)["category_ids"]
    expected = fx.reference_outputs(detector, list(images), ids)
    assert expected["num_detections"].min() > 0, "a random detector at threshold 0.01 still detects something"
    fx.assert_same_detections(outputs["serving_default"], expected, "serving_default")
    fx.assert_same_detections(outputs["serve_bytes"], fx.reference_outputs(detector, decoded, ids), "serve_bytes")
    assert set(np.unique(outputs["serve_bytes"]["detection_classes"])) <= {0.0, *map(float, fx.CATEGORY_IDS.values())}


def test_custom_export_needs_the_op_library(tmp_path_factory, tmp_path):
    from lhrcnn import ops
    path = fx.export(tmp_path_factory, "custom")
    report, outputs, images, _ = _run_check(tmp_path, path, "--expect-load-failure", "--load-library",
                                            ops.library_path())
    assert {"LhrcnnPsRoiAlign", "LhrcnnNms"} <= set(report["unregistered_before_library"])
    assert report["load_error"] and "Op type not registered 'Lhrcnn" in report["load_error"], report["load_error"]
    assert report["unregistered"] == [] and report["library_mapped"]
    expected = fx.reference_outputs(fx.detector(tmp_path_factory, "custom"), list(images),
                                    fx.model(tmp_path_factory)["category_ids"])
    fx.assert_same_detections(outputs["serving_default"], expected, "custom serving_default")


# ----------------------------------------------------------------------------- scripts/export.py


def _export_py(*args, cwd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, EXPORT_PY, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _assert_user_error(proc, *fragments):
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(str(f) in last for f in fragments), proc.stderr


def test_export_script(tmp_path_factory, tmp_path):
    m = fx.model(tmp_path_factory)
    out = tmp_path / "models" / "synth"
    proc = _export_py("--experiment", fx.SYNTHETIC, "--checkpoint", os.path.dirname(m["checkpoint"]),
                      "--output", out, "--max-detections", 7, "--score-threshold", 0.05, "--max-image-pixels", 1000,
                      "--annotations", m["annotations"], "--noverify", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"wrote {out}/1" in proc.stdout and "docker run" in proc.stdout
    info = json.loads((out / "1" / "assets.extra" / "export_info.json").read_text())
    assert (info["max_detections"], info["score_threshold"], info["ops"]) == (7, 0.05, "tf")
    assert info["max_image_pixels"] == 1000
    serve_bytes = tf.saved_model.load(str(out / "1")).signatures["serve_bytes"]
    assert serve_bytes(image_bytes=tf.constant([fx.encode(fx.make_image(25, 40, 3), "PNG")]))["num_detections"].shape == [1]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"element\] \[0\] \[decodes to\] \[1\] \[frame\(s\) of\] "
                                                             r"\[26\] \[x\] \[40\].*1000 pixels allowed"):
        serve_bytes(image_bytes=tf.constant([fx.encode(fx.make_image(26, 40, 3), "PNG")]))
    assert info["category_ids"][1:] == list(fx.CATEGORY_IDS.values())
    assert info["checkpoint"] == m["checkpoint"]
    _assert_user_error(_export_py("--experiment", fx.SYNTHETIC, "--checkpoint", m["checkpoint"], "--output", out,
                                  "--version", 1, cwd=tmp_path), f"{out}/1 exists already")
    _assert_user_error(_export_py("--experiment", fx.SYNTHETIC, "--checkpoint", tmp_path / "nothing", "--output",
                                  out, cwd=tmp_path), f"{tmp_path}/nothing")
    _assert_user_error(_export_py("--experiment", fx.SYNTHETIC, "--checkpoint", m["checkpoint"], "--output", out,
                                  "--annotations", tmp_path / "no.json", cwd=tmp_path), f"{tmp_path}/no.json")
    assert sorted(os.listdir(out)) == ["1"]
