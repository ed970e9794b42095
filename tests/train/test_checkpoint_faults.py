"""Faults around checkpoints and exports: debris of killed saves is removed on start, the state
file lists only checkpoints that exist, a folder that cannot take a checkpoint fails before the
first step with one error naming it, and staging folders of killed exports are removed."""
import errno
import re
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from batches import tiny_batch
from lhrcnn.errors import StorageError
from lhrcnn.paths import make_staging_dir, remove_stale_staging
from lhrcnn.train import checkpoints as checkpoints_lib
from lhrcnn.train.checkpoints import TrainingCheckpoints, repair_checkpoint_dir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYNTHETIC = os.path.join(ROOT, "experiments/lhrcnn/light_head_rcnn.xception_star.synthetic")


def _run_with_checkpoints(directory, steps):
    step = tf.Variable(0, dtype=tf.int64)
    weights = tf.Variable(np.zeros([1000], np.float32))
    run = TrainingCheckpoints(str(directory), max_to_keep=5, step=step, weights=weights)
    for s in steps:
        step.assign(s)
        weights.assign(np.full([1000], s, np.float32))
        run.save(s)
    return run, step, weights


def _state(directory):
    state = tf.train.get_checkpoint_state(str(directory))
    return ([os.path.basename(p) for p in state.all_model_checkpoint_paths],
            os.path.basename(state.model_checkpoint_path)) if state else None


def test_repair_removes_killed_saves_and_mends_the_state(tmp_path):
    _run_with_checkpoints(tmp_path, [1, 2, 3])
    # what a kill during save 4 leaves (TF's sharded save writes <prefix>_temp/part-... first) ...
    (tmp_path / "ckpt-4_temp").mkdir()
    (tmp_path / "ckpt-4_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"\0" * 4096)
    (tmp_path / ("checkpoint.tmp" + "0123456789abcdef" * 2)).write_text("model_checkpoint_path: \"ckpt-4\"")
    # ... and a kill between deleting an old checkpoint and writing the state
    for name in os.listdir(tmp_path):
        if name.startswith("ckpt-2."):
            os.remove(tmp_path / name)
    (tmp_path / "ckpt-12_temporary_notes").mkdir()  # not TF's: kept
    removed, dropped = repair_checkpoint_dir(str(tmp_path))
    assert removed == ["checkpoint.tmp" + "0123456789abcdef" * 2, "ckpt-4_temp"]
    assert [os.path.basename(p) for p in dropped] == ["ckpt-2"]
    assert _state(tmp_path) == (["ckpt-1", "ckpt-3"], "ckpt-3")
    assert sorted(n for n in os.listdir(tmp_path) if "temp" in n) == ["ckpt-12_temporary_notes"]
    # the latest checkpoint's files gone too: the state names the newest one that exists
    for name in os.listdir(tmp_path):
        if name.startswith("ckpt-3."):
            os.remove(tmp_path / name)
    repair_checkpoint_dir(str(tmp_path))
    assert _state(tmp_path) == (["ckpt-1"], "ckpt-1")
    run, step, weights = _run_with_checkpoints(tmp_path, [])
    assert os.path.basename(run.restore_latest()) == "ckpt-1" and int(step) == 1 and float(weights[0]) == 1.0
    # nothing left: the state file goes, a run starts afresh
    for name in os.listdir(tmp_path):
        if name.startswith("ckpt-1."):
            os.remove(tmp_path / name)
    repair_checkpoint_dir(str(tmp_path))
    assert _state(tmp_path) is None and tf.train.latest_checkpoint(str(tmp_path)) is None


def test_a_killed_save_is_cleaned_when_training_starts_again(tmp_path):
    """A child process saves checkpoint 1, then is killed (SIGKILL) in the middle of save 2."""
    child = subprocess.run([sys.executable, "-c", f"""
import os, signal, numpy as np, tensorflow as tf
from lhrcnn.train.checkpoints import TrainingCheckpoints
w = tf.Variable(np.zeros([2_000_000], np.float32))
run = TrainingCheckpoints({str(tmp_path)!r}, w=w)
run.save(1)
original = tf.raw_ops.MergeV2Checkpoints
def killed_merge(**kwargs):  # the shards are written, the merge into ckpt-2 never happens
    os.kill(os.getpid(), signal.SIGKILL)
tf.raw_ops.MergeV2Checkpoints = killed_merge
from tensorflow.python.ops import gen_io_ops
gen_io_ops.merge_v2_checkpoints = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
run.save(2)
"""], capture_output=True, text=True, timeout=300)
    assert child.returncode == -9, child.stderr[-2000:]
    assert "ckpt-2_temp" in os.listdir(tmp_path), os.listdir(tmp_path)
    run = TrainingCheckpoints(str(tmp_path), w=tf.Variable(np.zeros([2_000_000], np.float32)))
    run.prepare()
    assert "ckpt-2_temp" not in os.listdir(tmp_path) and os.path.basename(run.latest()) == "ckpt-1"
    assert os.path.basename(run.save(2)) == "ckpt-2"


def test_a_full_folder_fails_before_the_first_step(tmp_path, monkeypatch, capsys):
    from lhrcnn.train.trainer import Trainer
    fn = lambda _ctx: tf.data.Dataset.from_tensors(tiny_batch()).repeat()  # noqa: E731
    trainer = Trainer(SYNTHETIC, output_dir=str(tmp_path), train_dataset=fn, total_steps=3, checkpoint_every=1)
    needed = trainer.checkpoints.checkpoint_bytes()
    assert needed > 1e6  # the variables and the optimizer's slots
    disk_usage = checkpoints_lib.shutil.disk_usage
    monkeypatch.setattr(checkpoints_lib.shutil, "disk_usage", lambda path: disk_usage(path)._replace(free=needed // 2))
    with pytest.raises(StorageError, match=rf"cannot write checkpoints to {tmp_path}/model_dump: \d+ MB free, one more "
                                           r"checkpoint needs about \d+ MB; free some space and run again; training "
                                           r"starts from the beginning"):
        trainer.train()
    assert int(trainer.optimizer.iterations) == 0  # no step was done (and none is redone on the next try)


def test_a_failed_save_is_one_error_and_leaves_no_temporary(tmp_path, monkeypatch):
    run, _, _ = _run_with_checkpoints(tmp_path, [1])

    def full(**kwargs):
        os.makedirs(tmp_path / "ckpt-2_temp", exist_ok=True)
        raise tf.errors.ResourceExhaustedError(None, None, "{{function_node __wrapped__SaveV2_dtypes_9_device_/job:"
                                                           "localhost/replica:0/task:0/device:CPU:0}} ckpt-2_temp/"
                                                           "part-00000; No space left on device [Op:SaveV2]")
    monkeypatch.setattr(run.writer, "save", lambda checkpoint_number: full())
    with pytest.raises(StorageError) as error:
        run.save(2)
    message = str(error.value)
    assert message.startswith(f"cannot write checkpoint 2 to {tmp_path}: ckpt-2_temp/part-00000; No space left on "
                              "device; free some space")
    assert "free some space and run again; training resumes from" in message and message.endswith("ckpt-1")
    assert "\n" not in message and "ckpt-2_temp" not in os.listdir(tmp_path)


def test_check_writable_names_a_read_only_folder(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(checkpoints_lib.tempfile, "NamedTemporaryFile", read_only)
    with pytest.raises(StorageError, match=rf"^cannot write checkpoints to {tmp_path}: Read-only file system; "
                                           r"make it writable \(or pick another output folder\) and run again; x$"):
        checkpoints_lib.check_writable(str(tmp_path), 0, "x")


def test_stale_staging_folders_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())
    stale = tmp_path / f".tmp-3-{host}-{dead.pid}-abc"
    stale.mkdir()
    (stale / "saved_model.pb").write_bytes(b"\0" * 1000)
    live = make_staging_dir(str(tmp_path), ".tmp-4-")  # this process: running
    other_host = tmp_path / ".tmp-5-elsewhere-1-abc"
    other_host.mkdir()
    old_other_host = tmp_path / ".tmp-6-elsewhere-1-def"
    old_other_host.mkdir()
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(old_other_host, (day_ago, day_ago))
    (tmp_path / "1").mkdir()  # a version: never touched
    assert remove_stale_staging(str(tmp_path), ".tmp-") == [stale.name, old_other_host.name]
    assert sorted(os.listdir(tmp_path)) == sorted(["1", os.path.basename(live), other_host.name])


def test_storage_failures_are_told_apart_from_other_errors():
    from lhrcnn.errors import is_storage_failure
    assert is_storage_failure(OSError(errno.ENOSPC, "No space left on device"))
    assert is_storage_failure(PermissionError(errno.EACCES, "Permission denied"))
    assert is_storage_failure(OSError(errno.EROFS, "Read-only file system"))
    assert is_storage_failure(tf.errors.ResourceExhaustedError(None, None, "x/part-0; No space left on device"))
    assert is_storage_failure(RuntimeError("conversion failed: [Errno 28] No space left on device"))
    assert not is_storage_failure(FileNotFoundError(errno.ENOENT, "No such file or directory"))
    assert not is_storage_failure(tf.errors.InvalidArgumentError(None, None, "shape mismatch"))


def test_an_export_onto_a_full_disk_is_one_error_line(tmp_path, monkeypatch):
    from lhrcnn import cli
    from lhrcnn.cli import _raise_if_storage_failure
    with pytest.raises(StorageError, match=rf"^cannot write the export to {tmp_path}: No space left on device; free "
                                           r"some space or make the folder writable, then run again \(nothing was "
                                           r"written\)$"):
        _raise_if_storage_failure(OSError(errno.ENOSPC, "No space left on device"), str(tmp_path))
    _raise_if_storage_failure(ValueError("not a storage failure"), str(tmp_path))  # left to its own handler
    assert issubclass(StorageError, cli.UserError)  # printed as one `error:` line, status 1
