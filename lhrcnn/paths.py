"""Where lhrcnn looks for files.

One rule for every relative path, wherever lhrcnn is installed (a checkout or site-packages):
paths written in an experiment's config (train_annotations, train_images, eval_annotations,
eval_images, output_root) and paths given on the command line are relative to the current
working directory. The repository's configs name `data/...` and `output/` paths, so run the
scripts from the repository root (as `make test` and `make demo` do) or give absolute paths.
"""
import logging
import os
import re
import shutil
import socket
import tempfile
import time

from lhrcnn.errors import MissingPathError


def config_path(path):
    """A path written in a config: absolute paths and URLs (`gs://...`) as they are, a relative
    path joined to the current working directory (read at the call)."""
    path = os.fspath(path)
    if os.path.isabs(path) or "://" in path:
        return path
    return os.path.join(os.getcwd(), path)


def experiment_output_dir(config, experiment_dir):
    """The experiment's output folder, <output_root>/<user>/<experiment>/ (Config.output_dir),
    resolved as a config path."""
    return config_path(config.output_dir(experiment_dir))


def require_file(path, what):
    """`path` when it is a file; MissingPathError "<what> <path> does not exist" otherwise."""
    if not os.path.isfile(path):
        raise MissingPathError(f"{what} {path} does not exist")
    return path


def require_dir(path, what):
    """`path` when it is a folder; MissingPathError naming it otherwise."""
    if not os.path.isdir(path):
        raise MissingPathError(f"{what} {path} does not exist or is not a folder")
    return path


def resolve_checkpoint(path):
    """The checkpoint prefix (what tf.train.load_checkpoint and Checkpoint.read take) that `path`
    names:

      * a V2 checkpoint prefix: `<path>.index` exists -> `path`;
      * a V1 checkpoint, a single file (the slim ImageNet checkpoints) -> `path`;
      * a folder whose `checkpoint` state file names a checkpoint that exists -> that checkpoint
        (the latest one a CheckpointManager wrote);
      * a folder without such a state file (none, or it names files that are not there, e.g. a
        folder copied from elsewhere or written by Checkpoint.write) -> the prefix of the folder's
        newest *.index file (modification time).

    Raises MissingPathError (a UserError and a FileNotFoundError) naming `path` otherwise.
    Paths go through tf.io.gfile, so `gs://...` and other TensorFlow filesystems work too.
    """
    import tensorflow as tf
    path = os.fspath(path)
    gfile = tf.io.gfile

    def exists(prefix):
        return gfile.exists(prefix + ".index") or (gfile.exists(prefix) and not gfile.isdir(prefix))

    if gfile.isdir(path):
        prefix = tf.train.latest_checkpoint(path)
        if prefix and exists(prefix):
            return prefix
        indexes = [os.path.join(path, name) for name in gfile.listdir(path) if name.endswith(".index")]
        if indexes:
            newest = max(indexes, key=lambda f: (gfile.stat(f).mtime_nsec, f))
            return newest[:-len(".index")]
        raise MissingPathError(f"no checkpoint in folder {path} (no `checkpoint` state file naming an existing "
                               f"checkpoint, and no *.index file); pass a checkpoint prefix, e.g. "
                               f"{os.path.join(path, 'ckpt-1')}")
    if exists(path):
        return path
    raise MissingPathError(f"checkpoint {path} does not exist (expected {path}.index, a V1 checkpoint file, "
                           f"or a folder of checkpoints)")


# ----------------------------------------------------------------------------- staging folders

STALE_AFTER_SECONDS = 24 * 3600  # a staging folder of another host (or unmarked) is stale after this


def make_staging_dir(parent, prefix):
    """A new folder `<parent>/<prefix><host>-<pid>-<random>` to write an output into before it is
    renamed into place; the host and process id let remove_stale_staging tell a killed writer's
    folder from a running one's."""
    host = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"
    return tempfile.mkdtemp(prefix=f"{prefix}{host}-{os.getpid()}-", dir=parent)


def _writer_alive(name, prefix):
    """False when the folder's writer (the host and pid make_staging_dir puts at the end of its
    name) is a process of this host that is gone; None when unknown."""
    match = re.search(r"-(?P<host>[A-Za-z0-9._]+)-(?P<pid>\d+)-[^-]+$", name[len(prefix) - 1:])
    host = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"
    if not match or match.group("host") != host:
        return None
    try:
        os.kill(int(match.group("pid")), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_staging(parent, prefix):
    """Removes the staging folders `<parent>/<prefix>*` that writers killed before their rename
    left: those of a process of this host that no longer runs, and any older than a day. Returns
    the names removed."""
    removed = []
    if not os.path.isdir(parent):
        return removed
    for name in sorted(os.listdir(parent)):
        path = os.path.join(parent, name)
        if not name.startswith(prefix) or not os.path.isdir(path) or os.path.islink(path):
            continue
        alive = _writer_alive(name, prefix)
        try:
            old = time.time() - os.path.getmtime(path) > STALE_AFTER_SECONDS
        except OSError:
            continue
        if alive is False or (alive is None and old):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
            logging.getLogger(__name__).warning("removed %s, left by an interrupted write", path)
    return removed
