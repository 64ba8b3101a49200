"""User-facing exceptions. The CLI prints these as one line (no traceback) and exits with code 2.

Raise them for problems a user can fix (bad input, missing file, wrong option); let programming
errors surface as ordinary exceptions.
"""

from __future__ import annotations


class MammoclipError(Exception):
    """Base class of every error a user can act on."""


class DataError(MammoclipError):
    """Bad or missing input data: a corrupt DICOM, a malformed CSV, a manifest problem."""


class ImageError(DataError):
    """One image that cannot be processed, with a stable ``code`` (``mammoclip.imaging.failures``)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[type[ImageError], tuple[str, str]]:  # picklable across processes
        return type(self), (str(self), self.code)


class ConfigError(MammoclipError):
    """An invalid option, configuration value or model name."""


class CheckpointError(MammoclipError):
    """A checkpoint that cannot be loaded safely or does not match the model."""
