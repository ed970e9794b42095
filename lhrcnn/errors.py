"""Errors the user can fix. The scripts catch UserError, print its message as one line
(`error: ...`) and exit with status 1, without a traceback."""


class UserError(Exception):
    """A mistake the user can fix: a missing file, a bad flag, an unreadable input."""


class MissingPathError(UserError, FileNotFoundError):
    """A file, folder or checkpoint named by the user (or by a config) that does not exist; the
    message names the path. Also a FileNotFoundError, so code that catches that keeps working."""


class DataError(UserError, ValueError):
    """A dataset file that cannot be used (not JSON, a malformed entry); the message names the file
    and the entry. Also a ValueError, so code that catches that keeps working."""


class StorageError(UserError, OSError):
    """A folder that cannot be written (read-only, full, no permission); the message names the
    path, the reason and what to do. Also an OSError, so code that catches that keeps working."""


def storage_error(action, path, error, advice):
    """A StorageError for an OSError or TensorFlow I/O error `error` while `action` on `path`."""
    import re
    reason = getattr(error, "strerror", None) or getattr(error, "message", None) or str(error)
    reason = str(reason).strip().splitlines()[0] if str(reason).strip() else type(error).__name__
    # TensorFlow's decorations of an op's error: {{function_node ...}} before it, [Op:SaveV2] after
    reason = re.sub(r"\s*\[Op:\w+\]", "", re.sub(r"\{\{[^}]*\}\}\s*", "", reason)).strip()
    return StorageError(f"cannot {action} {path}: {reason}; {advice}")


_STORAGE_ERRNOS = {"ENOSPC", "EROFS", "EACCES", "EPERM", "EDQUOT"}
_STORAGE_MESSAGES = ("no space left on device", "read-only file system", "permission denied", "disk quota exceeded")


def is_storage_failure(error):
    """True for an OSError or TensorFlow error of a folder that cannot be written: full, read-only,
    no permission, over quota."""
    import errno
    if isinstance(error, OSError) and error.errno is not None:
        return errno.errorcode.get(error.errno) in _STORAGE_ERRNOS
    text = str(getattr(error, "message", None) or error).lower()
    return any(m in text for m in _STORAGE_MESSAGES)
