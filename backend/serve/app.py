"""The server: one FastAPI app on uvicorn with both faces and the job files.

Routes: ``/`` the web page (Gradio), ``/ogc`` OGC API - Processes (pygeoapi),
``/files/{job}/{name}`` a successful job's result files (names from its result
document only), ``PUT /uploads/{name}`` a scene streamed to the server for a job
(``upload:<id>/<name>``), ``/health`` the queue and what a client needs to know first
(the upload limit, the folders jobs may read by path). Every request passes
:class:`Guard` first: the token when the server has one, the ``Host`` header on a
loopback server (so a web page elsewhere cannot reach it by DNS rebinding), and the
upload limit.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from starlette.requests import Request  # FastAPI reads the upload route's annotation

from .config import ServeConfig, is_loopback, refuse

logger = logging.getLogger(__name__)

#: Bytes a request may carry beyond the upload limit (the form around an upload).
FORM_SLACK = 2**20
#: The cookie the page keeps the token in after ``?token=``.
TOKEN_COOKIE = "cloudseg_token"
#: Where scripts (the QGIS plugin) stream scenes for their jobs.
UPLOADS_PREFIX = "/uploads"


class Guard:
    """ASGI middleware: token, allowed ``Host`` headers, cross-site requests, upload limit.

    Why its own middleware and not Starlette's: each refusal must be one line in the
    shape of the server's other refusals (``{"type", "code", "description"}``, OGC's)
    naming what to do, on every route (FastAPI's, the mounted pygeoapi and Gradio apps)
    and websocket, which FastAPI dependencies (its routes only) and
    ``BaseHTTPMiddleware`` (no websockets, buffered streams) do not cover. Starlette's
    ``TrustedHostMiddleware`` answers a foreign ``Host`` with a plain-text 400, and its
    ``RequestBodyLimitMiddleware`` a plain-text 413 raised as an exception inside the
    app, which the mounted apps' own handlers answer in their own words (the limit and
    ``--max-upload`` unsaid). The request is read with Starlette's own parsers
    (:class:`~starlette.requests.HTTPConnection`: headers, query, cookies).

    Args:
        app: The app it guards.
        token: The token requests must carry (None: no token needed).
        hosts: ``Host`` headers answered (None: any).
        max_bytes: The largest request body, counted as it arrives (``Content-Length``
            is checked first, but a chunked body announces none).
        origins: Origins (``scheme://host:port``) of the server's own page besides the
            request's own ``Host`` (a proxy's public address).
        json_only: Path prefixes whose POSTs must be JSON: a form or ``text/plain`` POST,
            which a page elsewhere can send without asking, is never a job.
    """

    def __init__(
        self,
        app: Any,
        token: str | None,
        hosts: set[str] | None,
        max_bytes: int,
        origins: set[str] | None = None,
        json_only: tuple[str, ...] = (),
    ) -> None:
        self.app, self.token, self.hosts, self.max_bytes = app, token, hosts, max_bytes
        self.origins, self.json_only = origins or set(), json_only

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Answer 401 / 403 / 413 / 415 in one line, or pass the request on."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        from starlette.requests import HTTPConnection

        request = HTTPConnection(scope)
        headers = request.headers
        if self.hosts is not None and headers.get("host", "") not in self.hosts:
            await refuse(scope, send, 403, "Forbidden", "this server answers localhost only")
            return
        foreign = self._foreign_origin(scope, headers)
        if foreign is not None:
            await refuse(scope, send, 403, "Forbidden",
                          f"a request from another site ({foreign}) may not change anything "
                          "here; use the server's own page or a script")  # fmt: skip
            return
        if (
            scope["type"] == "http"
            and scope.get("method", "GET").upper() == "POST"
            and scope.get("path", "").startswith(self.json_only)
            and headers.get("content-type", "").split(";")[0].strip().lower() != "application/json"
        ):
            await refuse(scope, send, 415, "UnsupportedMediaType",
                          "send the request as JSON (Content-Type: application/json)")  # fmt: skip
            return
        if _announced_length(headers) > self.max_bytes:
            await refuse(scope, send, 413, "PayloadTooLarge", self._too_large())
            return
        from_query = None
        if self.token is not None:
            from_query = request.query_params.get("token")
            offered = [
                headers.get("authorization", "").removeprefix("Bearer ").strip(),
                request.cookies.get(TOKEN_COOKIE, ""),
                from_query or "",
            ]
            if not any(o and _same_secret(o, self.token) for o in offered):
                await refuse(scope, send, 401, "Unauthorized",
                              "this server needs its token: 'Authorization: Bearer TOKEN' or "
                              "?token=TOKEN")  # fmt: skip
                return
        if from_query and scope["type"] == "http" and _same_secret(from_query, self.token or ""):
            send = _setting_cookie(send, from_query)
        if scope["type"] == "http":
            await self._counted(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _too_large(self) -> str:
        return (
            f"uploads are limited to {(self.max_bytes - FORM_SLACK) / 2**20:g} MiB "
            "(the server's --max-upload)"
        )

    def _foreign_origin(self, scope: dict[str, Any], headers: Any) -> str | None:
        """The other site a state-changing browser request comes from, or None.

        A browser names the page that sends a request in ``Origin`` (or ``Referer``); a
        script sends neither. A POST, PUT, PATCH or DELETE from a page that is not this
        server's own is refused, so that a page elsewhere cannot start or dismiss jobs
        (a form or ``text/plain`` POST needs no preflight).
        """
        if scope["type"] == "websocket":
            method = "GET"
            sender = headers.get("origin")
        else:
            method = scope.get("method", "GET").upper()
            sender = headers.get("origin") or _origin_of(headers.get("referer", ""))
        if method in ("GET", "HEAD", "OPTIONS") and scope["type"] == "http":
            return None
        if not sender:
            return None
        own = {f"{scope.get('scheme', 'http')}://{headers.get('host', '')}"} | self.origins
        own |= {o.replace("http://", "https://", 1) for o in own}  # TLS at a proxy
        return None if sender.lower() in {o.lower() for o in own} else sender

    async def _counted(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Pass the request on, counting its body: past the limit it is answered 413."""
        state = {"bytes": 0, "refused": False, "started": False}

        async def counted_receive() -> dict[str, Any]:
            if state["refused"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["bytes"] += len(message.get("body", b""))
                if state["bytes"] > self.max_bytes:
                    state["refused"] = True
                    if not state["started"]:
                        state["started"] = True
                        await refuse(scope, send, 413, "PayloadTooLarge", self._too_large())
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            if state["refused"]:  # the 413 is the answer
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not state["refused"]:
                raise
            # the app gave up on the body it was denied; the client has its 413


def _announced_length(headers: Any) -> int:
    """The body size a request announces (0 when it announces none or nonsense)."""
    text = headers.get("content-length", "0").strip() or "0"
    return int(text) if text.isdigit() else 0


def _origin_of(url: str) -> str | None:
    """``scheme://host:port`` of a URL (a ``Referer``), or None."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


def _same_secret(offered: str, token: str) -> bool:
    """Compare in constant time; any text (non-ASCII included) is just not the token."""
    return hmac.compare_digest(offered.encode("utf-8", "surrogatepass"), token.encode("utf-8"))


def _setting_cookie(send: Any, token: str) -> Any:
    """``send`` that adds the token cookie to the response (the page's later requests)."""
    from starlette.datastructures import MutableHeaders

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            cookie = f"{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
            MutableHeaders(scope=message).append("set-cookie", cookie)
        await send(message)

    return wrapped


def _housekeeping(queue: Any, every: float, uploads: Path) -> None:
    """Remove expired jobs and uploads now and then (a daemon thread)."""
    stop = threading.Event()
    while not stop.wait(every):
        try:
            queue.remove_expired()
            remove_old_uploads(uploads, queue.keep_seconds)
        except Exception:  # housekeeping must never stop the server
            logger.exception("removing expired jobs failed")


#: What runs the models here (read once, in the background, from the server's start).
_DEVICE: dict[str, Any] = {}


def server_device() -> dict[str, Any] | None:
    """What runs the built-in models here, as a client shows it (``runner``).

    The runner the engine's own plan picks for the built-in models, e.g. ``openvino
    2026.4.1 CPU (bf16)`` or ``onnxruntime 1.23 CUDA``: the device is in its words.
    None until it has been read (the runtimes are imported in the background from the
    start, as the first job would), so that ``/health`` always answers at once.
    """
    return dict(_DEVICE) or None


def _read_device() -> None:
    """Read what runs the built-in models into :data:`_DEVICE` (PyTorch is not imported)."""
    try:
        from ..inference.runners import plan_runner
        from ..models.registry import builtin_models

        models = builtin_models()
        if models:
            _DEVICE.update(runner=plan_runner(models[0].card).summary())
    except Exception:  # the server runs without it; clients show the runner of each job
        logger.exception("reading what runs the models failed")


def remove_old_uploads(uploads: Path, keep_seconds: float) -> int:
    """Remove the uploads (one folder each) older than ``keep_seconds``; how many."""
    import shutil
    import time

    removed = 0
    with contextlib.suppress(OSError):
        for folder in uploads.iterdir():
            if time.time() - folder.stat().st_mtime > keep_seconds:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
    return removed


async def receive_upload(request: Request, name: str, uploads: Path, config: ServeConfig) -> dict:
    """Stream a request's body into a new upload folder; what a job names it by.

    The file is written beside its name and renamed when whole: a dropped connection
    or a body over the limit leaves nothing behind.

    Raises:
        InputError: For a name that cannot be stored, or a body over the upload limit.
    """
    import secrets
    import shutil

    from ..errors import InputError
    from .config import UPLOAD_PREFIX, upload_name

    stored = upload_name(name)
    announced = _announced_length(request.headers)
    config.check_upload_size(announced)
    key = secrets.token_hex(16)
    folder = uploads / key
    folder.mkdir(parents=True)
    partial, size = folder / f".{stored}.partial", 0
    try:
        with partial.open("wb") as handle:
            async for chunk in request.stream():
                size += len(chunk)
                config.check_upload_size(size)
                handle.write(chunk)
        if size == 0:
            raise InputError("the upload is empty: send the scene's bytes as the request body")
        partial.rename(folder / stored)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    logger.info("upload %s: %s, %d bytes", key, stored, size)
    return {"input": f"{UPLOAD_PREFIX}{key}/{stored}", "bytes": size}


def _share_proj_data() -> None:
    """Point pyproj (pygeoapi imports it) at GDAL's PROJ data; in a venv it looks there."""
    if os.environ.get("PROJ_DATA") or os.environ.get("PROJ_LIB"):
        return
    from osgeo import osr

    for folder in osr.GetPROJSearchPaths() or []:
        if (Path(folder) / "proj.db").is_file():
            os.environ["PROJ_DATA"] = folder
            return


#: Threads for pygeoapi's requests: a synchronous execution holds one until its job ends,
#: so asyncio's default pool (6 threads on 2 cores) would stop answering status polls
#: and other requests once 6 clients wait.
REQUEST_THREADS = 64


def _lifespan(queue: Any) -> Any:
    """The app's lifespan: a pool large enough for waiting executions; the queue closed last.

    At shutdown (SIGTERM, SIGINT) the queue is closed before the pool: running jobs are
    told to stop, queued ones dismissed, and every request thread waiting on a job wakes
    and answers, so the process ends within seconds instead of waiting for the jobs.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(REQUEST_THREADS, thread_name_prefix="cloudseg-request")
        asyncio.get_running_loop().set_default_executor(pool)
        try:
            yield
        finally:
            queue.close()
            pool.shutdown(wait=False, cancel_futures=True)

    return lifespan


def build_app(config: ServeConfig, port: int) -> tuple[Any, Any]:
    """The server's ASGI app and its job queue.

    Args:
        config: The server's settings.
        port: The port it listens on (for links and the allowed ``Host`` headers).
    """
    work = config.work or Path(tempfile.mkdtemp(prefix="cloudseg-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    _share_proj_data()
    os.environ["GRADIO_TEMP_DIR"] = str(work / "uploads")
    import gradio as gr
    import matplotlib

    matplotlib.use("Agg")  # previews and plots are files; no display
    # Imported once here, not by two job threads at once (a half-imported module).
    import matplotlib.pyplot
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import FileResponse, JSONResponse

    from .jobs import JobQueue, UnknownJobError
    from .ogc import FILES_PREFIX, PREFIX, attach, dismissal, ogc_app
    from .web import PublishedOnly, build_page

    # A job reads under --root, its own folder and the page's uploads, nothing else.
    queue = JobQueue(
        work,
        config.concurrency,
        config.keep_seconds,
        read_roots=[*config.roots, work / "uploads"],
        max_input_bytes=int(config.max_upload_mib * 2**20),
    )
    base = config.base_url(port)
    uploads = work / "uploads" / "api"
    uploads.mkdir(parents=True, exist_ok=True)
    attach(queue, config, base, uploads)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, lifespan=_lifespan(queue))

    @app.delete(PREFIX + "/jobs/{job_id}")
    def dismiss(job_id: str) -> JSONResponse:
        # pygeoapi 0.21 answers a dismissal without a Content-Type, which its Starlette
        # app cannot send (KeyError): this route answers with pygeoapi's own document.
        try:
            return JSONResponse(dismissal(job_id))
        except UnknownJobError:
            return JSONResponse(
                {"type": "NoSuchJob", "code": "NoSuchJob", "description": job_id}, 404
            )

    app.mount(PREFIX, ogc_app(work, base))

    @app.get(FILES_PREFIX + "/{job_id}/{name}")
    def job_file(job_id: str, name: str) -> FileResponse:
        try:
            path = queue.file(job_id, name)
        except UnknownJobError:
            raise HTTPException(404, "no such job or result") from None
        from .processes import media_type

        job = queue.get(job_id)
        key = next(k for k, p in job.files.items() if p == path)
        return FileResponse(path, media_type=media_type(job.process, key), filename=path.name)

    @app.put(UPLOADS_PREFIX + "/{name}", status_code=201)
    async def upload(name: str, request: Request) -> JSONResponse:
        from ..errors import CloudsegError

        try:
            stored = await receive_upload(request, name, uploads, config)
        except CloudsegError as exc:
            too_large = "--max-upload" in str(exc)
            code = "PayloadTooLarge" if too_large else "InvalidParameterValue"
            body = {"type": code, "code": code, "description": str(exc)}
            return JSONResponse(body, 413 if too_large else 400)
        return JSONResponse(stored, 201)

    @app.get("/health")
    def health() -> dict[str, Any]:
        from .._version import __version__

        return {
            "status": "ok",
            "version": __version__,
            "concurrency": config.concurrency,
            "max_upload_bytes": config.max_upload_bytes,
            "uploads": UPLOADS_PREFIX,
            "roots": [str(r) for r in config.roots],
            "device": server_device(),
        }

    keep = config.keep_seconds
    page = build_page(queue, config)
    page.queue(default_concurrency_limit=None)
    app = gr.mount_gradio_app(
        app,
        page,
        path="",
        blocked_paths=[str(queue.folder)],  # results reach the page as its own copies
        max_file_size=int(config.max_upload_mib * 2**20),
        footer_links=["api"],
        root_path=config.url and config.url.rstrip("/"),
    )
    app = PublishedOnly(app)  # Gradio's file route: published results only
    threading.Thread(target=_read_device, daemon=True).start()
    every = min(keep / 4, 600.0)
    threading.Thread(target=_housekeeping, args=(queue, every, uploads), daemon=True).start()
    hosts = config.allowed_hosts(port) if is_loopback(config.host) else None
    limit = int(config.max_upload_mib * 2**20) + FORM_SLACK
    origins = {_origin_of(base)} - {None}
    guard = Guard(app, config.token, hosts, limit, origins, (PREFIX + "/",))  # type: ignore[arg-type]
    return guard, queue


def serve(config: ServeConfig) -> None:
    """Run the server until interrupted; prints where it listens (first line)."""
    import uvicorn

    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as exc:
        from ..errors import InputError

        raise InputError(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from None
    port = sock.getsockname()[1]
    app, queue = build_app(config, port)
    sock.listen(128)  # clients that come before uvicorn starts wait in the backlog
    base = config.base_url(port)
    token = f"?token={config.token}" if config.token_generated else ""
    print(f"cloudseg serve: listening on {base} (web page {base}/{token}, "
          f"OGC API - Processes {base}/ogc)", flush=True)  # fmt: skip
    if config.token:
        where = f"token {config.token}" if config.token_generated else "the token you gave"
        print(f"  every request needs {where} ('Authorization: Bearer TOKEN' or ?token=)",
              flush=True)  # fmt: skip
    if config.roots:
        print(f"  jobs may read paths under: {', '.join(map(str, config.roots))}", flush=True)
    sys.stdout.flush()
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5, lifespan="on")
    )
    try:
        server.run(sockets=[sock])
    finally:
        queue.close()
