"""The callbacks long work takes: progress reports and cancel polls.

Every long operation (segment, ingest, train, evaluate, polygons) reports progress and
polls for cancel through these types, so the CLI's progress bar, QGIS's
``QgsProcessingFeedback`` and a ``QgsTask`` all plug into any of them the same way.
"""

from __future__ import annotations

from collections.abc import Callable

#: ``progress(percent, message)``: percent is 0-100.
ProgressCallback = Callable[[float, str], None]
#: ``cancelled()``: polled between units of work; True stops the run cleanly.
CancelCallback = Callable[[], bool]
#: ``progress(done, total, item)``: for work counted in items (scenes).
CountCallback = Callable[[int, int, str], None]


def no_progress(percent: float, message: str) -> None:
    """A progress callback that reports nowhere."""


def never_cancelled() -> bool:
    """A cancel poll that never cancels."""
    return False
