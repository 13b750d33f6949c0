"""One network-timeout policy for every read cloudseg makes over the network.

Three clients read from the network: boto3 (S3 stores, S3 inputs and outputs), GDAL
(``/vsicurl/`` and ``/vsis3/`` band assets of STAC Items) and urllib (http(s) image
assets downloaded by a batch). All three take their limits from here, so that a server
that accepts a connection and then never answers costs a bounded time, whichever
client meets it:

- ``CLOUDSEG_CONNECT_TIMEOUT``: seconds to open a connection (default 10);
- ``CLOUDSEG_READ_TIMEOUT``: seconds without a byte from an open connection (default 30);
- ``CLOUDSEG_NETWORK_RETRIES``: further attempts after a failed request (default 2).

``CLOUDSEG_S3_CONNECT_TIMEOUT`` and ``CLOUDSEG_S3_READ_TIMEOUT`` set the S3 limits
alone (and win there). GDAL options the user set in the environment are never
replaced. One request that meets a silent server thus fails within
``(retries + 1) * (connect + read)`` seconds plus about a second of back-off.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CancelledError, InputError

#: Defaults, in seconds.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0
RETRIES = 2


@dataclass(frozen=True)
class Timeouts:
    """How long a network client waits, and how often it tries again."""

    connect: float
    read: float
    retries: int

    @property
    def attempts(self) -> int:
        """Requests made in all (the first and the retries)."""
        return self.retries + 1

    def bound(self) -> float:
        """Seconds one request may take at most against a server that never answers."""
        return self.attempts * (self.connect + self.read) + self.retries


def _seconds(variable: str, default: float) -> float:
    text = os.environ.get(variable)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{variable} must be a number of seconds, not {text!r}") from None
    if not value > 0:
        raise InputError(f"{variable} must be more than 0 seconds, not {text!r}")
    return value


def timeouts(service: str = "http") -> Timeouts:
    """The limits for ``service`` (``"http"`` or ``"s3"``) from the environment.

    Raises:
        InputError: If a variable is not a positive number.
    """
    connect = _seconds("CLOUDSEG_CONNECT_TIMEOUT", CONNECT_TIMEOUT)
    read = _seconds("CLOUDSEG_READ_TIMEOUT", READ_TIMEOUT)
    if service == "s3":
        connect = _seconds("CLOUDSEG_S3_CONNECT_TIMEOUT", connect)
        read = _seconds("CLOUDSEG_S3_READ_TIMEOUT", read)
    text = os.environ.get("CLOUDSEG_NETWORK_RETRIES", "")
    try:
        retries = int(text) if text else RETRIES
    except ValueError:
        raise InputError(f"CLOUDSEG_NETWORK_RETRIES must be a whole number, not {text!r}") from None
    if retries < 0:
        raise InputError(f"CLOUDSEG_NETWORK_RETRIES must be 0 or more, not {retries}")
    return Timeouts(connect, read, retries)


# -- boto3 ---------------------------------------------------------------------------------
def boto_config() -> Any:
    """A botocore ``Config`` with the S3 limits (connect, read, attempts)."""
    from botocore.config import Config

    limits = timeouts("s3")
    return Config(
        retries={"total_max_attempts": limits.attempts, "mode": "standard"},
        connect_timeout=limits.connect,
        read_timeout=limits.read,
    )


# -- GDAL ----------------------------------------------------------------------------------
def gdal_options() -> dict[str, str]:
    """GDAL's HTTP options (``/vsicurl/``, ``/vsis3/``) under this policy.

    The read timeout is curl's low-speed limit: less than one byte a second for that
    long aborts the request, as a socket read timeout does; a transfer that keeps
    moving is not cut. Options set in the environment are left out (the user's win).
    """
    limits = timeouts("http")
    options = {
        "GDAL_HTTP_CONNECTTIMEOUT": f"{limits.connect:g}",
        "GDAL_HTTP_LOW_SPEED_TIME": f"{max(1, round(limits.read))}",
        "GDAL_HTTP_LOW_SPEED_LIMIT": "1",
        "GDAL_HTTP_MAX_RETRY": str(limits.retries),
        "GDAL_HTTP_RETRY_DELAY": "0.5",
    }
    return {k: v for k, v in options.items() if k not in os.environ}


_gdal_lock = threading.Lock()
_gdal_applied: list[dict[str, str]] = []


def configure_gdal() -> None:
    """Set :func:`gdal_options` as GDAL's process-wide configuration (idempotent).

    Called where files are opened (the scene reader, a batch's band VRTs), in the main
    process and on every Dask worker alike. It is cheap when nothing changed.
    """
    options = gdal_options()
    with _gdal_lock:
        if _gdal_applied and _gdal_applied[-1] == options:
            return
        from rasterio.env import set_gdal_config

        for key, value in options.items():
            set_gdal_config(key, value)
        try:  # GDAL's own bindings may carry another copy of the library
            from osgeo import gdal
        except ImportError:
            gdal = None
        if gdal is not None:
            for key, value in options.items():
                gdal.SetConfigOption(key, value)
        _gdal_applied[:] = [options]


# -- urllib --------------------------------------------------------------------------------
_MAX_DOWNLOAD: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "cloudseg_max_download", default=None
)
_CANCELLED: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar(
    "cloudseg_download_cancelled", default=None
)


@contextlib.contextmanager
def download_limit(
    max_bytes: int | None, cancelled: Callable[[], bool] | None = None
) -> Iterator[None]:
    """Cap every input fetched inside (http(s) downloads, S3 objects) at ``max_bytes``.

    A server sets it for a job's thread (its ``--max-upload``): a URL input is an upload
    the server makes on the client's behalf. None: no cap. ``cancelled`` is asked
    between chunks: a dismissed job stops downloading at once (``CancelledError``).
    """
    tokens = (_MAX_DOWNLOAD.set(max_bytes), _CANCELLED.set(cancelled))
    try:
        yield
    finally:
        _MAX_DOWNLOAD.reset(tokens[0])
        _CANCELLED.reset(tokens[1])


def check_download_size(size: int, shown: str) -> None:
    """Refuse an input of ``size`` bytes over the active cap (:func:`download_limit`).

    Raises:
        InputError: One line naming the input, its size and the cap.
    """
    cap = _MAX_DOWNLOAD.get()
    if cap is not None and size > cap:
        raise InputError(
            f"{shown} is over {cap / 2**20:g} MiB, the largest input this server "
            "accepts (--max-upload)"
        )


def download(url: str, target: Path) -> None:
    """Stream an http(s) URL into ``target`` under this policy's limits.

    Under :func:`download_limit` the announced size is checked first and the bytes are
    counted as they arrive; past the cap the partial file is removed.

    Raises:
        InputError: One line, when the server cannot be reached, does not answer in
            time, answers with an error, or sends more than the cap.
    """
    import time
    import urllib.error
    import urllib.request

    limits = timeouts("http")
    wait = max(limits.connect, limits.read)  # urllib has one socket timeout for both
    shown = redact(url, query=False)
    last = ""
    for attempt in range(limits.attempts):
        if attempt:
            time.sleep(0.5)
        try:
            with urllib.request.urlopen(url, timeout=wait) as answer:
                announced = answer.headers.get("Content-Length", "")
                if announced.isdigit():
                    check_download_size(int(announced), shown)
                with target.open("wb") as handle:
                    received = 0
                    cancelled = _CANCELLED.get()
                    while chunk := answer.read(1 << 20):
                        received += len(chunk)
                        check_download_size(received, shown)
                        if cancelled is not None and cancelled():
                            raise CancelledError(f"the download of {shown} was cancelled")
                        handle.write(chunk)
            return
        except (InputError, CancelledError):
            target.unlink(missing_ok=True)
            raise
        except urllib.error.HTTPError as exc:
            raise InputError(f"{shown} answered HTTP {exc.code} ({exc.reason})") from None
        except TimeoutError:
            last = f"{shown} did not answer within {wait:g} s (CLOUDSEG_READ_TIMEOUT)"
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError):
                last = f"cannot connect to {shown} within {wait:g} s"
            else:
                last = f"cannot read {shown} ({reason})"
    raise InputError(f"{last}; tried {limits.attempts} time(s)")


def redact(url: str, query: bool = True) -> str:
    """``url`` as it may be shown in a message: never its credentials.

    Any ``user:secret@`` becomes ``***@``; without ``query``, the query string (the
    signature of a signed URL) and the fragment are cut too.
    """
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if "@" in parts.netloc:  # never echo credentials
        parts = parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[-1])
    if not query:
        parts = parts._replace(query="", fragment="")
    return urlunsplit(parts)


__all__ = [
    "Timeouts",
    "boto_config",
    "check_download_size",
    "configure_gdal",
    "download",
    "download_limit",
    "gdal_options",
    "redact",
    "timeouts",
]
