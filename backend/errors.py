"""Typed errors of cloudseg. Each message is one line that says what to do."""

from __future__ import annotations


class CloudsegError(Exception):
    """Base class of the errors cloudseg reports to users (CLI, QGIS, Python)."""


class BandError(CloudsegError, ValueError):
    """A band name is unknown, repeated, or a band the model needs is missing."""


class InputError(CloudsegError, ValueError):
    """The input raster or product cannot be used as it is (CRS, size, format)."""


class ModelError(CloudsegError, ValueError):
    """A model or its card is missing, invalid or does not fit the input."""


class OutputExistsError(CloudsegError, FileExistsError):
    """The output exists and overwriting was not asked for."""


class CancelledError(CloudsegError):
    """The run was cancelled; nothing that looks like a result was left behind."""


class WriteError(CloudsegError, OSError):
    """A write that a file or database refused (a constraint, a trigger, a locked file)."""


class OutputConflictError(CloudsegError, ValueError):
    """An output is an input or another output of the run, or another run holds it."""
