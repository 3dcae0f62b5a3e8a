"""Exceptions whose message is written for the person at the screen, not for a developer.

Every failure that reaches a clinician (an upload the core cannot read, a model file that fails its
checksum) is raised as one of these so the dashboard and the CLI can show ``str(error)`` as it is,
without a traceback and without guessing what went wrong.
"""


class CxrError(Exception):
    """Base of every error the core raises on purpose; its message is safe to show a user."""


class ImageError(CxrError):
    """The input could not be turned into a chest X-ray image (not an image, truncated, too large)."""


class ModelError(CxrError):
    """A model version is missing, corrupt or fails its checksum."""


class DatasetError(CxrError):
    """A dataset path holds nothing the pipeline can train on."""
