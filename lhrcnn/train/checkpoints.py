"""Checkpoints of a training run: model, optimizer slots, step (and EMA) under
<output>/model_dump/, written by tf.train.CheckpointManager (data files then an atomically
replaced `checkpoint` index, so a kill never leaves a half-written latest checkpoint), restored
automatically on restart; and initialisation from another run's checkpoint.

A run's folder is repaired when training starts (repair_checkpoint_dir): what killed saves leave
(ckpt-N_temp/ folders, the state file's temporaries) is removed, and the `checkpoint` state
lists only checkpoints whose files exist. A folder that cannot take one more checkpoint (read-only,
or with less free space than a checkpoint takes) fails before the first step, with one error naming
it (lhrcnn.errors.StorageError), and so does a save that fails."""
import errno
import os
import re
import shutil
import tempfile

import tensorflow as tf
from absl import logging

from lhrcnn.errors import StorageError, storage_error
from lhrcnn.paths import resolve_checkpoint

# what tf.train.CheckpointManager leaves when killed while saving: a sharded save's temporary
# folder, and the temporary of the atomically replaced state file
_STALE_TEMPORARY = re.compile(r"^(ckpt-\d+_temp|checkpoint\.tmp[0-9a-f]{32})$")


def _size_of(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)
    return os.path.getsize(path)


def repair_checkpoint_dir(directory):
    """Removes what killed saves left in `directory` and drops the `checkpoint` state's entries
    whose files are gone (the state then names the newest checkpoint that exists). Returns
    (removed temporaries, dropped state entries)."""
    removed, dropped = [], []
    if not os.path.isdir(directory):
        return removed, dropped
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if _STALE_TEMPORARY.match(name):
            size = _size_of(path)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            removed.append(name)
            logging.warning("removed %s (%.1f MB), left by a save that was interrupted", path, size / 2**20)
    state = tf.train.get_checkpoint_state(directory)
    if state is not None:
        listed = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
        if state.model_checkpoint_path and state.model_checkpoint_path not in listed:
            listed.append(state.model_checkpoint_path)

        def exists(prefix):
            prefix = prefix if os.path.isabs(prefix) else os.path.join(directory, prefix)
            return os.path.isfile(prefix + ".index")
        kept = [p for p in listed if exists(p)]
        dropped = [p for p in listed if not exists(p)]
        if dropped:
            if kept:
                tf.compat.v1.train.update_checkpoint_state(directory, kept[-1], all_model_checkpoint_paths=kept)
            else:
                os.remove(os.path.join(directory, "checkpoint"))
            logging.warning("the checkpoint state of %s listed %s, whose files are gone; it now lists %s",
                            directory, ", ".join(dropped), ", ".join(kept) or "nothing (training starts afresh)")
    return removed, dropped


def check_writable(directory, needed_bytes, resume_note):
    """StorageError naming `directory` when a file cannot be written there or its free space is
    below needed_bytes; `resume_note` says what a rerun does."""
    advice = f"make it writable (or pick another output folder) and run again; {resume_note}"
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-") as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as e:
        if e.errno == errno.ENOSPC:
            advice = f"free some space and run again; {resume_note}"
        raise storage_error("write checkpoints to", directory, e, advice) from None
    free = shutil.disk_usage(directory).free
    if free < needed_bytes:
        raise StorageError(f"cannot write checkpoints to {directory}: {free / 2**20:.0f} MB free, one more checkpoint "
                           f"needs about {needed_bytes / 2**20:.0f} MB; free some space and run again; {resume_note}")


def is_tf2_checkpoint(prefix):
    """True for an object-based (TF2) checkpoint, False for a name-based TF1 one."""
    try:
        names = {name for name, _ in tf.train.list_variables(prefix)}
    except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as e:
        raise FileNotFoundError(f"cannot read checkpoint {prefix}: {e}") from None
    return "_CHECKPOINTABLE_OBJECT_GRAPH" in names


def initialize_from(detector, path):
    """Loads the model weights of another run's TF2 checkpoint (`path`: a prefix or a folder, as
    lhrcnn.paths.resolve_checkpoint takes; optimizer state and step are not taken). Variables
    missing from the checkpoint keep their initialisation (logged)."""
    prefix = resolve_checkpoint(path)
    if not is_tf2_checkpoint(prefix):
        raise ValueError(f"{prefix} is a TF1 (name-based) checkpoint; convert it with "
                         "scripts/convert_tf1.py first")
    from lhrcnn.detector import checkpoint_model  # the earlier object layout too
    status = tf.train.Checkpoint(model=checkpoint_model(detector, prefix)).restore(prefix)
    status.expect_partial()
    logging.info("initialised the model from %s", prefix)
    return prefix


class TrainingCheckpoints:
    """Checkpoint manager of one training run.

    `directory` is the run's model_dump/: the latest checkpoint there is restored. Saves go to
    `write_directory` (default: the same); under multi-worker training every worker saves (a
    save may read replicated variables collectively) but only the chief writes into
    `directory`; the others write into a temporary directory of their own, removed after each
    save (lhrcnn.train.distribute.worker_directory)."""

    def __init__(self, directory, max_to_keep=5, write_directory=None, **objects):
        self.directory = directory
        self.write_directory = write_directory or directory
        self.objects = objects
        self.max_to_keep = max_to_keep
        self.checkpoint = tf.train.Checkpoint(**objects)
        self._make_managers()

    def _make_managers(self):
        """The managers read the state file when made: made again after repair_checkpoint_dir."""
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.directory, max_to_keep=self.max_to_keep)
        self.writer = (self.manager if self.write_directory == self.directory else
                       tf.train.CheckpointManager(self.checkpoint, self.write_directory, max_to_keep=1))

    def latest(self):
        """The latest checkpoint of the run's directory (re-read from disk), or None."""
        return tf.train.latest_checkpoint(self.directory)

    def restore_latest(self):
        """Restores the latest checkpoint of this run if there is one; returns its path or None."""
        latest = self.latest()
        if latest:
            checkpoint = self.checkpoint
            if "model" in self.objects:
                from lhrcnn.detector import checkpoint_model  # the earlier object layout too
                model = checkpoint_model(self.objects["model"], latest)
                if model is not self.objects["model"]:
                    checkpoint = tf.train.Checkpoint(**{**self.objects, "model": model})
            checkpoint.restore(latest).assert_existing_objects_matched()
            logging.info("resumed from %s", latest)
        return latest

    def checkpoint_bytes(self):
        """About what one checkpoint of these objects takes on disk: the latest one's files, or
        the variables' bytes before there is one."""
        latest = self.latest()
        if latest:
            folder, base = os.path.split(latest)
            return sum(_size_of(os.path.join(folder, n)) for n in os.listdir(folder)
                       if n == base + ".index" or n.startswith(base + ".data-"))
        variables = {id(v): v for v in self.checkpoint_variables()}.values()
        return sum(int(v.shape.num_elements() or 0) * v.dtype.size for v in variables)

    def checkpoint_variables(self):
        out = []
        for value in self.objects.values():
            out.extend(getattr(value, "variables", None) or ([value] if isinstance(value, tf.Variable) else []))
        return out

    def prepare(self):
        """Before training: repairs the run's folder (repair_checkpoint_dir) and checks that it
        takes one more checkpoint (with a 20% margin) -- StorageError otherwise. The chief only
        (other workers write into folders of their own)."""
        if self.write_directory != self.directory:
            return
        repair_checkpoint_dir(self.directory)
        self._make_managers()
        latest = self.latest()
        note = f"training resumes from {latest}" if latest else "training starts from the beginning"
        check_writable(self.directory, int(1.2 * self.checkpoint_bytes()), note)

    def save(self, step):
        """Saves at `step`; returns the path in the run's directory. A failed write removes its
        temporary files and raises StorageError naming the folder."""
        try:
            path = self.writer.save(checkpoint_number=int(step))
        except (tf.errors.OpError, OSError) as e:
            shutil.rmtree(os.path.join(self.write_directory, f"ckpt-{int(step)}_temp"), ignore_errors=True)
            latest = self.latest()
            note = f"training resumes from {latest}" if latest else "training starts from the beginning"
            if isinstance(e, OSError) and e.errno == errno.ENOSPC or "space" in str(e).lower():
                advice = f"free some space and run again; {note}"
            else:
                advice = f"make it writable (or pick another output folder) and run again; {note}"
            raise storage_error(f"write checkpoint {int(step)} to", self.write_directory, e, advice) from None
        if self.writer is not self.manager:
            shutil.rmtree(self.write_directory, ignore_errors=True)
            return os.path.join(self.directory, os.path.basename(path))
        return path
