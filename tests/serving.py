"""A real ``cloudseg serve`` process on a free loopback port.

Used by the server's tests (``tests/serve``), ``scripts/screenshot_serve.py`` and
``dev/benchmark_serve.py``: the server is started as a user starts it, and the line
it prints first says where it listens.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path

#: Seconds the server may take to start (Gradio, pygeoapi and torch imports).
START_SECONDS = 120


class Server:
    """A running ``cloudseg serve`` and what it printed.

    Attributes:
        proc: The process.
        url: Where it listens (``http://127.0.0.1:PORT``).
        token: The token its clients send, if any.
        lines: Everything it printed so far.
        started_s: Seconds from the process start to its "listening on" line.
        work: Its ``--work`` folder (uploads, job folders).
    """

    def __init__(self, proc: subprocess.Popen, url: str, token: str | None) -> None:
        self.proc, self.url, self.token = proc, url, token
        self.work = Path()
        self.lines: list[str] = []
        self.started_s = 0.0

    def headers(self) -> dict[str, str]:
        """The headers a client with the token sends."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 30 s) and wait for it."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_server(
    env: dict[str, str] | None,
    work: Path,
    *args: str,
    token: str | None = None,
    command: str | Path = "cloudseg",
) -> Server:
    """Start ``cloudseg serve --port 0 --work WORK ARGS`` and wait until it listens.

    Raises:
        AssertionError: With what it printed, when it exits or does not listen in time.
    """
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(command), "serve", "--port", "0", "--work", str(work), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line.rstrip())
            if "listening on" in line:
                found.set()
        found.set()

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(START_SECONDS) or proc.poll() is not None:
        proc.kill()
        raise AssertionError("cloudseg serve did not start:\n" + "\n".join(lines))
    said = next(x for x in lines if "listening on" in x)
    server = Server(proc, re.search(r"listening on (\S+)", said)[1], token)  # type: ignore[index]
    server.lines = lines
    server.work = Path(work).resolve()
    server.started_s = time.perf_counter() - started
    return server
