"""One job queue for both faces of the server, with a limit on model runs at a time.

A job is one run of a process (:mod:`.processes`) in its own folder under the server's
work folder, named by a random 128-bit id (:func:`secrets.token_hex`): a job's files are
reached only by whoever holds its id. Jobs wait in submission order; ``concurrency``
worker threads (one by default: one model run per device) take them in turn, so ten
users do not start ten runs on one GPU, and a waiting job knows its place.

States follow OGC API - Processes: ``accepted`` (queued), ``running``, ``successful``,
``failed``, ``dismissed`` (cancelled by its owner: a running job stops at its next
batch of tiles, a queued one never starts; its files are removed). Finished jobs and
their files are removed ``keep_seconds`` after they end.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..dependencies import missing_from
from ..errors import CancelledError, CloudsegError
from ..network import download_limit
from ..raster.boundary import reading_under

logger = logging.getLogger(__name__)

ACCEPTED, RUNNING, SUCCESSFUL, FAILED, DISMISSED = (
    "accepted",
    "running",
    "successful",
    "failed",
    "dismissed",
)
FINISHED = (SUCCESSFUL, FAILED, DISMISSED)


#: Jobs that may wait at once (beyond those running): more are refused, to be tried later.
MAX_WAITING = 32
#: Seconds a dismissal waits for a running job to stop before it answers anyway (the job
#: is dismissed; its thread stops at its next check and keeps nothing).
DISMISS_WAIT = 10.0


class UnknownJobError(KeyError):
    """No job has this id (or it was removed)."""


class QueueFullError(CloudsegError):
    """The queue holds as many waiting jobs as it may: try again later."""

    def __init__(self, waiting: int) -> None:
        super().__init__(f"the server is busy: {waiting} jobs are waiting; try again in a minute")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class JobOutcome:
    """What a process run leaves: its files by name and a summary."""

    files: dict[str, Path]
    summary: dict[str, Any] = field(default_factory=dict)


#: ``runner(job, progress, cancelled) -> JobOutcome``: runs one process in ``job.folder``.
Runner = Callable[["Job", Callable[[float, str], None], Callable[[], bool]], JobOutcome]


@dataclass
class Job:
    """One run of a process and where it stands."""

    id: str
    process: str
    inputs: dict[str, Any]
    folder: Path
    runner: Runner
    status: str = ACCEPTED
    progress: float = 0.0
    message: str = "queued"
    created: str = field(default_factory=_now)
    started: str | None = None
    finished: str | None = None
    updated: str = field(default_factory=_now)
    files: dict[str, Path] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    ended_at: float | None = None


class JobQueue:
    """Jobs of both faces, run by ``concurrency`` worker threads in submission order."""

    def __init__(
        self,
        work: Path,
        concurrency: int = 1,
        keep_seconds: float = 86400.0,
        read_roots: list[Path] | None = None,
        max_input_bytes: int | None = None,
        max_waiting: int = MAX_WAITING,
    ) -> None:
        self.folder = work / "jobs"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.keep_seconds = keep_seconds
        #: Folders a job may read besides its own (None: anything; see raster.boundary).
        self.read_roots = read_roots
        #: The largest input a job fetches by URL (None: no cap; see network.download_limit).
        self.max_input_bytes = max_input_bytes
        self.max_waiting = max_waiting
        self._jobs: dict[str, Job] = {}
        self._waiting: list[Job] = []
        self._lock = threading.Condition()
        self._closed = False
        self._workers = [
            threading.Thread(target=self._work, name=f"cloudseg-job-{i}", daemon=True)
            for i in range(concurrency)
        ]
        for worker in self._workers:
            worker.start()

    # -- submitting and looking up -------------------------------------------------------
    def submit(self, process: str, inputs: dict[str, Any], runner: Runner) -> Job:
        """Queue a run of ``process``; returns at once with the accepted job.

        Raises:
            QueueFullError: When ``max_waiting`` jobs wait already (nothing is created).
        """
        job_id = secrets.token_hex(16)
        folder = self.folder / job_id
        with self._lock:
            if len(self._waiting) >= self.max_waiting:
                raise QueueFullError(len(self._waiting))
            folder.mkdir(mode=0o700)
            job = Job(job_id, process, inputs, folder, runner)
            self._jobs[job_id] = job
            self._waiting.append(job)
            job.message = self._queued_message(len(self._waiting))
            self._lock.notify()
        logger.info("job %s (%s) accepted", job_id, process)
        return job

    def get(self, job_id: str) -> Job:
        """The job with this id.

        Raises:
            UnknownJobError: For an unknown or removed id.
        """
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise UnknownJobError(job_id)
        return job

    def place(self, job: Job) -> int | None:
        """1 for the next job to start, 2 for the one after...; None once it runs."""
        with self._lock:
            return self._waiting.index(job) + 1 if job in self._waiting else None

    def file(self, job_id: str, name: str) -> Path:
        """A result file of a successful job, by its name in the job's results or file name.

        File names let the relative asset links of the job's STAC Item (``./mask.tif``)
        resolve next to it.

        Raises:
            UnknownJobError: For an unknown job, one that has not succeeded, or a name that
                is not one of its results.
        """
        job = self.get(job_id)
        by_file = {p.name: p for p in job.files.values()}
        path = job.files.get(name, by_file.get(name)) if job.status == SUCCESSFUL else None
        if path is None or not path.is_file():
            raise UnknownJobError(f"{job_id}/{name}")
        return path

    def wait(self, job: Job, timeout: float | None = None) -> bool:
        """Wait until ``job`` ends; True if it did within ``timeout`` seconds."""
        return job.done.wait(timeout)

    # -- cancelling ----------------------------------------------------------------------
    def dismiss(self, job_id: str) -> Job:
        """Cancel a queued or running job, or remove a finished one's files.

        A queued job is taken out of the queue; a running one stops at its next batch of
        tiles (its outputs were never published); the job's folder is removed either way.

        Raises:
            UnknownJobError: For an unknown id.
        """
        job = self.get(job_id)
        with self._lock:
            if job in self._waiting:
                self._waiting.remove(job)
                self._end(job, DISMISSED, "dismissed before it started")
            elif job.status == RUNNING:
                job.cancel_requested.set()
                job.message = "cancelling"
        if job.status == RUNNING:
            job.done.wait(timeout=DISMISS_WAIT)  # it stops at its next check
        if job.status != DISMISSED:  # a finished job, or one still stopping: its results go
            with self._lock:
                job.status, job.message, job.updated = DISMISSED, "dismissed", _now()
        job.files = {}
        shutil.rmtree(job.folder, ignore_errors=True)
        return job

    # -- the workers ---------------------------------------------------------------------
    def _queued_message(self, place: int) -> str:
        return "queued: next to run" if place == 1 else f"queued: {place - 1} job(s) ahead"

    def _next(self) -> Job | None:
        with self._lock:
            while not self._waiting and not self._closed:
                self._lock.wait(timeout=1.0)
            if self._closed:
                return None
            job = self._waiting.pop(0)
            for place, other in enumerate(self._waiting, start=1):
                other.message = self._queued_message(place)
                other.updated = _now()
            job.status, job.started, job.updated = RUNNING, _now(), _now()
            job.message = "starting"
            return job

    def _work(self) -> None:
        while (job := self._next()) is not None:
            self._run(job)

    def _run(self, job: Job) -> None:
        def progress(percent: float, message: str) -> None:
            job.progress = max(0.0, min(99.0, percent))
            job.message = message
            job.updated = _now()

        try:
            with contextlib.ExitStack() as limits:
                if self.read_roots is not None:
                    limits.enter_context(reading_under([*self.read_roots, job.folder]))
                cancelled = job.cancel_requested.is_set
                limits.enter_context(download_limit(self.max_input_bytes, cancelled))
                outcome = job.runner(job, progress, cancelled)
        except Exception as exc:
            # Cancelled, or dismissed while a stage that does not check ran (its folder
            # went under it): nothing was kept either way.
            if isinstance(exc, CancelledError) or job.cancel_requested.is_set():
                self._end(job, DISMISSED, "dismissed while it ran; nothing was kept")
            else:
                self._failed(job, exc)
        else:
            if job.cancel_requested.is_set():
                self._end(job, DISMISSED, "dismissed; nothing was kept")
            else:
                job.files, job.summary = outcome.files, outcome.summary
                job.progress = 100.0
                self._end(job, SUCCESSFUL, "done")

    def _failed(self, job: Job, exc: Exception) -> None:
        """End a job whose runner raised ``exc``: its one line, without the server's paths."""
        if isinstance(exc, CloudsegError):
            job.error = self.public(str(exc), job)
            self._end(job, FAILED, job.error)
            return
        # a bug must not take the worker down
        missing = missing_from(exc)  # a server without the training extra
        if missing is None:
            logger.exception("job %s failed", job.id)
        job.error = self.public(missing or f"internal error: {type(exc).__name__}: {exc}", job)
        self._end(job, FAILED, job.error)

    def public(self, message: str, job: Job | None = None) -> str:
        """``message`` as a client may read it: the server's own folders are not shown.

        A job's files (a download, an upload) are named by their file names; any other
        path in the server's work folder becomes ``<server>``. Paths under ``--root``
        are the client's own words and stay.
        """
        import re

        work = str(self.folder.parent)
        if job is not None:
            for inner in (job.folder / "input", job.folder):
                message = message.replace(f"{inner}/", "")
        message = re.sub(re.escape(f"{work}/uploads/") + r"(api/)?[^/\s]+/", "", message)
        return message.replace(work, "<server>")

    def _end(self, job: Job, status: str, message: str) -> None:
        job.status, job.message = status, message
        job.finished = job.updated = _now()
        job.ended_at = time.monotonic()
        if status in (DISMISSED, FAILED):  # nothing of a failed run stays behind
            job.files = {}
            shutil.rmtree(job.folder, ignore_errors=True)
        job.done.set()
        logger.info("job %s %s: %s", job.id, status, message)

    # -- housekeeping --------------------------------------------------------------------
    def remove_expired(self) -> int:
        """Remove jobs that ended more than ``keep_seconds`` ago, and their folders."""
        now = time.monotonic()
        with self._lock:
            old = [
                j
                for j in self._jobs.values()
                if j.ended_at is not None and now - j.ended_at > self.keep_seconds
            ]
            for job in old:
                del self._jobs[job.id]
        for job in old:
            shutil.rmtree(job.folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # folders no job knows (an earlier server's)
            known = {j.id for j in self._jobs.values()}
            for folder in self.folder.iterdir():
                age = time.time() - folder.stat().st_mtime
                if folder.name not in known and age > self.keep_seconds:
                    shutil.rmtree(folder, ignore_errors=True)
        return len(old)

    def close(self) -> None:
        """Stop the workers after the running jobs; queued jobs are dismissed."""
        with self._lock:
            self._closed = True
            waiting, self._waiting = self._waiting, []
            self._lock.notify_all()
        for job in waiting:
            self._end(job, DISMISSED, "the server stopped")
        for job in list(self._jobs.values()):
            if job.status == RUNNING:  # it stops at its next check; its waiters go now
                job.cancel_requested.set()
                job.status, job.message = DISMISSED, "the server stopped"
                job.done.set()
