"""A client of a ``cloudseg serve`` server: run a process there as if it ran here.

What the QGIS plugin (and a script) uses to send a scene to the team's server through
its OGC API - Processes endpoint: :class:`ServerClient` submits a job asynchronously
(``Prefer: respond-async``), follows its progress, dismisses it on cancel, and
downloads its result files. The standard library only (``urllib``): it runs in
QGIS's own Python with none of cloudseg's runtime packages installed.

:func:`run_on_server` is a whole run as the plugin makes it: the scene sent (its path
when the server reads the same folder under a ``--root``, else streamed to
``PUT /uploads`` after the server's upload limit is read), the job followed with
progress and cancel, and the wanted result files downloaded together, published only
when all of them arrived.

Every request has the network policy's timeout (:mod:`.network`:
``CLOUDSEG_CONNECT_TIMEOUT``, ``CLOUDSEG_READ_TIMEOUT``), so an unreachable or silent
server is one line, never a hang. The token goes in the ``Authorization`` header only
and is never part of a message. Each failure is one line:
:class:`RemoteError` (unreachable, refused token, a refused request with the
server's own words, a failed or dismissed job, a lost connection).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CancelledError, CloudsegError
from .network import redact, timeouts

#: Seconds between two status polls of a running job.
POLL_SECONDS = 0.5
#: Job states after which nothing changes.
ENDED = ("successful", "failed", "dismissed")


#: Bytes sent or received at a time (progress and cancel are checked between them).
CHUNK = 1 << 20

Progress = Callable[[float, str], None]
Cancelled = Callable[[], bool]


class RemoteError(CloudsegError):
    """A server could not run what was asked: one line saying why and what to do."""


class UnreachableError(RemoteError):
    """The server did not answer (refused connection, timeout, lost connection)."""


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
            raise UnreachableError(self._unreachable(exc)) from None

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
            try:
                state = self.status(job_id)
            except UnreachableError as exc:
                raise UnreachableError(f"lost the connection during the job: {exc}") from None
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
        self._fetch(href, partial)
        partial.replace(target)
        return target

    def _own(self, href: str) -> str:
        """A result's href on this client's own server address (the token goes nowhere else).

        A server names its files by the address it believes it has (its host name, a
        proxy's ``--url``); the client reaches it by the URL it was given.
        """
        parts = urllib.parse.urlsplit(href)
        if not parts.path.startswith("/files/"):
            raise RemoteError(
                f"the server's result {redact(href, query=False)} is not one of its files"
            )
        return f"{self.url}{parts.path}"

    def _fetch(
        self, href: str, partial: Path, progress: Callable[[int], None] | None = None
    ) -> None:
        """Stream one result file into ``partial`` (removed again when it fails)."""
        request = urllib.request.Request(self._own(href), headers=self._auth())
        try:
            with (
                urllib.request.urlopen(request, timeout=self.timeout) as answer,
                partial.open("wb") as handle,
            ):
                while chunk := answer.read(CHUNK):
                    handle.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
        except urllib.error.HTTPError as exc:
            partial.unlink(missing_ok=True)
            raise RemoteError(
                f"the cloudseg server did not give {redact(href, query=False)}: HTTP {exc.code}"
            ) from None
        except (TimeoutError, urllib.error.URLError, OSError) as exc:
            partial.unlink(missing_ok=True)
            raise UnreachableError(self._unreachable(exc)) from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    def fetch(
        self,
        results: Mapping[str, Any],
        wanted: Mapping[str, Path | None],
        progress: Progress | None = None,
        cancelled: Cancelled | None = None,
    ) -> dict[str, Path]:
        """Download the wanted result files together: all of them, or none.

        Each file is streamed beside its target first; the targets are replaced only
        when every file has arrived, so a lost connection or a cancel leaves what was
        there before untouched.

        Args:
            results: The job's results document (:attr:`RemoteJob.results`).
            wanted: Result name (``mask``, ``polygons``...) -> where it goes (None: not
                wanted).
            progress: ``progress(percent, message)`` over all the files.
            cancelled: Polled between chunks.

        Raises:
            RemoteError: For a result the job does not have, or a lost connection.
            CancelledError: After a cancel (nothing replaced).
        """
        wanted = {k: Path(v) for k, v in wanted.items() if v is not None}
        missing = [k for k in wanted if not isinstance(results.get(k), dict)]
        if missing:
            raise RemoteError(f"the server's job has no {', '.join(missing)} to download")
        partials = {k: v.with_name(f".{v.name}.partial") for k, v in wanted.items()}
        done = {"bytes": 0, "files": 0}

        def received(count: int) -> None:
            if cancelled is not None and cancelled():
                raise CancelledError("cancelled; nothing was downloaded")
            done["bytes"] += count
            if progress is not None:
                mib = done["bytes"] / 2**20
                percent = 100.0 * done["files"] / max(len(partials), 1)
                progress(percent, f"downloading the results ({mib:.1f} MiB)")

        try:
            for name, partial in partials.items():
                partial.parent.mkdir(parents=True, exist_ok=True)
                self._fetch(results[name]["href"], partial, received)
                done["files"] += 1
        except BaseException:
            for partial in partials.values():
                partial.unlink(missing_ok=True)
            raise
        for name, partial in partials.items():
            partial.replace(wanted[name])
        return dict(wanted)

    # -- sending a scene --------------------------------------------------------------------
    def capabilities(self) -> dict[str, Any]:
        """What the server says of itself: its upload limit, the folders jobs may read.

        Raises:
            RemoteError: For an unreachable server or a refused token.
        """
        _, _, document = self._json("GET", "/health")
        if not isinstance(document, dict) or "max_upload_bytes" not in document:
            raise RemoteError(
                f"{redact(self.url)} is not a cloudseg server that takes uploads "
                "(update it to this cloudseg's version)"
            )
        return document

    def upload(
        self,
        path: Path,
        progress: Progress | None = None,
        cancelled: Cancelled | None = None,
        limit: int | None = None,
    ) -> str:
        """Stream a file to the server (never whole in memory); what a job names it by.

        Args:
            path: The file.
            progress: ``progress(percent, message)`` as the bytes go.
            cancelled: Polled between chunks; the server drops a partial upload.
            limit: The server's upload limit, bytes, when already read
                (:meth:`capabilities`); checked before a byte is sent.

        Raises:
            RemoteError: For a file over the server's limit (said before sending) or
                one the server refuses.
            CancelledError: After a cancel.
        """
        path = Path(path)
        size = path.stat().st_size
        limit = self.capabilities()["max_upload_bytes"] if limit is None else limit
        if size > limit:
            raise RemoteError(
                f"{path.name} is {size / 2**20:.0f} MiB; the server at {redact(self.url)} "
                f"accepts uploads up to {limit / 2**20:.0f} MiB: segment a smaller extent, "
                "or put the scene in a folder the server reads (its --root)"
            )

        def chunks() -> Iterator[bytes]:
            sent = 0
            with path.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    if cancelled is not None and cancelled():
                        raise CancelledError("cancelled; the upload was stopped")
                    yield chunk
                    sent += len(chunk)
                    if progress is not None:
                        mib = f"{sent / 2**20:.0f} of {size / 2**20:.0f} MiB"
                        progress(100.0 * sent / max(size, 1), f"uploading {path.name} ({mib})")

        url = f"{self.url}/uploads/{urllib.parse.quote(path.name)}"
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(size),
            "Accept": "application/json",
            **self._auth(),
        }
        request = urllib.request.Request(url, data=chunks(), method="PUT", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                document = json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                said = self._said(json.loads(exc.read() or b"null"))
            except ValueError:
                said = ""
            if exc.code in (401, 403) and not said:
                raise RemoteError(
                    "the server refused the token: check the token it was given"
                ) from None
            raise RemoteError(
                f"the cloudseg server refused the upload: {said or f'HTTP {exc.code}'}"
            ) from None
        except (TimeoutError, urllib.error.URLError, OSError) as exc:
            raise UnreachableError(self._unreachable(exc)) from None
        if not isinstance(document, dict) or not isinstance(document.get("input"), str):
            raise RemoteError("the cloudseg server did not say where it stored the upload")
        return document["input"]

    def scene_input(
        self,
        scene: Path,
        progress: Progress | None = None,
        cancelled: Cancelled | None = None,
    ) -> str:
        """What a job names ``scene`` by: its path when the server reads it, else an upload.

        A path under one of the server's ``--root`` folders is sent as it is (the
        server reads the same folder, a shared drive). Otherwise the file is uploaded;
        a SAFE folder is zipped first (stored, not compressed: its JPEG 2000 bands
        are compressed already).

        Raises:
            RemoteError: For a folder of band files the server cannot read by path,
                or an upload the server refuses.
        """
        scene = Path(scene)
        capabilities = self.capabilities()
        resolved = scene.resolve()
        for root in capabilities.get("roots") or []:
            if resolved == Path(root) or Path(root) in resolved.parents:
                return str(resolved)
        limit = int(capabilities["max_upload_bytes"])
        if scene.is_file():
            return self.upload(scene, progress, cancelled, limit)
        if scene.is_dir() and scene.suffix.upper() == ".SAFE":
            with tempfile.TemporaryDirectory(prefix="cloudseg-upload-") as folder:
                zipped = Path(folder) / f"{scene.name}.zip"
                if progress is not None:
                    progress(0.0, f"zipping {scene.name} to upload it")
                shutil.make_archive(str(zipped.with_suffix("")), "zip", scene.parent, scene.name)
                return self.upload(zipped, progress, cancelled, limit)
        raise RemoteError(
            f"{scene.name} is a folder of band files, which the server reads by path only: "
            "put it in a folder the server reads (its --root), or save the bands as one "
            "multi-band GeoTIFF"
        )


def server_inputs(options: Mapping[str, Any]) -> dict[str, Any]:
    """A run's options (field -> value, as ``RunOptions`` takes them) as a job's inputs.

    Unset options are left out (the server's defaults are the same declarations). A
    band list becomes ``"B04,B03,B02"``; an extent a list of four numbers.

    Raises:
        RemoteError: For an option a server run cannot take: a model file on this
            computer (the server runs its own models, by name).
    """
    from .inference.options import RUN_FLAGS, SEGMENT_FLAGS

    offered = {f.field for f in (*RUN_FLAGS, *SEGMENT_FLAGS) if f.offered("server")}
    declared = {f.field for f in (*RUN_FLAGS, *SEGMENT_FLAGS)}
    inputs: dict[str, Any] = {}
    for name, value in options.items():
        if value is None:
            continue
        if name == "model" and (
            isinstance(value, Path) or str(value).lower().endswith(MODEL_FILES)
        ):
            raise RemoteError(
                f"a model file on this computer ({Path(str(value)).name}) cannot run on the "
                "server: choose one of the server's models by name"
            )
        if name == "extent":
            inputs[name] = [float(v) for v in value]
            continue
        if name in declared and name not in offered:
            continue  # this computer's own limits (memory) are not the server's
        if name == "bands" and isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)  # the server's input is "B02,B03,..."
        elif isinstance(value, (list, tuple)):
            value = [str(v) for v in value]  # a list input (explain's classes)
        inputs[name] = value if isinstance(value, (bool, int, float, str, list)) else str(value)
    return inputs


def _check_targets(scene: Path, outputs: Mapping[str, Path | None]) -> None:
    """The downloads' targets, checked before anything is sent (the engine's own rules).

    No target may be the scene or one of its files, two targets one file, or a file
    that would join a band folder's bands.

    Raises:
        OutputConflictError: One line naming the target and what to do.
    """
    from .atomic import check_outputs
    from .raster.bands import band_from_filename

    read = [scene, *(sorted(scene.iterdir()) if scene.is_dir() else [])]
    check_outputs(
        dict(outputs), read, overwrite=True,
        input_folders=[scene] if scene.is_dir() else [],
        input_name=lambda stem: band_from_filename(stem) is not None,
    )  # fmt: skip


#: Suffixes of model files (a model given by file, not by name).
MODEL_FILES = (".onnx", ".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class RemoteRun:
    """A run made on a server, its files downloaded here.

    Attributes:
        server: The server's address (no token).
        job_id: The server's id of the job.
        summary: The run's summary (model, runner, seconds, class percentages...).
        files: Result name -> the downloaded file.
    """

    server: str
    job_id: str
    summary: dict[str, Any]
    files: dict[str, Path]

    @property
    def where(self) -> str:
        """Where it ran, for the log and the recent runs: ``server host:port (runner)``."""
        host = urllib.parse.urlsplit(self.server).netloc
        runner = self.summary.get("runner") or "its runtime"
        return f"server {host} ({runner})"


def run_on_server(
    client: ServerClient,
    process: str,
    scene: Path,
    options: Mapping[str, Any],
    outputs: Mapping[str, Path | None],
    progress: Progress | None = None,
    cancelled: Cancelled | None = None,
) -> RemoteRun:
    """Run ``process`` on the server for a scene here; its result files downloaded.

    The scene is sent (:meth:`ServerClient.scene_input`: its path under a ``--root``,
    else uploaded), the job followed and dismissed on cancel, and the ``outputs``
    downloaded together (:meth:`ServerClient.fetch`): the targets are written only
    when the run succeeded and every file arrived.

    Args:
        client: The server.
        process: ``segment`` or ``explain``.
        scene: The scene on this computer (a file, or a folder the server reads).
        options: Run options by field (:func:`server_inputs`).
        outputs: Result name -> target path (None: not wanted).
        progress: ``progress(percent, message)``: sending 0-20, the job 20-95,
            downloading 95-100.
        cancelled: Polled throughout.

    Raises:
        OutputConflictError: A target that is the scene or another target (said
            before anything is sent).
        RemoteError: One line: unreachable, refused token or request, failed job,
            lost connection.
        CancelledError: After a cancel (the server's job dismissed, nothing written).
    """
    inputs = server_inputs(options)
    _check_targets(Path(scene), outputs)

    def part(low: float, high: float) -> Progress:
        def report(percent: float, message: str) -> None:
            if progress is not None:
                progress(low + (high - low) * max(0.0, min(100.0, percent)) / 100.0, message)

        return report

    inputs["input"] = client.scene_input(scene, part(0, 20), cancelled)
    try:
        job = client.run(process, inputs, part(20, 95), cancelled)
        files = client.fetch(job.results, outputs, part(95, 100), cancelled)
    except UnreachableError as exc:  # the server answered before: it went away
        said = str(exc)
        if not said.startswith("lost the connection"):
            said = f"lost the connection during the job: {said}"
        raise UnreachableError(said) from None
    return RemoteRun(redact(client.url), job.job_id, job.summary, files)
