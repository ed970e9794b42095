"""lhrcnn.paths: config paths resolve against the working directory (wherever lhrcnn is
installed), and resolve_checkpoint finds the checkpoint a path names or says which path has none."""
import os
import types

import pytest
import tensorflow as tf

from lhrcnn.errors import MissingPathError, UserError
from lhrcnn.paths import config_path, experiment_output_dir, require_dir, require_file, resolve_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(ROOT, "experiments/lhrcnn/light_head_rcnn.xception_star.synthetic")


# ----------------------------------------------------------------------------- config paths

def test_config_path_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_path("data/MSCOCO/val2014") == os.path.join(str(tmp_path), "data/MSCOCO/val2014")
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)  # read at each call, not at import
    assert config_path("data/MSCOCO/val2014") == os.path.join(str(other), "data/MSCOCO/val2014")
    assert config_path("/abs/data/x.json") == "/abs/data/x.json"
    assert config_path("gs://bucket/data/x.json") == "gs://bucket/data/x.json"
    assert config_path(tmp_path / "y") == str(tmp_path / "y")


def test_experiment_output_dir_from_another_working_directory(tmp_path, monkeypatch):
    from lhrcnn.config import load_config
    config = load_config(SYNTHETIC)
    monkeypatch.chdir(tmp_path)
    assert experiment_output_dir(config, SYNTHETIC) == os.path.join(
        str(tmp_path), "output", "lhrcnn", "light_head_rcnn.xception_star.synthetic")
    absolute = load_config(SYNTHETIC, output_root=str(tmp_path / "runs"))
    assert experiment_output_dir(absolute, SYNTHETIC) == os.path.join(
        str(tmp_path), "runs", "lhrcnn", "light_head_rcnn.xception_star.synthetic")


def test_trainer_reads_the_training_set_relative_to_the_working_directory(tmp_path, monkeypatch):
    """The config's data/synthetic/train/... are found under the CWD, not next to the package."""
    from lhrcnn.config import load_config
    from lhrcnn.data import synthetic
    from lhrcnn.train.trainer import Trainer
    synthetic.write_dataset(str(tmp_path / "data" / "synthetic" / "train"), 2, seed=3, workers=1)
    monkeypatch.chdir(tmp_path)
    dataset = Trainer.load_train_data(types.SimpleNamespace(config=load_config(SYNTHETIC)))
    assert len(dataset.records) == 2
    assert dataset.annotation_file == str(tmp_path / "data/synthetic/train/annotations.json")
    monkeypatch.chdir(tmp_path / "data")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "data" / "data/synthetic/train/annotations.json")):
        Trainer.load_train_data(types.SimpleNamespace(config=load_config(SYNTHETIC)))


def test_require_file_and_dir(tmp_path):
    (tmp_path / "f.json").write_text("{}")
    assert require_file(str(tmp_path / "f.json"), "annotation file") == str(tmp_path / "f.json")
    assert require_dir(str(tmp_path), "image folder") == str(tmp_path)
    with pytest.raises(MissingPathError, match=f"annotation file {tmp_path / 'nope.json'} does not exist"):
        require_file(str(tmp_path / "nope.json"), "annotation file")
    with pytest.raises(MissingPathError, match="image folder .*f.json does not exist or is not a folder"):
        require_dir(str(tmp_path / "f.json"), "image folder")


# ----------------------------------------------------------------------------- checkpoints

def _write(prefix, value=1.0):
    """A V2 checkpoint at `prefix` without a `checkpoint` state file (Checkpoint.write)."""
    return tf.train.Checkpoint(v=tf.Variable(value)).write(str(prefix))


def _write_v1(path):
    """A V1 (single-file) checkpoint at `path`; the Saver also writes the folder's state file."""
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.get_variable("w", initializer=tf.constant([1.0, 2.0]))
        saver = tf.compat.v1.train.Saver(write_version=tf.compat.v1.train.SaverDef.V1)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            return saver.save(session, str(path), write_meta_graph=False)


def _set_mtime(prefix, seconds):
    os.utime(prefix + ".index", (seconds, seconds))


def test_v2_prefix(tmp_path):
    prefix = _write(tmp_path / "ckpt-3")
    assert resolve_checkpoint(prefix) == prefix
    assert resolve_checkpoint(tmp_path / "ckpt-3") == prefix  # os.PathLike


def test_v1_single_file(tmp_path):
    path = _write_v1(tmp_path / "v1" / "resnet_v1_50.ckpt")
    assert os.path.isfile(path) and not os.path.exists(path + ".index")
    assert resolve_checkpoint(path) == path
    assert resolve_checkpoint(str(tmp_path / "v1")) == path  # its folder: the Saver's state file names it
    assert tf.train.load_checkpoint(resolve_checkpoint(path)).get_tensor("w").tolist() == [1.0, 2.0]


def test_folder_with_a_state_file_gives_its_latest_checkpoint(tmp_path):
    checkpoint = tf.train.Checkpoint(v=tf.Variable(1.0))
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=3)
    first = manager.save(checkpoint_number=1)
    latest = manager.save(checkpoint_number=2)
    _set_mtime(first, 4_000_000_000)  # the state file decides, not the modification times
    assert resolve_checkpoint(str(tmp_path)) == latest
    assert resolve_checkpoint(str(tmp_path) + os.sep) == latest


def test_folder_without_a_state_file_gives_the_newest_index(tmp_path):
    older, newer = _write(tmp_path / "ckpt-20"), _write(tmp_path / "ckpt-3")
    _set_mtime(older, 1_000_000_000)
    _set_mtime(newer, 2_000_000_000)
    assert not os.path.exists(tmp_path / "checkpoint")
    assert resolve_checkpoint(str(tmp_path)) == newer
    _set_mtime(older, 3_000_000_000)
    assert resolve_checkpoint(str(tmp_path)) == older


def test_folder_whose_state_file_names_missing_checkpoints(tmp_path):
    """A folder copied from elsewhere: the state file names absolute paths that are not there."""
    prefix = _write(tmp_path / "ckpt-5")
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "/nowhere/model_dump/ckpt-5"\n'
                                         'all_model_checkpoint_paths: "/nowhere/model_dump/ckpt-5"\n')
    assert resolve_checkpoint(str(tmp_path)) == prefix


def test_relative_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    _write(tmp_path / "model_dump" / "ckpt-1")
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint("model_dump") == os.path.join("model_dump", "ckpt-1")
    assert resolve_checkpoint(os.path.join("model_dump", "ckpt-1")) == os.path.join("model_dump", "ckpt-1")
    monkeypatch.chdir(tmp_path / "model_dump")
    with pytest.raises(MissingPathError, match="model_dump"):
        resolve_checkpoint("model_dump")


def test_missing_checkpoint_errors_name_the_path(tmp_path):
    missing = str(tmp_path / "run" / "ckpt-7")
    with pytest.raises(MissingPathError) as error:
        resolve_checkpoint(missing)
    assert str(error.value) == (f"checkpoint {missing} does not exist (expected {missing}.index, a V1 checkpoint "
                                f"file, or a folder of checkpoints)")
    assert isinstance(error.value, UserError) and isinstance(error.value, FileNotFoundError)

    with pytest.raises(MissingPathError, match=f"no checkpoint in folder {tmp_path}") as error:
        resolve_checkpoint(str(tmp_path))  # an empty folder
    assert isinstance(error.value, UserError) and isinstance(error.value, FileNotFoundError)

    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "ckpt-9"\n')  # names nothing there
    (tmp_path / "ckpt-9.data-00000-of-00001").write_bytes(b"")  # data without an index is no checkpoint
    with pytest.raises(MissingPathError, match=f"no checkpoint in folder {tmp_path}"):
        resolve_checkpoint(str(tmp_path))


def test_user_error_is_not_a_file_error():
    """Bad flags are UserErrors too; only missing paths are also FileNotFoundErrors."""
    assert not issubclass(UserError, FileNotFoundError)
    assert issubclass(MissingPathError, UserError) and issubclass(MissingPathError, FileNotFoundError)
    assert str(MissingPathError("image /x.png does not exist")) == "image /x.png does not exist"
