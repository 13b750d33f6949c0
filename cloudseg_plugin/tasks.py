"""Background work for the docks: a QgsTask for backend work, and the runner that starts it.

:class:`BackendTask` runs ``work(progress, cancelled)`` off the UI thread and hands its
outcome back on it. :class:`TaskRunner` is what a dock keeps to run such tasks one at a
time: busy state, the task manager, progress bar, Cancel button, widgets that wait
while a task runs, and the message when a task fails or is cancelled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qgis.core import Qgis, QgsApplication, QgsTask

from ..backend.dependencies import missing_from
from ..backend.errors import CancelledError, CloudsegError
from .messages import DOCK, for_qgis

#: ``work(progress, cancelled)``: progress takes (percent, message); cancelled polls.
Work = Callable[[Callable[[float, str], None], Callable[[], bool]], Any]
#: ``say(text, level)``: how a dock tells the analyst (status line, log, message bar).
Say = Callable[[str, Qgis.MessageLevel], None]


class BackendTask(QgsTask):
    """Runs ``work(progress, cancelled)`` in a QGIS worker thread; hands back the outcome.

    ``result`` holds what ``work`` returned; ``error`` a one-line message when it
    failed; neither when it was cancelled. :attr:`succeeded` tells them apart.
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
        self.ran = False  # the work returned (it may still have been cancelled after)

    @property
    def succeeded(self) -> bool:
        """The work returned, and nobody cancelled the task meanwhile."""
        return self.ran and not self.error and not self.isCanceled()

    def run(self) -> bool:
        """The work, off the UI thread. Returns success."""

        def progress(percent: float, message: str = "") -> None:
            self.message = message
            self.setProgress(max(0.0, min(100.0, float(percent))))

        try:
            self.result = self.work(progress, self.isCanceled)
            self.ran = True
            return True
        except CancelledError:
            return False
        except CloudsegError as exc:
            self.error = str(exc)
            return False
        except Exception as exc:  # report anything else instead of losing it in a thread
            missing = missing_from(exc, where="qgis")
            self.error = missing or f"unexpected error: {type(exc).__name__}: {exc}"
            return False

    def finished(self, ok: bool) -> None:
        """Back on the UI thread: hand the outcome to the dock.

        An error in the dock's handler is logged: raised from a Qt slot it would abort
        QGIS (PyQt's default), losing the user's session.
        """
        what = self.description()  # read now: the handler may end the task's life
        try:
            self.on_done(self)
        except Exception as exc:
            import traceback

            from qgis.core import QgsMessageLog

            QgsMessageLog.logMessage(
                f"{what}: unexpected error: {type(exc).__name__}: {exc}\n" + traceback.format_exc(),
                "cloudseg",
                Qgis.Critical,
            )


class TaskRunner:
    """Runs a dock's background tasks, one at a time.

    The runner owns what every dock repeats around its tasks: whether one is running,
    adding it to QGIS's task manager, its progress (bar and status line), the Cancel
    button, the widgets that wait while it runs, and what is said when it fails or is
    cancelled. The task's own handler then runs only for a task that succeeded::

        self.runner = TaskRunner(self.say, self.progress, self.cancel_button, self.status)
        self.runner.guard(self.run_button)                     # idle only
        self.runner.guard(self.open_button, lambda: bool(self.queue))  # idle and a queue
        task = self.runner.start(BackendTask("cloudseg: open", work, self._opened))
        ...
        def _opened(self, task: BackendTask) -> None:          # task.succeeded
            use(task.result)

    Attributes:
        task: The running task, or None.
    """

    def __init__(
        self,
        say: Say,
        progress: Any = None,
        cancel_button: Any = None,
        status: Any = None,
    ) -> None:
        """Keep the dock's controls.

        Args:
            say: ``say(text, level)``: the dock's way of telling the analyst.
            progress: A ``QProgressBar`` (0-100) that follows the task, or None.
            cancel_button: A button that cancels the task (enabled while one runs), or
                None; its ``clicked`` is connected to :meth:`cancel`.
            status: A ``QLabel`` that shows the task's progress messages, or None.
        """
        self.say = say
        self.progress = progress
        self.cancel_button = cancel_button
        self.status = status
        self.task: BackendTask | None = None
        self._guarded: list[tuple[Any, Callable[[], bool] | None]] = []
        if cancel_button is not None:
            cancel_button.setEnabled(False)
            cancel_button.clicked.connect(lambda: self.cancel())

    @property
    def busy(self) -> bool:
        """Whether a task is running."""
        return self.task is not None

    def ready(self) -> bool:
        """True when no task runs; else say so (a warning) and return False."""
        if self.task is not None:
            self.say("a task is running; cancel it or wait", Qgis.Warning)
            return False
        return True

    def guard(self, widget: Any, when: Callable[[], bool] | None = None) -> None:
        """Keep ``widget`` disabled while a task runs, and while ``when()`` is False."""
        self._guarded.append((widget, when))
        self.refresh()

    def refresh(self) -> None:
        """Enable or disable the guarded widgets (call it when a ``when`` may change)."""
        idle = self.task is None
        for widget, when in self._guarded:
            widget.setEnabled(idle and (when is None or bool(when())))

    def start(
        self,
        task: BackendTask,
        failed: Callable[[BackendTask], None] | None = None,
        cancelled: str = "cancelled; nothing was written",
    ) -> BackendTask | None:
        """Start ``task`` in QGIS's task manager; None (said) if a task is running.

        When it ends, the runner resets the controls; then the task's own ``on_done``
        runs if it succeeded. Otherwise the runner says "<description>: <error>"
        (critical) or "<description>: <cancelled>" (info), then calls ``failed(task)``
        if given (e.g. to remove what a task cancelled after its work had finished
        wrote).

        Args:
            task: The task, with its ``on_done`` handler for success.
            failed: Called after a failure or cancel is said.
            cancelled: What is said when the task was cancelled.
        """
        if not self.ready():
            return None
        succeeded = task.on_done

        def done(ended: BackendTask) -> None:
            self._ended(ended)
            if ended.succeeded:
                succeeded(ended)
                return
            what = ended.description()
            if ended.error:
                self.say(f"{what}: {for_qgis(ended.error, DOCK)}", Qgis.Critical)
            else:
                self.say(f"{what}: {cancelled}", Qgis.Info)
            if failed is not None:
                failed(ended)

        task.on_done = done
        self.task = task
        task.progressChanged.connect(lambda value: self._progressed(task, value))
        if self.progress is not None:
            self.progress.setValue(0)
        if self.status is not None:
            self.status.setText(f"{task.description()}...")
        if self.cancel_button is not None:
            self.cancel_button.setEnabled(True)
        self.refresh()
        QgsApplication.taskManager().addTask(task)
        return task

    def cancel(self) -> None:
        """Ask the running task to stop (its work polls ``cancelled``)."""
        if self.task is not None:
            self.task.cancel()
            if self.status is not None:
                self.status.setText("cancelling...")

    def _progressed(self, task: BackendTask, value: float) -> None:
        if task is not self.task:
            return
        if self.progress is not None:
            self.progress.setValue(int(value))
        if self.status is not None and task.message:
            self.status.setText(task.message)

    def _ended(self, task: BackendTask) -> None:
        self.task = None
        if self.cancel_button is not None:
            self.cancel_button.setEnabled(False)
        if self.progress is not None:
            self.progress.setValue(100 if task.succeeded else 0)
        self.refresh()
