"""Typed errors of cloudseg. Each message is one line that says what to do."""

from __future__ import annotations


class CloudsegError(Exception):
    """Base class of the errors cloudseg reports to users (CLI, QGIS, Python)."""


class MissingDependencyError(CloudsegError, ImportError):
    """A Python package that this operation needs is not installed."""
