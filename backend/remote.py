"""A client of a ``cloudseg serve`` server: run a process there as if it ran here.

What the QGIS plugin (and a script) uses to send a scene to the team's server through
its OGC API - Processes endpoint: :class:`ServerClient` submits a job asynchronously
(``Prefer: respond-async``), follows its progress, dismisses it on cancel, and
downloads its result files. The standard library only (``urllib``): it runs in
QGIS's own Python with none of cloudseg's runtime packages installed.

Every request has the network policy's timeout (:mod:`.network`:
``CLOUDSEG_CONNECT_TIMEOUT``, ``CLOUDSEG_READ_TIMEOUT``), so an unreachable or silent
server is one line, never a hang. The token goes in the ``Authorization`` header only
and is never part of a message. Each failure is one line:
:class:`RemoteError` (unreachable, refused token, a refused request with the
server's own words, a failed or dismissed job, a lost connection).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CancelledError, CloudsegError
from .network import redact, timeouts

#: Seconds between two status polls of a running job.
POLL_SECONDS = 0.5
#: Job states after which nothing changes.
ENDED = ("successful", "failed", "dismissed")


class RemoteError(CloudsegError):
    """A server could not run what was asked: one line saying why and what to do."""


@dataclass(frozen=True)
class RemoteJob:
    """A job of a server that ended well.

    Attributes:
        job_id: The server's id of the job.
        results: The results document: each output's ``href`` and type, and the run's
            ``summary`` (model, runner, seconds, class percentages).
    """

    job_id: str
    results: dict[str, Any]

    @property
    def summary(self) -> dict[str, Any]:
        """The run's summary (model, runner, device, seconds, percentages)."""
        return dict(self.results.get("summary", {}))


class ServerClient:
    """One ``cloudseg serve`` server, by its URL (``http://host:8000``) and token."""

    def __init__(self, url: str, token: str | None = None, timeout: float | None = None) -> None:
        """Check the URL and keep the token (sent as ``Authorization: Bearer``).

        Raises:
            RemoteError: For a URL that is not http(s)://host[:port].
        """
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RemoteError(f"the server's URL must be http(s)://host:port, not {url!r}")
        self.url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        self.url = self.url.rstrip("/")  # paths are appended: /ogc/...
        self.token = token or None
        limits = timeouts("http")
        self.timeout = timeout or max(limits.connect, limits.read)

    # -- requests ---------------------------------------------------------------------------
    def _request(
        self, method: str, url: str, body: Mapping[str, Any] | None = None, **headers: str
    ) -> tuple[int, dict[str, str], bytes]:
        """One request; ``(status, headers, body)`` of any answer the server gave.

        Raises:
            RemoteError: When the server cannot be reached or does not answer in time.
        """
        data = None
        sent = {"Accept": "application/json", **self._auth(), **headers}
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return answer.status, dict(answer.headers), answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers or {}), exc.read()
        except (TimeoutError, urllib.error.URLError, OSError) as exc:
            raise RemoteError(self._unreachable(exc)) from None

    def _auth(self) -> dict[str, str]:
        """The token's header (never part of a URL or a message)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _unreachable(self, exc: BaseException) -> str:
        reason = getattr(exc, "reason", exc)
        if isinstance(exc, TimeoutError) or isinstance(reason, TimeoutError):
            why = f"no answer within {self.timeout:g} s"
        else:
            why = str(reason)
        return (
            f"cannot reach the cloudseg server at {redact(self.url)} ({why}); check that it "
            "runs and that the URL is right"
        )

    def _json(self, method: str, path: str, body: Mapping[str, Any] | None = None,
              **headers: str) -> tuple[int, dict[str, str], Any]:  # fmt: skip
        """A request whose answer must be JSON; a refusal raises with the server's words.

        Raises:
            RemoteError: For an unreachable server, a refused token or request.
        """
        url = f"{self.url}{path}"
        status, headers_, raw = self._request(method, url, body, **headers)
        try:
            document = json.loads(raw or b"null")
        except ValueError:
            document = None
        if status in (401, 403) and not self._said(document):
            raise RemoteError("the server refused the token: check the token it was given")
        if status == 404 and "/ogc/jobs/" in url:
            raise RemoteError(
                "the server has no such job: it was dismissed, or its results were kept "
                "for less time than this run took"
            )
        if status >= 400:
            said = self._said(document) or f"HTTP {status}"
            if status == 401:
                said += " (check the server's token)"
            raise RemoteError(f"the cloudseg server refused the request: {said}")
        return status, headers_, document

    @staticmethod
    def _said(document: Any) -> str:
        if isinstance(document, dict):
            text = document.get("description") or document.get("detail") or ""
            return " ".join(str(text).split())  # one line
        return ""

    # -- what a run does --------------------------------------------------------------------
    def describe(self, process: str = "segment") -> dict[str, Any]:
        """The process's description (its inputs with their JSON Schema).

        Raises:
            RemoteError: For an unreachable server or a refused token.
        """
        _, _, document = self._json("GET", f"/ogc/processes/{process}?f=json")
        return document

    def submit(self, process: str, inputs: Mapping[str, Any]) -> str:
        """Start ``process`` with ``inputs`` asynchronously; the job's id.

        Raises:
            RemoteError: For a request the server refuses (its one line), e.g. a path
                outside its roots or a queue that is full.
        """
        status, headers, _ = self._json(
            "POST", f"/ogc/processes/{process}/execution", {"inputs": dict(inputs)},
            Prefer="respond-async",
        )  # fmt: skip
        location = {k.lower(): v for k, v in headers.items()}.get("location", "")
        if status != 201 or not location:
            raise RemoteError(f"the cloudseg server did not start a job (HTTP {status})")
        return location.rstrip("/").rsplit("/", 1)[-1]

    def status(self, job_id: str) -> dict[str, Any]:
        """The job's status document (``status``, ``progress``, ``message``)."""
        _, _, document = self._json("GET", f"/ogc/jobs/{job_id}?f=json")
        return document

    def dismiss(self, job_id: str) -> None:
        """Dismiss the job: a waiting one never starts, a running one stops."""
        self._json("DELETE", f"/ogc/jobs/{job_id}?f=json")

    def wait(
        self,
        job_id: str,
        progress: Callable[[float, str], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> RemoteJob:
        """Follow the job to its end; dismiss it when ``cancelled()`` becomes true.

        Raises:
            CancelledError: After a cancel (the server's job dismissed).
            RemoteError: For a job that failed or was dismissed on the server (its
                message), or a connection lost on the way.
        """
        while True:
            if cancelled is not None and cancelled():
                self.dismiss(job_id)
                raise CancelledError("cancelled; the server's job was dismissed")
            state = self.status(job_id)
            if progress is not None:
                progress(float(state.get("progress") or 0), str(state.get("message") or ""))
            if state.get("status") == "successful":
                _, _, results = self._json("GET", f"/ogc/jobs/{job_id}/results?f=json")
                return RemoteJob(job_id, results)
            if state.get("status") == "failed":
                said = " ".join(str(state.get("message") or "no reason given").split())
                raise RemoteError(f"the job failed on the server: {said}")
            if state.get("status") == "dismissed":
                raise RemoteError("the job was dismissed on the server")
            time.sleep(POLL_SECONDS)

    def run(
        self,
        process: str,
        inputs: Mapping[str, Any],
        progress: Callable[[float, str], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> RemoteJob:
        """Submit and follow a job (:meth:`submit`, :meth:`wait`)."""
        return self.wait(self.submit(process, inputs), progress, cancelled)

    def download(self, href: str, target: Path) -> Path:
        """Stream one result file (an href of the results document) into ``target``.

        Written beside ``target`` first and renamed when whole: a lost connection leaves
        no partial file.

        Raises:
            RemoteError: For a file the server does not give, or a lost connection.
        """
        target = Path(target)
        partial = target.with_name(f".{target.name}.partial")
        request = urllib.request.Request(href, headers=self._auth())
        try:
            with (
                urllib.request.urlopen(request, timeout=self.timeout) as answer,
                partial.open("wb") as handle,
            ):
                while chunk := answer.read(1 << 20):
                    handle.write(chunk)
            partial.replace(target)
        except urllib.error.HTTPError as exc:
            partial.unlink(missing_ok=True)
            raise RemoteError(
                f"the cloudseg server did not give {redact(href, query=False)}: HTTP {exc.code}"
            ) from None
        except (TimeoutError, urllib.error.URLError, OSError) as exc:
            partial.unlink(missing_ok=True)
            raise RemoteError(self._unreachable(exc)) from None
        return target
