"""What every GUI driver needs: report, fail, and quit QGIS with the result written."""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qgis.core import Qgis, QgsApplication
from qgis.PyQt.QtCore import QTimer

RESULT = Path(os.environ["CLOUDSEG_GUI_RESULT"])
WORK = Path(os.environ["CLOUDSEG_GUI_WORK"])
REAL_DATA = Path(os.environ["CLOUDSEG_REAL_DATA"])
#: What the driver saw; written as JSON when it ends.
seen: dict[str, Any] = {"errors": [], "log": []}


def _log(message: str, tag: str, level: Qgis.MessageLevel) -> None:
    if level >= Qgis.Warning:
        seen["log"].append(f"{tag}: {message}")


QgsApplication.messageLog().messageReceived.connect(_log)


def finish() -> None:
    """Write what was seen and quit QGIS."""
    RESULT.write_text(json.dumps(seen, indent=2, default=str))
    QgsApplication.exit(0)


def step(function: Callable[[], Any], delay_ms: int = 500) -> None:
    """Run ``function`` from the event loop after ``delay_ms``; any exception ends the run."""

    def guarded() -> None:
        try:
            function()
        except Exception:
            seen["errors"].append(traceback.format_exc())
            finish()

    QTimer.singleShot(delay_ms, guarded)
