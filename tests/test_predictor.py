"""lhrcnn.Predictor and `lhrcnn predict` (lhrcnn/predictor.py, lhrcnn/cli.py): ThunderNet SNet146 on
the synthetic classes with seeded random weights at a small eval size, in process and exported as a
SavedModel (lhrcnn.export). Both give the same detections for the same image given as a path,
bytes or an array; boxes are in the original image's pixels (an image repeated 2x2 has the same
network input after the eval resize, so its boxes must be exactly twice the small image's)."""
import io
import json
import os

import numpy as np
import pytest
from export_fixtures import make_image  # tests/support/ is on sys.path
from PIL import Image

import lhrcnn
from lhrcnn import cli
from lhrcnn.predictor import Detections, Predictor, read_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = os.path.join(ROOT, "experiments/lhrcnn/thundernet.snet146.synthetic")
# 64x96 images are not resized (scale 1) and need no padding; stock ops in both predictors.
SMALL = dict(eval_image_short_size=64, eval_image_max_size=96, test_rpn_pre_nms_top_n=300,
             test_rpn_post_nms_top_n=40, test_max_detections=20, ops_backend="tf")
CATEGORY_IDS = [0, 11, 22, 33, 44, 55, 66]  # what the export's detection_classes hold per class index


def png_bytes(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """dict: checkpoint (seeded random weights), export (a version folder), images (name -> pixels)
    and their PNG files, the in-process and the SavedModel predictors."""
    import tensorflow as tf

    from lhrcnn.export.saved_model import export_saved_model
    root = tmp_path_factory.mktemp("predictor")
    tf.keras.utils.set_random_seed(0)
    detector = lhrcnn.build_detector(EXPERIMENT, **SMALL)
    prefix = str(root / "model_dump" / "ckpt-1")
    tf.train.Checkpoint(model=detector).write(prefix)
    export = export_saved_model(detector, str(root / "models"), category_ids=CATEGORY_IDS, verify=False)
    small = make_image(64, 96, seed=1)
    images = {"small": small, "double": np.repeat(np.repeat(small, 2, axis=0), 2, axis=1),
              "portrait": make_image(80, 60, seed=2)}  # resized to 64x85, padded to 64x96
    (root / "images").mkdir()
    files = {}
    for name, pixels in images.items():
        files[name] = root / "images" / f"{name}.png"
        files[name].write_bytes(png_bytes(pixels))
    return {"root": root, "checkpoint": prefix, "export": export, "images": images, "files": files,
            "local": Predictor(EXPERIMENT, checkpoint=prefix, **SMALL),
            "saved": Predictor.from_saved_model(str(root / "models"))}


def assert_same(actual, expected, what, box_atol=1e-3):
    assert isinstance(actual, Detections), what
    np.testing.assert_array_equal(actual.class_ids, expected.class_ids, err_msg=what)
    assert actual.class_names == expected.class_names, what
    np.testing.assert_allclose(actual.scores, expected.scores, rtol=1e-5, atol=1e-6, err_msg=what)
    np.testing.assert_allclose(actual.boxes, expected.boxes, rtol=1e-4, atol=box_atol, err_msg=what)
    assert actual.image_size == expected.image_size, what


def test_top_level_names():
    assert lhrcnn.Predictor is Predictor
    from lhrcnn.detector import build_detector, load_detector
    assert (lhrcnn.build_detector, lhrcnn.load_detector) == (build_detector, load_detector)
    with pytest.raises(AttributeError):
        lhrcnn.no_such_name  # noqa: B018


def test_in_process_and_saved_model_agree_on_every_input_form(workspace):
    local, saved = workspace["local"], workspace["saved"]
    class_names = local.config.class_names
    assert saved.class_names == tuple(class_names)
    assert local.score_threshold == saved.score_threshold == local.config.test_score_threshold
    assert saved.saved_model == workspace["export"] and local.checkpoint == workspace["checkpoint"]
    for name, pixels in workspace["images"].items():
        path = workspace["files"][name]
        reference = local(pixels)
        assert 0 < len(reference) <= SMALL["test_max_detections"], name
        assert reference.image_size == pixels.shape[:2]
        assert all(class_names[i] == n for i, n in zip(reference.class_ids, reference.class_names))
        assert np.all(reference.class_ids >= 1) and np.all(reference.scores >= local.score_threshold)
        assert np.all(np.diff(reference.scores) <= 0), "best first"
        for form, image in (("path", str(path)), ("pathlike", path), ("bytes", path.read_bytes()),
                            ("array", pixels)):
            assert_same(local(image), reference, f"{name} in process, {form}")
            assert_same(saved(image), reference, f"{name} SavedModel, {form}")


def test_the_export_answers_category_ids_the_predictor_maps_back(workspace):
    import tensorflow as tf
    pixels = workspace["images"]["portrait"]
    served = tf.saved_model.load(workspace["export"]).signatures["serving_default"]
    out = served(images=tf.constant(pixels[None]))
    n = int(out["num_detections"][0])
    categories = out["detection_classes"].numpy()[0, :n].astype(int)
    assert set(categories) <= set(CATEGORY_IDS[1:])
    detections = workspace["saved"](pixels)
    np.testing.assert_array_equal([CATEGORY_IDS[c] for c in detections.class_ids], categories)


@pytest.mark.parametrize("which", ["local", "saved"])
def test_boxes_are_in_original_pixels(workspace, which):
    predictor = workspace[which]
    small = predictor(workspace["images"]["small"])
    double = predictor(workspace["files"]["double"])
    assert len(small) > 0 and double.image_size == (128, 192)
    np.testing.assert_array_equal(double.class_ids, small.class_ids)
    np.testing.assert_allclose(double.scores, small.scores, rtol=1e-6)
    np.testing.assert_allclose(double.boxes, 2.0 * small.boxes, rtol=1e-4, atol=1e-2)
    assert np.ptp(small.boxes) > 10, "boxes of several sizes and places"
    x1, y1, x2, y2 = double.boxes.T
    assert np.all((0 <= x1) & (x1 <= x2) & (x2 <= 192) & (0 <= y1) & (y1 <= y2) & (y2 <= 128))


def test_score_threshold(workspace):
    local, pixels = workspace["local"], workspace["images"]["portrait"]
    everything = local(pixels, score_threshold=0.0)
    cut = float(np.sort(everything.scores)[len(everything) // 2])  # a score that occurs: > drops it
    kept = everything.scores > cut
    expected = Detections(everything.boxes[kept], everything.scores[kept], everything.class_ids[kept],
                          tuple(n for n, k in zip(everything.class_names, kept) if k), everything.image_size)
    assert 0 < kept.sum() < len(everything)
    assert_same(local(pixels, score_threshold=cut), expected, "per call", box_atol=0)
    strict = Predictor.from_saved_model(workspace["export"], score_threshold=cut)
    assert strict.score_threshold == cut
    assert_same(strict(pixels), expected, "SavedModel predictor's threshold")
    assert len(local(pixels, score_threshold=1.01)) == 0


def test_a_list_gives_a_list(workspace):
    local, files = workspace["local"], workspace["files"]
    results = local([str(files["portrait"]), files["small"].read_bytes()])
    assert isinstance(results, list) and len(results) == 2
    assert_same(results[0], local(workspace["images"]["portrait"]), "first", box_atol=0)
    assert_same(results[1], local(workspace["images"]["small"]), "second", box_atol=0)
    assert local([]) == []


def test_draw(workspace):
    from lhrcnn.visualize import PALETTE
    local, pixels = workspace["local"], workspace["images"]["double"]
    detections = local(pixels)
    drawn = local.draw(pixels, detections)
    assert drawn.dtype == np.uint8 and drawn.shape == pixels.shape
    assert np.any(drawn != pixels)
    # The best detection is drawn last: its box corner has its class's colour.
    x1, y1 = (int(round(v)) for v in detections.boxes[0][:2])
    colour = PALETTE[int(detections.class_ids[0]) % len(PALETTE)]
    around = drawn[max(0, y1 - 1):y1 + 2, max(0, x1 - 1):x1 + 2].reshape(-1, 3)
    assert any(tuple(p) == colour for p in around), (around, colour)
    nothing = local(pixels, score_threshold=1.01)
    np.testing.assert_array_equal(local.draw(str(workspace["files"]["double"]), nothing), pixels)


def test_bad_inputs_name_the_problem(workspace, tmp_path):
    local = workspace["local"]
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is no image")
    with pytest.raises(FileNotFoundError, match="image .*missing.png does not exist"):
        local(str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match="junk.jpg is not a JPEG, PNG, GIF, BMP or WebP image"):
        local(str(junk))
    with pytest.raises(ValueError, match=r"the image bytes \(16 bytes\) are not a JPEG"):
        read_image(b"this is no image")
    truncated = workspace["files"]["small"].read_bytes()[:60]
    with pytest.raises(ValueError, match="cannot be decoded"):
        read_image(truncated)
    for array, fragment in ((np.zeros([8, 8, 3], np.float32), "float32 [8, 8, 3]"),
                            (np.zeros([8, 8], np.uint8), "uint8 [8, 8]"),
                            (np.zeros([8, 8, 4], np.uint8), "uint8 [8, 8, 4]"),
                            (np.zeros([0, 8, 3], np.uint8), "uint8 [0, 8, 3]")):
        with pytest.raises(ValueError, match=f"uint8 \\[H, W, 3\\].*{fragment.replace('[', '.').replace(']', '.')}"):
            local(array)
    with pytest.raises(TypeError, match="int"):
        local(42)
    with pytest.raises(FileNotFoundError, match="no SavedModel in"):
        Predictor.from_saved_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no/such/folder"):
        Predictor(str(tmp_path / "no/such/folder"))


def _predict(argv):
    args = cli.parse_args(["predict", *map(str, argv)])
    return cli.run("predict", args)


def test_predict_command_writes_what_the_predictor_answers(workspace, tmp_path, capsys):
    local, files = workspace["local"], workspace["files"]
    sets = [w for k, v in SMALL.items() for w in ("--set", f"{k}={v!r}")]
    out = tmp_path / "out"
    names = ["small", "portrait"]
    assert _predict(["--experiment", EXPERIMENT, "--checkpoint", os.path.dirname(workspace["checkpoint"]),
                     "--output", out, *sets, *(files[n] for n in names)]) == 0
    printed = capsys.readouterr().out
    out_saved = tmp_path / "out_saved"
    assert _predict(["--saved_model", workspace["export"], "--output", out_saved, *(files[n] for n in names)]) == 0
    assert sorted(os.listdir(out)) == sorted(os.listdir(out_saved)) == sorted(
        f"{n}_detections.{e}" for n in names for e in ("json", "png"))
    for name in names:
        expected = local(workspace["images"][name])
        for folder, key, value in ((out, "checkpoint", workspace["checkpoint"]),
                                   (out_saved, "saved_model", workspace["export"])):
            report = json.loads((folder / f"{name}_detections.json").read_text())
            assert report[key] == os.path.abspath(value)
            assert (report["height"], report["width"]) == workspace["images"][name].shape[:2]
            assert report["score_threshold"] == pytest.approx(local.score_threshold)
            assert [d["class"] for d in report["detections"]] == list(expected.class_names)
            assert [d["class_index"] for d in report["detections"]] == expected.class_ids.tolist()
            np.testing.assert_allclose([d["box"] for d in report["detections"]], expected.boxes, atol=1e-3)
            np.testing.assert_allclose([d["score"] for d in report["detections"]], expected.scores, rtol=1e-5)
            with Image.open(folder / f"{name}_detections.png") as png:
                drawn = np.asarray(png.convert("RGB"))
            assert drawn.shape == workspace["images"][name].shape
            if folder == out:
                np.testing.assert_array_equal(drawn, local.draw(workspace["images"][name], expected))
        top = expected.to_list()[0]
        assert f"  {top['class']:<16} {top['score']:.3f}  [{top['box'][0]:.1f}," in printed
    assert f"{files['small']}: {len(local(workspace['images']['small']))} detections (score > 0.01)" in printed



def test_predict_command_errors(workspace, tmp_path, capsys):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"no image")
    out = tmp_path / "out"
    assert _predict(["--saved-model", workspace["export"], "--output", out, workspace["files"]["small"], junk]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(junk) in err[0]
    assert not out.exists(), "nothing is written when an image cannot be read"
