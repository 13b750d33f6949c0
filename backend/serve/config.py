"""What a ``cloudseg serve`` server may do: where it listens, who may call it, what it reads.

One place owns the server's safety rules, and both faces (the web page, OGC API -
Processes) go through them:

- **Where it listens**: ``127.0.0.1`` unless told otherwise. Bound to any other
  interface the server needs a token (``--token`` or ``CLOUDSEG_SERVE_TOKEN``; one is made
  and printed at start when neither is given): every request then carries it as
  ``Authorization: Bearer TOKEN``, a ``?token=TOKEN`` query (the page sets a cookie from
  it), or that cookie.
- **What it reads**: server-side paths only under the configured roots (``--root``,
  none by default), after resolving ``..`` and symbolic links; ``https://`` and ``s3://``
  URLs within the network timeouts (:mod:`cloudseg.backend.network`).
- **What it keeps**: uploads and each job's folder (random 128-bit ids) are removed
  ``keep_hours`` after the job ends; uploads larger than ``max_upload_mib`` are refused.
- **Uploads by script** (``PUT /uploads/{name}``, what the QGIS plugin sends): each goes
  into a folder of its own with a random 128-bit name; a job names it
  ``upload:<id>/<name>`` (:data:`UPLOAD_PREFIX`), never by a path on the server.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError

#: Where the server listens unless told otherwise: this machine only.
LOOPBACK_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: The environment variable that gives the token when ``--token`` does not.
TOKEN_ENV = "CLOUDSEG_SERVE_TOKEN"
DEFAULT_MAX_UPLOAD_MIB = 2048.0
DEFAULT_KEEP_HOURS = 24.0
#: Input schemes read over the network (GDAL's /vsicurl/ and /vsis3/, with timeouts).
URL_SCHEMES = ("https://", "http://", "s3://")
#: How a job names a file uploaded by ``PUT /uploads/{name}``: ``upload:<id>/<name>``.
UPLOAD_PREFIX = "upload:"
#: An upload's reference: 32 hex digits (its folder) and the file's sanitised name.
_UPLOAD_REFERENCE = re.compile(
    r"^upload:([0-9a-f]{32})/([A-Za-z0-9_-]{1,60}(\.[A-Za-z0-9]{1,8}){0,2})$"
)


def upload_name(name: str) -> str:
    """An uploaded file's name as the server stores it: letters, digits, ``-_``, its suffix.

    The suffix (``.tif``, ``.SAFE.zip``) is kept, for it says what the file is.

    Raises:
        InputError: For a name with nothing usable in it.
    """
    base = Path(name.replace("\\", "/")).name
    suffixes = [s for s in Path(base).suffixes[-2:] if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", s)]
    stem = base[: len(base) - len("".join(suffixes))] if suffixes else base
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:60].strip("_")
    if not safe:
        raise InputError(f"cannot store an upload named {name!r}: name it like scene.tif")
    return safe + "".join(suffixes)


def is_loopback(host: str) -> bool:
    """Tell whether ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class ServeConfig:
    """The settings of one server.

    Attributes:
        host: The interface to listen on (loopback by default).
        port: The TCP port (0: a free one).
        token: The token every request must carry; None on loopback means none needed.
        roots: Folders whose files (and their subfolders') jobs may read by path.
        work: Where uploads, job folders and the OGC configuration live.
        max_upload_mib: The largest upload accepted, MiB.
        keep_hours: Hours a finished job's folder and the uploads are kept.
        concurrency: Model runs at the same time (one per device by default).
        url: The address clients reach the server at (for result links), when it is not
            ``http://host:port`` (a proxy in front).
    """

    host: str = LOOPBACK_HOST
    port: int = DEFAULT_PORT
    token: str | None = None
    roots: list[Path] = field(default_factory=list)
    work: Path | None = None
    max_upload_mib: float = DEFAULT_MAX_UPLOAD_MIB
    keep_hours: float = DEFAULT_KEEP_HOURS
    concurrency: int = 1
    url: str | None = None
    #: True when the token was made here (it is printed at start).
    token_generated: bool = False

    def __post_init__(self) -> None:
        self.token = self.token or os.environ.get(TOKEN_ENV) or None
        if not is_loopback(self.host) and not self.token:
            self.token = secrets.token_urlsafe(24)
            self.token_generated = True
        if self.concurrency < 1:
            raise InputError(f"--concurrency must be at least 1, not {self.concurrency}")
        if not self.max_upload_mib > 0:
            raise InputError(f"--max-upload must be more than 0 MiB, not {self.max_upload_mib}")
        if not self.keep_hours > 0:
            raise InputError(f"--keep must be more than 0 hours, not {self.keep_hours}")
        roots = []
        for root in self.roots:
            path = Path(root).expanduser()
            if not path.is_dir():
                raise InputError(f"--root {root}: not a folder")
            roots.append(path.resolve())
        self.roots = roots

    @property
    def keep_seconds(self) -> float:
        """How long finished jobs and uploads are kept, seconds."""
        return self.keep_hours * 3600.0

    def base_url(self, port: int | None = None) -> str:
        """The address clients use, e.g. ``http://127.0.0.1:8000``."""
        if self.url:
            return self.url.rstrip("/")
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            import socket

            host = socket.gethostname()
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{port or self.port}"

    def allowed_hosts(self, port: int) -> set[str]:
        """The ``Host`` headers a loopback server answers (DNS rebinding stays out)."""
        names = {"localhost", "127.0.0.1", "[::1]", self.host}
        return {n for name in names for n in (name, f"{name}:{port}")}

    def resolve_input(self, text: str, uploads: Path | None = None) -> str:
        """The input a job reads: a URL as given, an upload, or a path under the roots.

        Args:
            text: What the request names.
            uploads: The folder of uploads made by ``PUT /uploads`` (None: none taken).

        Raises:
            InputError: For an empty input, an upload that is not there, a path outside
                every root (after ``..`` and symbolic links are resolved), or a path when
                no root is configured.
        """
        text = text.strip()
        if not text:
            raise InputError("no input: upload a scene or give a path or URL")
        if text.startswith(URL_SCHEMES):
            return text
        if text.startswith(UPLOAD_PREFIX) and uploads is not None:
            return self.resolve_upload(text, uploads)
        if "://" in text:
            raise InputError(
                f"{text.split('://')[0]}:// inputs are not read; use https:// or s3://"
            )
        if not self.roots:
            raise InputError(
                "this server reads no paths on its machine (it was started without --root); "
                "upload the scene or give an https:// or s3:// URL"
            )
        path = Path(text).expanduser()
        if not path.is_absolute():
            path = self.roots[0] / path
        resolved = path.resolve()
        if not any(resolved == root or root in resolved.parents for root in self.roots):
            raise InputError(
                f"{text} is outside the folders this server reads "
                f"({', '.join(str(r) for r in self.roots)})"
            )
        if not resolved.exists():
            raise InputError(f"{text}: no such file or folder on the server")
        return str(resolved)

    def resolve_upload(self, text: str, uploads: Path) -> str:
        """The file an ``upload:<id>/<name>`` reference names, in ``uploads``.

        Raises:
            InputError: For a malformed reference, or an upload that is not (or no
                longer) there.
        """
        match = _UPLOAD_REFERENCE.match(text)
        if match is None:
            raise InputError(
                "the input names no upload of this server: give the upload:<id>/<name> "
                "that PUT /uploads answered"
            )
        path = uploads / match.group(1) / match.group(2)
        if not path.is_file():
            raise InputError(
                f"the upload {match.group(2)} is not on the server (uploads are kept "
                f"{self.keep_hours:g} hours): upload the scene again"
            )
        return str(path)

    @property
    def max_upload_bytes(self) -> int:
        """The largest upload accepted, bytes."""
        return int(self.max_upload_mib * 2**20)

    def check_upload(self, path: Path) -> None:
        """Refuse an upload larger than the limit.

        Raises:
            InputError: When ``path`` is larger than ``max_upload_mib``.
        """
        self.check_upload_size(path.stat().st_size)

    def check_upload_size(self, size: int) -> None:
        """Refuse an upload of ``size`` bytes when it is larger than the limit.

        Raises:
            InputError: When ``size`` is larger than ``max_upload_mib``.
        """
        if size > self.max_upload_bytes:
            raise InputError(
                f"the upload is {size / 2**20:.0f} MiB; this server accepts up to "
                f"{self.max_upload_mib:g} MiB (--max-upload)"
            )


async def refuse(scope: dict[str, Any], send: Any, status: int, code: str, text: str) -> None:
    """Answer a request in one line: ``{"type", "code", "description"}`` (OGC's shape).

    A websocket is closed (policy violation) instead.
    """
    from starlette.responses import JSONResponse
    from starlette.websockets import WebSocketClose

    if scope["type"] == "websocket":
        await WebSocketClose(code=1008)(scope, _nothing, send)
        return
    body = {"type": code, "code": code, "description": text}
    await JSONResponse(body, status_code=status)(scope, _nothing, send)


async def _nothing() -> dict[str, Any]:
    """``receive`` for an answer that reads nothing of the request."""
    return {"type": "http.disconnect"}
