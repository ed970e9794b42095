"""`lhrcnn new-experiment` (lhrcnn/experiment_files.py): the new folder's config, loaded on its own,
has every field of the source experiment (as lhrcnn.config loads the source, through the
experiments it extends) with the overrides applied; its outputs follow its own name; errors name
the problem and leave nothing behind."""
import math
import os
import subprocess
import sys

import pytest

from lhrcnn import config as config_lib
from lhrcnn import experiment_files
from lhrcnn.cli import find_experiments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = find_experiments(os.path.join(ROOT, "experiments"))
COMPARED = sorted(config_lib.Config.known_fields() - set(experiment_files.NEVER_WRITTEN))


def _fields(cls):
    return {name: getattr(cls, name) for name in COMPARED}


def test_every_experiment_is_found():
    assert len(EXPERIMENTS) >= 13, EXPERIMENTS


@pytest.mark.parametrize("source", EXPERIMENTS, ids=lambda p: os.path.relpath(p, os.path.join(ROOT, "experiments")))
def test_copy_has_every_field_of_the_source(source, tmp_path):
    dest = str(tmp_path / "me" / "copy")
    experiment_files.new_experiment(source, dest)
    assert sorted(os.listdir(dest)) == ["config.py", "network_desp.py"]
    with open(os.path.join(source, "network_desp.py")) as a, open(os.path.join(dest, "network_desp.py")) as b:
        assert a.read() == b.read()
    with open(os.path.join(dest, "config.py")) as f:
        text = f.read()
    assert "base_experiment_config" not in text and "class ExperimentConfig(Config):" in text
    original, copy = config_lib.load_config_class(source), config_lib.load_config_class(dest)
    assert copy.__bases__ == (config_lib.Config,)
    assert _fields(copy) == _fields(original)
    for name in COMPARED:  # same types too: a list where a tuple was would compare unequal only sometimes
        assert type(getattr(copy, name)) is type(getattr(original, name)), name
    assert not [n for n in os.listdir(tmp_path / "me") if n != "copy"]  # no staging folder left


def test_overrides_and_the_new_folders_outputs(tmp_path):
    source = os.path.join(ROOT, "experiments/lhrcnn/thundernet.snet146.synthetic")
    dest = str(tmp_path / "team" / "pets")
    overrides = {"train_annotations": "data/pets/train.json", "max_epoch": 3, "image_short_size": (288, 320),
                 "test_score_threshold": 0.25, "gradient_clip_norm": None}
    experiment_files.new_experiment(source, dest, overrides)
    copy = config_lib.load_config_class(dest)
    expected = dict(_fields(config_lib.load_config_class(source)), **overrides)
    assert _fields(copy) == expected
    assert copy.gradient_clip_norm is None and copy.image_short_size == (288, 320)
    # a field set back to Config's default is still written: the override is visible in the file
    with open(os.path.join(dest, "config.py")) as f:
        text = f.read()
    assert "    gradient_clip_norm = None\n" in text and "max_epoch=3" in text
    loaded = config_lib.load_config(dest)
    assert loaded.output_dir(dest) == os.path.join("output", "team", "pets")


def test_class_names_from_annotations_stays_a_reference(tmp_path):
    source = os.path.join(ROOT, "experiments/templates/thundernet.snet146.coco_json")
    dest = str(tmp_path / "mine")
    experiment_files.new_experiment(source, dest, {"train_annotations": "elsewhere/train.json"})
    copy = config_lib.load_config_class(dest)
    assert copy.class_names == config_lib.FROM_ANNOTATIONS and copy.train_annotations == "elsewhere/train.json"


@pytest.mark.parametrize("case", ["exists", "not_an_experiment", "missing", "unknown_field", "not_literal"])
def test_errors_name_the_problem_and_write_nothing(case, tmp_path):
    source = os.path.join(ROOT, "experiments/lhrcnn/thundernet.snet146.synthetic")
    dest = str(tmp_path / "new")
    overrides = {}
    if case == "exists":
        os.makedirs(dest)
        error, fragment = FileExistsError, dest
    elif case == "not_an_experiment":
        source = os.path.join(ROOT, "experiments/lhrcnn/synthetic.base")
        error, fragment = FileNotFoundError, "network_desp.py"
    elif case == "missing":
        source = str(tmp_path / "nowhere")
        error, fragment = FileNotFoundError, "nowhere"
    elif case == "unknown_field":
        overrides = {"max_epoc": 3}
        error, fragment = ValueError, "did you mean 'max_epoch'"
    else:
        overrides = {"basic_lr": math.inf}
        error, fragment = ValueError, "basic_lr = inf"
    with pytest.raises(error) as raised:
        experiment_files.new_experiment(source, dest, overrides)
    assert fragment in str(raised.value)
    assert os.listdir(tmp_path) == (["new"] if case == "exists" else [])
    if case == "exists":
        assert os.listdir(dest) == []


def test_the_command(tmp_path):
    source = os.path.join(ROOT, "experiments/templates/thundernet.snet146.coco_json")
    env = dict(os.environ, PYTHONPATH=ROOT)

    def lhrcnn(*args):
        return subprocess.run([sys.executable, "-m", "lhrcnn", "new-experiment", *args], cwd=str(tmp_path),
                              env=env, capture_output=True, text=True, timeout=120)

    done = lhrcnn("experiments/me/pets", "--from", source, "--set", "train_images=data/pets/images",
                  "--set", "max_epoch=2")
    assert done.returncode == 0, done.stderr
    assert "lhrcnn train --experiment experiments/me/pets" in done.stdout
    copy = config_lib.load_config_class(str(tmp_path / "experiments/me/pets"))
    assert copy.train_images == "data/pets/images" and copy.max_epoch == 2
    again = lhrcnn("experiments/me/pets", "--from", source)
    assert again.returncode == 1 and again.stderr.strip().splitlines() == [
        "error: experiments/me/pets already exists; choose another folder or remove it"]
    typo = lhrcnn("experiments/me/other", "--from", source, "--set", "max_epoc=2")
    assert typo.returncode == 1 and "did you mean 'max_epoch'" in typo.stderr and "Traceback" not in typo.stderr
    usage = lhrcnn("experiments/me/other")
    assert usage.returncode == 2 and usage.stderr.startswith("error: ") and "--from" in usage.stderr
    assert not os.path.exists(tmp_path / "experiments/me/other")
