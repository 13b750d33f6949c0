"""A QgsTask that runs backend work off the UI thread and hands back its outcome."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qgis.core import QgsTask

from ..backend.errors import CancelledError, CloudsegError

#: ``work(progress, cancelled)``: progress takes (percent, message); cancelled polls.
Work = Callable[[Callable[[float, str], None], Callable[[], bool]], Any]


class BackendTask(QgsTask):
    """Runs ``work(progress, cancelled)`` in a QGIS worker thread; hands back the outcome.

    ``result`` holds what ``work`` returned; ``error`` a one-line message when it
    failed; neither when it was cancelled.
    """

    def __init__(
        self,
        description: str,
        work: Work,
        on_done: Callable[[BackendTask], None],
    ) -> None:
        super().__init__(description, QgsTask.CanCancel)
        self.work = work
        self.on_done = on_done
        self.result: Any = None
        self.error = ""
        self.message = ""

    def run(self) -> bool:
        """The work, off the UI thread. Returns success."""

        def progress(percent: float, message: str = "") -> None:
            self.message = message
            self.setProgress(max(0.0, min(100.0, float(percent))))

        try:
            self.result = self.work(progress, self.isCanceled)
            return True
        except CancelledError:
            return False
        except CloudsegError as exc:
            self.error = str(exc)
            return False
        except Exception as exc:  # report anything else instead of losing it in a thread
            self.error = f"unexpected error: {type(exc).__name__}: {exc}"
            return False

    def finished(self, ok: bool) -> None:
        """Back on the UI thread: hand the outcome to the dock.

        An error in the dock's handler is logged: raised from a Qt slot it would abort
        QGIS (PyQt's default), losing the user's session.
        """
        try:
            self.on_done(self)
        except Exception as exc:
            import traceback

            from qgis.core import Qgis, QgsMessageLog

            QgsMessageLog.logMessage(
                f"{self.description()}: unexpected error: {type(exc).__name__}: {exc}\n"
                + traceback.format_exc(),
                "cloudseg",
                Qgis.Critical,
            )
