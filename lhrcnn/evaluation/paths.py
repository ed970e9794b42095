"""Where the evaluation scripts look for things. Paths written in an experiment's config
(eval_annotations, eval_images, output_root) are relative to the repository root, so the
scripts behave the same from any working directory; paths given on the command line are
relative to the working directory, as for any command."""
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class UserError(Exception):
    """A mistake the user can fix (a missing file, a bad flag): the scripts print its message as
    one line and exit with status 1."""


def config_path(path):
    """A path from a config: absolute as is, else relative to the repository root."""
    return path if os.path.isabs(path) else os.path.join(REPO_ROOT, path)


def experiment_output_dir(config, experiment_dir):
    """output/<user>/<experiment>/ under the repository root (or output_root when absolute)."""
    return config_path(config.output_dir(experiment_dir))


def require_file(path, what):
    if not os.path.isfile(path):
        raise UserError(f"{what} {path} does not exist")
    return path


def require_dir(path, what):
    if not os.path.isdir(path):
        raise UserError(f"{what} {path} does not exist or is not a folder")
    return path


def resolve_checkpoint(path):
    """A checkpoint prefix from a prefix or a folder (its latest checkpoint per the folder's
    `checkpoint` file, else its newest *.index); UserError naming the path when there is none."""
    import tensorflow as tf
    if os.path.isdir(path):
        prefix = tf.train.latest_checkpoint(path)
        if not prefix or not tf.io.gfile.exists(prefix + ".index"):
            # no (valid) `checkpoint` state file, e.g. written by tf.train.Checkpoint.write: the newest *.index
            indexes = [os.path.join(path, f) for f in os.listdir(path) if f.endswith(".index")]
            if not indexes:
                raise UserError(f"no checkpoint in {path} (train first, or pass --checkpoint)")
            prefix = max(indexes, key=os.path.getmtime)[:-len(".index")]
        return prefix
    if not tf.io.gfile.exists(path + ".index"):
        raise UserError(f"checkpoint {path} does not exist (expected {path}.index, or a folder of checkpoints)")
    return path
