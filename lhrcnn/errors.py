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
