"""Checkpoints of a training run: model, optimizer slots, step (and EMA) under
<output>/model_dump/, written by tf.train.CheckpointManager (data files then an atomically
replaced `checkpoint` index, so a kill never leaves a half-written latest checkpoint), restored
automatically on restart; and initialisation from another run's checkpoint."""
import os
import shutil

import tensorflow as tf
from absl import logging

from lhrcnn.paths import resolve_checkpoint


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
        self.checkpoint = tf.train.Checkpoint(**objects)
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=max_to_keep)
        self.writer = (self.manager if self.write_directory == directory else
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

    def save(self, step):
        """Saves at `step`; returns the path in the run's directory."""
        path = self.writer.save(checkpoint_number=int(step))
        if self.writer is not self.manager:
            shutil.rmtree(self.write_directory, ignore_errors=True)
            return os.path.join(self.directory, os.path.basename(path))
        return path
