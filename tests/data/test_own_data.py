"""Training on a dataset of one's own without writing code: a COCO json + image folder read by the
template experiment experiments/templates/thundernet.snet146.coco_json, whose class names come
from the json (class_names = "from_annotations"), with category ids that are not 1..N (3, 17, 90);
the frozen-BatchNorm warning for runs from random weights; run_main_job's refusal to write
synthetic images into another experiment's data folder."""
import json
import logging
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from PIL import Image

from lhrcnn import cli
from lhrcnn.config import COCO_CLASS_NAMES, FROM_ANNOTATIONS, Config, load_config
from lhrcnn.data.coco import class_names_from_annotations, load_coco

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPLATE = os.path.join(ROOT, "experiments", "templates", "thundernet.snet146.coco_json")
RUN_MAIN_JOB = os.path.join(ROOT, "scripts", "run_main_job.py")

# The synthetic generator's shape classes used here, by its class index, with this dataset's own
# category ids; the other shapes (ring, frame, cross) are left out of the json.
SHAPES = {1: "circle", 2: "square", 3: "triangle"}
CATEGORY_ID = {"square": 3, "triangle": 17, "circle": 90}
# The json lists the categories out of id order; the classes follow the ids (3, 17, 90).
CATEGORIES = [{"id": 90, "name": "circle"}, {"id": 3, "name": "square"}, {"id": 17, "name": "triangle"}]
EXPECTED_NAMES = ("background", "square", "triangle", "circle")
CATEGORY_OF_CLASS = {1: 3, 2: 17, 3: 90}  # contiguous class index -> the dataset's id
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def write_split(root, split, count, seed, categories=CATEGORIES):
    """data/my_dataset/<split>.json and data/my_dataset/<split>/*.jpg under `root`, from synthetic
    images that hold at least one circle, square or triangle. Returns {file_name: [(name, [x, y,
    w, h])]} of what was written."""
    from lhrcnn.data.synthetic import generate_image
    folder = root / "data" / "my_dataset" / split
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations, written = [], [], {}
    index = 0
    while len(images) < count:
        sample = generate_image(seed, index)
        index += 1
        boxes = [(SHAPES[int(c)], b) for c, b in zip(sample.classes, sample.boxes.tolist()) if int(c) in SHAPES]
        if not boxes:
            continue
        image_id = 100 + 7 * len(images)  # not 1..N either
        name = f"{split}_{image_id}.jpg"
        Image.fromarray(sample.image).save(folder / name, quality=90)
        height, width = sample.image.shape[:2]
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        written[name] = []
        for shape, (x1, y1, x2, y2) in boxes:
            xywh = [x1, y1, x2 - x1, y2 - y1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": CATEGORY_ID[shape],
                                "bbox": xywh, "area": xywh[2] * xywh[3], "iscrowd": 0})
            written[name].append((shape, xywh))
    path = root / "data" / "my_dataset" / f"{split}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return written


@pytest.fixture(scope="module")
def my_dataset(tmp_path_factory):
    """A working directory holding data/my_dataset/{train,val}.json and their image folders."""
    root = tmp_path_factory.mktemp("own_data")
    written = {"train": write_split(root, "train", 6, seed=31), "val": write_split(root, "val", 3, seed=32)}
    return root, written


@pytest.fixture
def warnings_logged():
    """The messages of the WARNING records absl's logger gets while the test runs."""
    from absl import logging as absl_logging
    messages = []

    class Keep(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                messages.append(record.getMessage())

    handler = Keep()
    logger = absl_logging.get_absl_logger()
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def write_json(path, categories, annotations=()):
    path.write_text(json.dumps({"images": [], "annotations": list(annotations), "categories": categories}))
    return str(path)


# ----------------------------------------------------------------------------- class names


def test_template_takes_its_class_names_from_the_training_json(my_dataset, monkeypatch):
    root, _ = my_dataset
    monkeypatch.chdir(root)
    config = load_config(TEMPLATE)
    assert config.class_names == EXPECTED_NAMES and config.num_classes == 4
    assert config.class_names_source == str(root / "data" / "my_dataset" / "train.json")
    assert config.backbone_options.get("freeze_bn") is False and not config.backbone_options.get("freeze_stem")


def test_set_overrides_are_resolved_before_the_class_names(tmp_path, monkeypatch):
    other = write_json(tmp_path / "other.json",
                       [{"id": 12, "name": "b"}, {"id": 5, "name": "a"}, {"id": 40, "name": "c"}])
    monkeypatch.chdir(tmp_path)  # the template's own data/my_dataset/ does not exist here
    overrides = cli.parse_overrides([f"train_annotations={other}"])
    config = load_config(TEMPLATE, **overrides)
    assert config.class_names == ("background", "a", "b", "c") and config.num_classes == 4
    # listed names win; the string itself works as a --set value on any experiment
    listed = load_config(TEMPLATE, **cli.parse_overrides(["class_names=('background', 'x', 'y')"]))
    assert listed.class_names == ("background", "x", "y") and listed.class_names_source is None
    coco = load_config(os.path.join(ROOT, "experiments/lhrcnn/thundernet.snet146.coco"),
                       **cli.parse_overrides([f"class_names={FROM_ANNOTATIONS}", f"train_annotations={other}"]))
    assert coco.class_names == ("background", "a", "b", "c")


def test_existing_experiments_keep_their_class_names():
    assert load_config(os.path.join(ROOT, "experiments/lhrcnn/thundernet.snet146.coco")).class_names == COCO_CLASS_NAMES
    synthetic = load_config(os.path.join(ROOT, "experiments/lhrcnn/thundernet.snet146.synthetic"))
    assert synthetic.class_names == ("background", "circle", "square", "triangle", "ring", "frame", "cross")
    assert synthetic.class_names_source is None and Config().num_classes == 81


def test_missing_json_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"from_annotations.*no train_annotations \S*data/my_dataset/train\.json "
                                         r"and no eval_annotations \S*data/my_dataset/val\.json"):
        load_config(TEMPLATE)
    with pytest.raises(ValueError, match="'from_annotation'"):  # a misspelt value is not a list of names
        Config(class_names="from_annotation")
    # the command line: one error line, status 1, before TensorFlow
    assert cli.run("test", cli.parse_args(["test", "--experiment", TEMPLATE])) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "data/my_dataset/train.json" in err[0]


def test_eval_json_is_used_without_the_training_json(tmp_path, monkeypatch):
    folder = tmp_path / "data" / "my_dataset"
    folder.mkdir(parents=True)
    write_json(folder / "val.json", CATEGORIES)
    monkeypatch.chdir(tmp_path)
    config = load_config(TEMPLATE)
    assert config.class_names == EXPECTED_NAMES and config.class_names_source == str(folder / "val.json")


def test_background_and_bad_categories(tmp_path):
    unused = write_json(tmp_path / "unused.json", [{"id": 0, "name": "background"}] + CATEGORIES)
    assert class_names_from_annotations(unused) == EXPECTED_NAMES
    (tmp_path / "images").mkdir()
    assert load_coco(unused, str(tmp_path / "images")).class_names == EXPECTED_NAMES
    assert load_coco(unused, str(tmp_path / "images"), class_names=EXPECTED_NAMES).category_ids == [-1, 3, 17, 90]
    used = write_json(tmp_path / "used.json", [{"id": 0, "name": "background"}] + CATEGORIES,
                      [{"id": 1, "image_id": 1, "category_id": 0, "bbox": [0, 0, 4, 4]}])
    with pytest.raises(ValueError, match="annotations use the category named 'background'"):
        class_names_from_annotations(used)
    for categories, message in (([], "no 'categories'"), ([{"id": 1, "name": "a"}, {"id": 2, "name": "a"}], "'a'"),
                                ([{"id": 1, "name": "a"}, {"id": 1, "name": "b"}], r"ids used more than once: \[1\]"),
                                ([{"name": "a"}], "integer 'id'")):
        with pytest.raises(ValueError, match=message):
            class_names_from_annotations(write_json(tmp_path / "bad.json", categories))


def test_category_ids_map_to_contiguous_training_classes(my_dataset, monkeypatch):
    root, written = my_dataset
    monkeypatch.chdir(root)
    config = load_config(TEMPLATE)
    data = load_coco(config.train_annotations, config.train_images, class_names=config.class_names)
    assert data.category_ids == [-1, 3, 17, 90]
    for record in data.records:
        shapes = written["train"][os.path.basename(record.path)]
        assert record.classes.tolist() == [EXPECTED_NAMES.index(shape) for shape, _ in shapes]
        np.testing.assert_allclose(record.boxes, [[x, y, x + w, y + h] for _, (x, y, w, h) in shapes])


def test_export_takes_the_category_ids_from_the_json_the_classes_came_from(tmp_path, monkeypatch, capsys):
    """`lhrcnn export` of the template: the eval json's ids when it exists, else the training
    json's (the one the class names came from), never the class indices."""
    import lhrcnn.detector
    import lhrcnn.export.saved_model
    folder = tmp_path / "data" / "my_dataset"
    folder.mkdir(parents=True)
    write_json(folder / "train.json", CATEGORIES)
    (tmp_path / "ckpt-1.index").write_bytes(b"")
    exported = []
    monkeypatch.setattr(lhrcnn.detector, "load_detector", lambda *args, **kwargs: "detector")
    monkeypatch.setattr(lhrcnn.export.saved_model, "export_saved_model",
                        lambda detector, output, *, category_ids, **kwargs: exported.append(category_ids) or output)
    monkeypatch.chdir(tmp_path)
    args = ["export", "--experiment", TEMPLATE, "--checkpoint", "ckpt-1", "--output", str(tmp_path / "export")]
    assert cli.run("export", cli.parse_args(args)) == 0, capsys.readouterr().err
    # the eval json names the same classes with ids of its own
    write_json(folder / "val.json", [{"id": 5, "name": "triangle"}, {"id": 6, "name": "circle"},
                                     {"id": 7, "name": "square"}])
    assert cli.run("export", cli.parse_args(args)) == 0, capsys.readouterr().err
    assert exported == [[0, 3, 17, 90], [0, 7, 5, 6]]


# ----------------------------------------------------------------------------- frozen BN warning


def _trainer_stub(config, resumed=None, init_checkpoint=None):
    """A Trainer with only what restore_or_initialize reads."""
    from lhrcnn.train.trainer import Trainer
    trainer = Trainer.__new__(Trainer)
    trainer.config, trainer.detector, trainer.init_checkpoint = config, object(), init_checkpoint
    trainer.checkpoints = types.SimpleNamespace(restore_latest=lambda: resumed)
    trainer.initialized_externally = False
    return trainer


def test_frozen_batch_norm_from_random_weights_warns_once(monkeypatch, warnings_logged):
    from lhrcnn.train import trainer as trainer_module
    initialized = []
    monkeypatch.setattr(trainer_module, "initialize_from", lambda detector, path: initialized.append(path))
    frozen = load_config(os.path.join(ROOT, "experiments/lizeming/light_head_rcnn.ori_res101.coco"))
    assert frozen.backbone_options == {"freeze_bn": True, "freeze_stem": True}

    assert _trainer_stub(frozen).restore_or_initialize() is None
    assert len(warnings_logged) == 1 and "\n" not in warnings_logged[0]
    assert warnings_logged[0].startswith("warning: training from random weights")
    assert "freeze_bn=True, freeze_stem=True" in warnings_logged[0] and "--init-checkpoint" in warnings_logged[0]

    warnings_logged.clear()
    assert _trainer_stub(frozen, resumed="model_dump/ckpt-7").restore_or_initialize() == "model_dump/ckpt-7"
    _trainer_stub(frozen, init_checkpoint="imagenet.ckpt").restore_or_initialize()
    assert initialized == ["imagenet.ckpt"]
    loaded = _trainer_stub(frozen)
    loaded.initialized_externally = True  # the CLI's TF1 --init-checkpoint
    loaded.restore_or_initialize()
    _trainer_stub(Config(backbone_options={"freeze_bn": False, "freeze_stem": False})).restore_or_initialize()
    _trainer_stub(Config(backbone="snet146", backbone_options={"freeze_bn": False})).restore_or_initialize()
    assert warnings_logged == []
    only_stem = Config(backbone_options={"freeze_bn": False, "freeze_stem": True})
    _trainer_stub(only_stem).restore_or_initialize()
    assert len(warnings_logged) == 1 and "freeze_stem=True" in warnings_logged[0]
    assert "freeze_bn=True" not in warnings_logged[0]


# ----------------------------------------------------------------------------- run_main_job


def test_run_main_job_refuses_other_experiments_data_folders(tmp_path):
    for experiment in (os.path.join(ROOT, "experiments/lizeming/light_head_rcnn.ori_res101.coco"), TEMPLATE):
        done = subprocess.run([sys.executable, RUN_MAIN_JOB, "--experiment", experiment, "--train_images", "2"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 1, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
        assert "not a synthetic experiment" in lines[0]
        assert "===" not in done.stdout  # no step ran
    assert os.listdir(tmp_path) == []  # nothing written (the data folders are relative to the cwd)


def test_run_main_job_accepts_synthetic_experiments(tmp_path):
    """Synthetic: the config extends synthetic.base, or its train_annotations lies under
    data/synthetic/; the decision only (the job itself trains for minutes)."""
    base = tmp_path / "experiments" / "me" / "synthetic.base"
    derived = tmp_path / "experiments" / "me" / "derived"
    under = tmp_path / "experiments" / "me" / "under_data_synthetic"
    for folder in (base, derived, under):
        folder.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere" / "train" / "annotations.json"
    (base / "config.py").write_text("from lhrcnn.config import Config\n\n\nclass Base(Config):\n"
                                    f"    train_annotations = {str(elsewhere)!r}\n")
    (derived / "config.py").write_text("from lhrcnn.config import base_experiment_config\n\n\n"
                                       "class Derived(base_experiment_config(__file__, 'synthetic.base')):\n"
                                       "    pass\n")
    (under / "config.py").write_text("from lhrcnn.config import Config\n\n\nclass Under(Config):\n"
                                     "    train_annotations = 'data/synthetic/mine/annotations.json'\n")
    experiments = {os.path.join(ROOT, "experiments/lhrcnn", name): True
                   for name in ("thundernet.snet146.synthetic", "light_head_rcnn.xception_star.synthetic",
                                "detnet59.fpn.synthetic", "double_head.r50_fpn.synthetic")}
    experiments.update({str(derived): True, str(under): True, TEMPLATE: False,
                        os.path.join(ROOT, "experiments/lhrcnn/thundernet.snet146.coco"): False})
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('run_main_job', {RUN_MAIN_JOB!r})\n"
            "job = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(job)\n"
            "from lhrcnn.config import load_config_class\n"
            "for e in sys.argv[1:]:\n    print(job.synthetic_data_refusal(e, load_config_class(e)) is None)\n")
    done = subprocess.run([sys.executable, "-c", code, *experiments], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(v) for v in experiments.values()]


# ----------------------------------------------------------------------------- train and evaluate

# --set style overrides: tiny images and proposal counts, no precise BN, scores from 0 at test time
SMALL = ["image_short_size=128", "image_max_size=160", "eval_image_short_size=128", "eval_image_max_size=160",
         "train_batch_per_gpu=2", "precise_bn_batches=0", "warmup_iters=1", "train_rpn_pre_nms_top_n=300",
         "train_rpn_post_nms_top_n=64", "roi_batch_size_per_image=64", "test_rpn_pre_nms_top_n=300",
         "test_rpn_post_nms_top_n=32", "test_score_threshold=0.0", "group_by_aspect_ratio=False"]


def test_template_trains_and_evaluates_with_the_datasets_category_ids(my_dataset, monkeypatch, warnings_logged):
    import tensorflow as tf

    from lhrcnn.data.pipeline import make_dataset
    from lhrcnn.detector import load_detector
    from lhrcnn.evaluation import coco_eval
    from lhrcnn.train.trainer import Trainer

    root, written = my_dataset
    monkeypatch.chdir(root)
    overrides = cli.parse_overrides(SMALL)
    trainer = Trainer(TEMPLATE, output_dir=str(root / "output"), total_steps=3, checkpoint_every=1000,
                      log_every_seconds=600, **overrides)
    assert trainer.config.num_classes == 4
    labels = {os.path.basename(r.path): r.classes.tolist() for r in trainer.load_train_data().records}
    assert labels == {name: [EXPECTED_NAMES.index(s) for s, _ in shapes] for name, shapes in written["train"].items()}
    result = trainer.train()
    assert result["steps"] == 3 and np.isfinite(result["losses"]["total"])
    assert not [m for m in warnings_logged if "freeze" in m]  # the template trains its BatchNorms

    detector = load_detector(TEMPLATE, checkpoint=result["checkpoint"], **overrides)
    config = detector.config
    assert config.class_names == EXPECTED_NAMES
    val = load_coco(config.eval_annotations, config.eval_images, class_names=config.class_names)
    assert val.category_ids == [-1, 3, 17, 90]
    tf_dataset = make_dataset(val, config, training=False, batch_size=1)
    results, image_ids, _ = coco_eval.run_inference(detector, tf_dataset, val.category_ids, progress=False)
    assert sorted(image_ids) == [100, 107, 114] and results
    assert {r["category_id"] for r in results} == {3, 17, 90}  # scores from 0: every class detects

    # the first image's raw detections, mapped with the hand-written table
    batch = next(iter(tf_dataset))
    out = detector({"images": batch["images"], "image_info": tf.cast(batch["image_info"], tf.float32)})
    first = int(np.asarray(batch["image_id"])[0])
    k = int(out["num_detections"][0])
    raw = sorted((CATEGORY_OF_CLASS[int(c)], float(s)) for c, s in zip(out["classes"][0][:k].numpy(),
                                                                       out["scores"][0][:k].numpy()) if int(c) > 0)
    entries = sorted((r["category_id"], r["score"]) for r in results if r["image_id"] == first)
    assert [c for c, _ in entries] == [c for c, _ in raw] and entries
    np.testing.assert_allclose([s for _, s in entries], [s for _, s in raw], atol=1e-4)

    path = coco_eval.write_json(root / "eval" / "results.json", results)
    with open(path) as f:
        loaded = json.load(f)
    assert {r["category_id"] for r in loaded} == {r["category_id"] for r in results}
    stats = coco_eval.evaluate(config.eval_annotations, loaded, image_ids=image_ids, verbose=False)
    assert list(stats) == list(STATS)
    assert all(-1.0 <= v <= 1.0 for v in stats.values())
