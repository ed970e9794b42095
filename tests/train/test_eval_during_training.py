"""Evaluation while training (Trainer(eval_every=...)): a 4-step ThunderNet run on a 4-image
synthetic set evaluates at steps 2 and 4; its TensorBoard events hold the 12 COCO scalars, the
drawn eval images and the loss scalars at the summary interval; the metrics equal an independent
evaluation of the checkpoints of those steps; the weights equal those of the same run without
evaluation. A bad eval set fails at construction, naming its path; the drawing's layout."""
import contextlib
import glob
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from lhrcnn.errors import MissingPathError, UserError
from lhrcnn.evaluation import coco_eval
from lhrcnn.train import trainer as trainer_module
from lhrcnn.train.trainer import Trainer, TrainingEvaluator
from lhrcnn.visualize import PALETTE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPERIMENT = os.path.join(ROOT, "experiments/lhrcnn/thundernet.snet146.synthetic")
STEPS, EVAL_EVERY, SUMMARY_EVERY, TO_DRAW = 4, 2, 3, 3
# Tiny images and proposal counts; enough eval proposals that 2-4 steps from scratch already
# score above zero (the comparisons below then compare numbers that differ between the steps).
TINY = dict(image_short_size=128, image_max_size=160, eval_image_short_size=128, eval_image_max_size=160,
            train_rpn_pre_nms_top_n=300, train_rpn_post_nms_top_n=32, test_rpn_pre_nms_top_n=1000,
            test_rpn_post_nms_top_n=300, ohem_top_k=16, warmup_iters=2, nr_image_per_epoch=8,
            precise_bn_batches=2, cache_decoded_images=False)


def _overrides(data):
    annotations, images = os.path.join(data, "annotations.json"), os.path.join(data, "images")
    return dict(TINY, train_annotations=annotations, train_images=images, eval_annotations=annotations,
                eval_images=images)


def _train(output, overrides, **options):
    tf.keras.utils.set_random_seed(0)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        trainer = Trainer(EXPERIMENT, output_dir=output, total_steps=STEPS, checkpoint_every=2,
                          summary_every=SUMMARY_EVERY, log_every_seconds=1000.0, **options, **overrides)
        result = trainer.train()
    print(log.getvalue())
    return trainer, result, log.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The run with evaluation and the same run without it."""
    from lhrcnn.data import synthetic
    root = tmp_path_factory.mktemp("eval_during_training")
    data = str(root / "data")
    synthetic.write_dataset(data, 4, seed=3, workers=1)
    overrides = _overrides(data)
    evaluated = _train(str(root / "with_eval"), overrides, eval_every=EVAL_EVERY, eval_images_to_draw=TO_DRAW)
    plain = _train(str(root / "without_eval"), overrides)
    return {"data": data, "overrides": overrides, "with": evaluated, "without": plain,
            "events": _read_events(str(root / "with_eval" / "tensorboard"))}


def _read_events(folder):
    """{tag: {step: value}}: scalars as floats, images as uint8 [N, H, W, 3] arrays."""
    files = glob.glob(os.path.join(folder, "events.out.tfevents.*"))
    assert files, f"no event file in {folder}"
    found = {}
    for path in files:
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                array = tf.make_ndarray(value.tensor)
                if plugin == "images":  # [width, height, png, png, ...]
                    item = np.stack([np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) for png in array[2:]])
                    assert (int(array[0]), int(array[1])) == (item.shape[2], item.shape[1])
                else:
                    item = float(array)
                found.setdefault(value.tag, {})[event.step] = item
    return found


def _independent_stats(checkpoint, overrides):
    """COCO statistics of a saved checkpoint: load_detector + run_inference + evaluate."""
    from lhrcnn.data.coco import load_coco
    from lhrcnn.data.pipeline import make_dataset
    from lhrcnn.detector import load_detector
    detector = load_detector(EXPERIMENT, checkpoint=checkpoint, **overrides)
    config = detector.config
    dataset = load_coco(config.eval_annotations, config.eval_images, class_names=config.class_names)
    results, image_ids, _ = coco_eval.run_inference(detector, make_dataset(dataset, config, training=False,
                                                                           batch_size=1),
                                                    dataset.category_ids, progress=False)
    return coco_eval.evaluate(config.eval_annotations, results, image_ids=image_ids, verbose=False)


def test_the_events_hold_the_eval_scalars_the_drawn_images_and_the_losses(runs):
    events = runs["events"]
    for name in coco_eval.STAT_NAMES:
        assert sorted(events[f"eval/{name}"]) == [2, 4], name
    for tag in ("loss/total", "loss/rpn_cls", "loss/rcnn_cls", "learning_rate"):
        assert sorted(events[tag]) == [SUMMARY_EVERY, STEPS], tag  # the interval and the last step
    _, result, log = runs["with"]
    assert events["loss/total"][STEPS] == pytest.approx(result["losses"]["total"], rel=1e-6)
    assert "eval at step 2: AP " in log and "eval at step 4: AP " in log

    # the first TO_DRAW eval images, each scaled to fit DRAW_MAX_SIDE, padded to the largest
    with open(os.path.join(runs["data"], "annotations.json")) as f:
        entries = sorted(json.load(f)["images"], key=lambda e: e["id"])[:TO_DRAW]
    sizes = []
    for entry in entries:
        image = Image.new("RGB", (entry["width"], entry["height"]))
        image.thumbnail((trainer_module.DRAW_MAX_SIDE, trainer_module.DRAW_MAX_SIDE))
        sizes.append(image.size[::-1])
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    images = events["eval/detections"]
    assert sorted(images) == [2, 4]
    for step, drawn in images.items():
        assert drawn.shape == (TO_DRAW, height, width, 3) and drawn.dtype == np.uint8, (step, drawn.shape)
        for image, (h, w) in zip(drawn, sizes):
            assert image[:h, :w].std() > 5, step  # the picture itself
            assert not image[h:].any() and not image[:, w:].any(), step  # the padding


def test_the_metrics_equal_an_independent_evaluation_of_the_checkpoints(runs):
    trainer, result, _ = runs["with"]
    events, overrides = runs["events"], runs["overrides"]
    final = result["eval"]
    assert final["step"] == STEPS and final["images"] == 4
    model_dump = os.path.dirname(result["checkpoint"])
    expected = {2: _independent_stats(os.path.join(model_dump, "ckpt-2"), overrides),
                4: _independent_stats(result["checkpoint"], overrides)}
    for step, stats in expected.items():
        for name in coco_eval.STAT_NAMES:
            assert events[f"eval/{name}"][step] == pytest.approx(stats[name], abs=1e-6), (step, name)
    for name in coco_eval.STAT_NAMES:
        assert final[name] == expected[4][name], name
    # the numbers compared are not trivially equal: above zero, and different between the steps
    assert expected[4]["AR100"] > 0 and expected[2]["AR100"] > 0
    assert any(expected[2][name] != expected[4][name] for name in coco_eval.STAT_NAMES)


def test_evaluation_does_not_disturb_training(runs):
    (evaluated, a, _), (plain, b, _) = runs["with"], runs["without"]
    assert "eval" not in b and a["eval"] is not None
    assert a["losses"] == b["losses"]
    assert a["fingerprint"] == b["fingerprint"]
    for v, w in zip(evaluated.detector.variables, plain.detector.variables):
        np.testing.assert_array_equal(v.numpy(), w.numpy(), err_msg=v.name)
    for v, w in zip(evaluated.optimizer.variables, plain.optimizer.variables):
        np.testing.assert_array_equal(v.numpy(), w.numpy(), err_msg=v.name)
    names = lambda result: sorted(os.path.basename(p) for p in glob.glob(  # noqa: E731
        os.path.join(os.path.dirname(result["checkpoint"]), "ckpt-*.index")))
    assert names(a) == names(b) == ["ckpt-2.index", "ckpt-4.index"]
    for step in (2, 4):  # the checkpoints hold the same values (the evaluation copy is not saved)
        ra = tf.train.load_checkpoint(os.path.join(os.path.dirname(a["checkpoint"]), f"ckpt-{step}"))
        rb = tf.train.load_checkpoint(os.path.join(os.path.dirname(b["checkpoint"]), f"ckpt-{step}"))
        keys = sorted(ra.get_variable_to_shape_map())
        assert keys == sorted(rb.get_variable_to_shape_map())
        for key in keys:
            if key != "_CHECKPOINTABLE_OBJECT_GRAPH":
                np.testing.assert_array_equal(ra.get_tensor(key), rb.get_tensor(key), err_msg=key)


def _write_coco(folder, images, boxes=()):
    """A COCO json of the synthetic classes over `images` [(file name, (h, w))], all grey PNGs,
    with `boxes` [(image index, [x, y, w, h], category id)]."""
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    for name, (h, w) in images:
        Image.new("RGB", (w, h), (90, 90, 90)).save(os.path.join(folder, "images", name))
    data = {"images": [{"id": i + 1, "file_name": name, "height": h, "width": w}
                       for i, (name, (h, w)) in enumerate(images)],
            "annotations": [{"id": k + 1, "image_id": i + 1, "bbox": box, "category_id": cat, "area": box[2] * box[3],
                             "iscrowd": 0} for k, (i, box, cat) in enumerate(boxes)],
            "categories": [{"id": i, "name": n} for i, n in enumerate(
                ("circle", "square", "triangle", "ring", "frame", "cross"), 1)]}
    path = os.path.join(folder, "annotations.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def _config():
    from lhrcnn.config import load_config
    return load_config(EXPERIMENT, **TINY)


def test_the_drawing_shows_ground_truth_and_detections_padded_to_the_largest(tmp_path):
    path = _write_coco(str(tmp_path), [("a.png", (100, 200)), ("b.png", (600, 1024)), ("c.png", (50, 50))],
                       boxes=[(0, [20, 10, 60, 40], 2)])
    evaluator = TrainingEvaluator(_config(), path, str(tmp_path / "images"), images_to_draw=2)
    results = [{"image_id": 1, "category_id": 3, "bbox": [110.0, 20.0, 50.0, 60.0], "score": 0.9},
               {"image_id": 1, "category_id": 1, "bbox": [5.0, 60.0, 30.0, 30.0], "score": 0.1},  # below
               {"image_id": 3, "category_id": 1, "bbox": [5.0, 5.0, 30.0, 30.0], "score": 0.9}]  # not drawn
    drawn = evaluator.draw(results)
    # b.png: 1024 x 600 -> 512 x 300; a.png stays 200 x 100 and is padded
    assert drawn.shape == (2, 300, 512, 3) and drawn.dtype == np.uint8
    a = drawn[0]
    assert not a[100:].any() and not a[:, 200:].any()
    assert (a[30, 20] == 255).all() and (a[30, 80] == 255).all()  # the ground truth's left and right edges
    assert (a[60, 110] == PALETTE[3]).all()  # the detection's left edge, class 3's colour
    assert (a[75, 20] == 90).all()  # the low-score detection is not drawn
    assert (a[5, 150] == 90).all()  # nor anything else
    assert evaluator.num_images == 3
    assert TrainingEvaluator(_config(), path, str(tmp_path / "images"), images_to_draw=0).draw(results) is None


def test_a_bad_eval_set_fails_at_construction_naming_its_path(tmp_path, monkeypatch):
    data = str(tmp_path / "data")
    good = _write_coco(data, [("a.png", (64, 64))], boxes=[(0, [4, 4, 20, 20], 1)])
    images = os.path.join(data, "images")
    empty = _write_coco(str(tmp_path / "empty"), [])
    garbage = str(tmp_path / "garbage.json")
    with open(garbage, "w") as f:
        f.write("{not json")
    missing_images = _write_coco(str(tmp_path / "gone"), [("x.png", (64, 64))])
    os.remove(os.path.join(str(tmp_path / "gone"), "images", "x.png"))
    options = dict(output_dir=str(tmp_path / "out"), total_steps=1, eval_every=1, train_annotations=good,
                   train_images=images, **TINY)
    cases = [(dict(eval_annotations=str(tmp_path / "nope.json")), MissingPathError, str(tmp_path / "nope.json")),
             (dict(eval_annotations=good, eval_images=str(tmp_path / "no_images")), MissingPathError,
              str(tmp_path / "no_images")),
             (dict(eval_annotations=empty, eval_images=images), UserError, empty),
             (dict(eval_annotations=garbage, eval_images=images), UserError, garbage),
             (dict(eval_annotations=missing_images, eval_images=str(tmp_path / "gone" / "images")), UserError,
              missing_images)]
    for arguments, error, named in cases:
        with pytest.raises(error) as caught:
            Trainer(EXPERIMENT, **arguments, **options)
        assert named in str(caught.value), (arguments, str(caught.value))
    # the arguments default to the config's eval set, a path relative to the working directory
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingPathError) as caught:
        Trainer(EXPERIMENT, **options)
    assert str(tmp_path / "data/synthetic/val/annotations.json") in str(caught.value)
    for name in ("eval_every", "summary_every", "eval_images_to_draw"):
        with pytest.raises(ValueError, match=name):
            Trainer(EXPERIMENT, **dict(options, **{name: -1}))
    # without eval_every the eval set is not read
    trainer = Trainer(EXPERIMENT, **dict(options, eval_every=0, eval_annotations=str(tmp_path / "nope.json")))
    assert trainer.evaluator is None
