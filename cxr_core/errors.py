"""Exceptions whose message is written for the person at the screen, not for a developer.

Every failure that reaches a clinician (an upload the core cannot read, a model file that fails its
checksum) is raised as one of these so the dashboard and the CLI can show ``str(error)`` as it is,
without a traceback and without guessing what went wrong.
"""

import errno


class CxrError(Exception):
    """Base of every error the core raises on purpose; its message is safe to show a user."""


class ImageError(CxrError):
    """The input could not be turned into a chest X-ray image (not an image, truncated, too large)."""


class ModelError(CxrError):
    """A model version is missing, corrupt or fails its checksum."""


class DatasetError(CxrError):
    """A dataset path holds nothing the pipeline can train on."""


_OS_ERROR_ADVICE = {
    errno.ENOSPC: "free disk space on the server, then try again",
    errno.EDQUOT: "free disk space (the disk quota is used up), then try again",
    errno.EROFS: "the folder is on a read-only file system; choose a writable one",
    errno.EACCES: "check the folder's permissions",
    errno.EPERM: "check the folder's permissions",
}


def os_error_message(error: OSError) -> str:
    """One readable line for a failed file operation (a full disk, a read-only folder), no traceback."""
    what = error.strerror or str(error) or type(error).__name__
    where = error.filename if error.filename is not None else None
    text = f"{what}: {where}" if where is not None else what
    advice = _OS_ERROR_ADVICE.get(error.errno)
    return f"{text} ({advice})" if advice else text
