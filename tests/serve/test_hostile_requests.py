"""Requests a hostile page or client sends to the real ``cloudseg serve``: refused in one line.

Cross-site requests (a page elsewhere posting a form to the loopback server), bodies
larger than ``--max-upload`` that announce no length, URL inputs larger than it,
inputs of unbounded size, a full queue, a job that must stop now, a server told to
stop, and requests that used to raise inside the server (HTTP 500).
"""

from __future__ import annotations

import functools
import http.client
import http.server
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from ..conftest import tiled_scene
from ..serving import Server
from .conftest import start_server
from .test_ogc import _execute, _poll

pytestmark = [pytest.mark.real_data, pytest.mark.slow]

EVIL = "http://evil.example"


def _post(server: Server, path: str, body: bytes, content_type: str, **headers: str):
    return requests.post(
        f"{server.url}{path}",
        data=body,
        headers=server.headers() | {"Content-Type": content_type} | headers,
        timeout=60,
    )


def _jobs(server: Server) -> list[Path]:
    return sorted((server.work / "jobs").iterdir())


def _one_line(response, status: int, words: str) -> str:
    assert response.status_code == status, response.text
    description = response.json()["description"]
    assert words in description, description
    assert "\n" not in description and "Traceback" not in description
    return description


# -- item 4: cross-site requests -------------------------------------------------------------
EXECUTE = "/ogc/processes/segment/execution"
BODY = json.dumps({"inputs": {"input": "chip.tif"}}).encode()


@pytest.mark.parametrize(
    ("content_type", "headers"),
    [
        ("text/plain", {"Origin": EVIL}),
        ("application/x-www-form-urlencoded", {"Origin": EVIL}),
        ("application/json", {"Origin": EVIL}),
        ("text/plain", {"Referer": EVIL + "/page.html"}),
        ("application/json", {"Origin": "null"}),
    ],
)
def test_a_page_elsewhere_cannot_start_a_job(server, content_type, headers):
    before = _jobs(server)
    response = _post(server, EXECUTE, BODY, content_type, **headers)
    _one_line(response, 403, "from another site")
    assert _jobs(server) == before


def test_a_script_must_send_json_and_the_servers_own_page_may_post(server):
    before = _jobs(server)
    _one_line(_post(server, EXECUTE, BODY, "text/plain"), 415, "Content-Type: application/json")
    _one_line(_post(server, EXECUTE, BODY, "application/x-www-form-urlencoded"), 415, "JSON")
    assert _jobs(server) == before
    own = _post(server, EXECUTE, BODY, "application/json", Origin=server.url,
                Prefer="respond-async")  # fmt: skip
    assert own.status_code == 201, own.text
    job_id = own.headers["Location"].rsplit("/", 1)[-1]
    foreign = requests.delete(f"{server.url}/ogc/jobs/{job_id}", headers={"Origin": EVIL},
                              timeout=60)  # fmt: skip
    _one_line(foreign, 403, "from another site")
    assert _poll(server, job_id)["status"] == "successful"  # not dismissed by the other site


def test_the_pages_own_endpoints_refuse_other_sites(server):
    response = _post(server, "/gradio_api/queue/join", b"{}", "text/plain", Origin=EVIL)
    _one_line(response, 403, "from another site")


# -- item 5: bodies and downloads beyond --max-upload ---------------------------------------
@pytest.fixture(scope="module")
def small_server(venv_env, serve_files, tmp_path_factory) -> Iterator[Server]:
    """A server that accepts 1 MiB, reading the same root."""
    work = tmp_path_factory.mktemp("small-work")
    server = start_server(venv_env, work, "--root", str(serve_files), "--max-upload", "1")
    yield server
    server.stop()


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _chunked_post(
    url: str, path: str, total_mib: int, method: str = "POST"
) -> tuple[int, str, int]:
    """POST (or PUT) ``total_mib`` MiB with chunked transfer encoding (no Content-Length).

    Returns the status, the body and how many MiB were sent before the server answered.
    """
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    connection.putrequest(method, path)
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    chunk = b" " * 2**20
    sent = 0
    try:
        while sent < total_mib:
            connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += 1
        connection.send(b"0\r\n\r\n")
    except OSError:  # the server answered and closed: what it said is still readable
        pass
    response = connection.getresponse()
    return response.status, response.read().decode(), sent


def _runtimes_loaded(server: Server) -> None:
    """Wait until the server has read what runs its models (it imports the runtimes)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if requests.get(f"{server.url}/health", timeout=30).json()["device"] is not None:
            return
        time.sleep(0.2)
    raise AssertionError("the server never said what runs its models")


def test_a_chunked_body_is_counted_as_it_arrives(small_server):
    _runtimes_loaded(small_server)  # their import is not the body's memory
    before = _peak_rss_mib(small_server.proc.pid)
    status, body, sent = _chunked_post(small_server.url, EXECUTE, 150)
    assert status == 413, body
    assert "limited to 1 MiB" in json.loads(body)["description"]
    grown = _peak_rss_mib(small_server.proc.pid) - before
    assert grown < 64, f"the server's peak memory grew by {grown:.0f} MiB"
    print(f"chunked 150 MiB against --max-upload 1: peak RSS +{grown:.1f} MiB, "
          f"{sent} MiB sent before the answer")  # fmt: skip


def test_an_upload_by_script_over_the_limit_leaves_nothing(small_server):
    """``PUT /uploads``: an unannounced body past --max-upload is 413, and nothing is kept."""
    api = small_server.work / "uploads" / "api"
    status, body, _ = _chunked_post(small_server.url, "/uploads/scene.tif", 20, method="PUT")
    assert status == 413, body
    assert "1 MiB" in json.loads(body)["description"]
    deadline = time.monotonic() + 10
    while any(api.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(api.iterdir())
    # An announced length over the limit is refused before a byte is read.
    announced = requests.put(f"{small_server.url}/uploads/scene.tif", data=b"x" * (2 * 2**20),
                             timeout=60)  # fmt: skip
    _one_line(announced, 413, "--max-upload")
    assert not any(api.iterdir())


@pytest.mark.parametrize(
    "reference", ["upload:../../../../etc/passwd", "upload:" + "0" * 32 + "/../../x.tif",
                  "upload:" + "0" * 32 + "/scene.tif"],
)  # fmt: skip
def test_a_job_names_only_uploads_that_exist(small_server, reference):
    response = requests.post(f"{small_server.url}{EXECUTE}",
                             json={"inputs": {"input": reference}}, timeout=60)  # fmt: skip
    description = _one_line(response, 400, "upload")
    assert "/etc" not in description and str(small_server.work) not in description


def test_an_upload_name_is_made_safe(small_server):
    stored = requests.put(f"{small_server.url}/uploads/..%5C..%5Cmy%20scene;rm.tif",
                          data=b"II*\0", timeout=60)  # fmt: skip
    assert stored.status_code == 201, stored.text
    reference = stored.json()["input"]
    assert reference.startswith("upload:") and reference.endswith("/my_scene_rm.tif")
    assert [p.name for p in (small_server.work / "uploads" / "api").glob("*/*")] == [
        "my_scene_rm.tif"
    ]


class _Unannounced(http.server.SimpleHTTPRequestHandler):
    """Serves files without Content-Length (as a chunked or streaming server does)."""

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() != "content-length":
            super().send_header(keyword, value)


@pytest.mark.parametrize("announced", [True, False])
def test_a_url_input_beyond_the_limit_is_not_downloaded(small_server, serve_files, tmp_path,
                                                        announced):  # fmt: skip
    (tmp_path / "big.tif").write_bytes((serve_files / "chip.tif").read_bytes() * 2)
    assert (tmp_path / "big.tif").stat().st_size > 2**20
    kind = http.server.SimpleHTTPRequestHandler if announced else _Unannounced
    handler = functools.partial(kind, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.protocol_version = "HTTP/1.0"  # the end of the body is the end of the connection
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/big.tif"
        _one_line(_execute(small_server, {"input": url}), 400, "over 1 MiB")
    finally:
        httpd.shutdown()
    leftovers = [p for p in (small_server.work / "jobs").rglob("*") if p.is_file()]
    assert leftovers == []


# -- item 6: bounded inputs, a bounded queue, prompt cancel and stop --------------------------
@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        ({"bands": ",".join(["B02", "B03", "B04", "B08"] * 10_000)}, "at most 256"),
        ({"input": "chip.tif" + "/x" * 5000}, "at most 4096"),
        ({"tile_size": 1e308}, "must be from 64 to 65536"),
        ({"batch_size": 10**12}, "must be from 1 to 65536"),
        ({"bands": "B02,B03,B02,B08"}, "listed twice"),
    ],
)
def test_inputs_of_unbounded_size_are_refused_at_once(server, inputs, words):
    started = time.monotonic()
    response = _execute(server, {"input": "chip.tif"} | inputs)
    _one_line(response, 400, words)
    assert time.monotonic() - started < 5


@pytest.fixture(scope="module")
def slow_scene(serve_files) -> Path:
    return tiled_scene(serve_files / "chip.tif", serve_files / "mosaic.tif")


def test_a_full_queue_says_when_to_come_back_and_cancel_is_prompt(server, slow_scene):
    from cloudseg.backend.serve.jobs import MAX_WAITING

    def submit() -> requests.Response:
        return _execute(server, {"input": str(slow_scene), "tta": True}, "respond-async")

    first = submit()
    assert first.status_code == 201, first.text
    running = first.headers["Location"].rsplit("/", 1)[-1]
    _poll(server, running, until=("running",))
    accepted, refused = [], None
    for _ in range(MAX_WAITING + 3):
        response = submit()
        if response.status_code == 429:
            refused = response
            break
        assert response.status_code == 201, response.text
        accepted.append(response.headers["Location"].rsplit("/", 1)[-1])
    assert refused is not None, f"{len(accepted)} jobs were queued"
    assert len(accepted) == MAX_WAITING
    assert int(refused.headers["Retry-After"]) > 0
    assert "busy" in refused.json()["description"]
    slowest = 0.0
    for _ in range(5):  # the status of a waiting job answers while the worker is busy
        started = time.monotonic()
        status = requests.get(f"{server.url}/ogc/jobs/{accepted[-1]}?f=json", timeout=30)
        slowest = max(slowest, time.monotonic() - started)
        assert status.json()["status"] == "accepted"
    assert slowest < 2.0, f"a status request took {slowest:.1f} s"
    _page_says_busy(server)
    for job_id in accepted:
        assert requests.delete(f"{server.url}/ogc/jobs/{job_id}", timeout=30).status_code == 200
    started = time.monotonic()
    assert requests.delete(f"{server.url}/ogc/jobs/{running}", timeout=60).status_code == 200
    took = time.monotonic() - started
    assert took < 15, f"the running job's dismissal took {took:.1f} s"
    print(f"queue full after {len(accepted)} waiting jobs; slowest status {slowest:.2f} s; "
          f"running job dismissed in {took:.1f} s")  # fmt: skip


def _page_says_busy(server: Server) -> None:
    """With the queue full, a Segment click on the page is one line saying so."""
    from ..browser import chromium, wait_for
    from .test_web import _name_and_run

    browser = chromium(1400, 1100)
    try:
        _name_and_run(browser, server, "chip.tif")
        body = lambda: browser.find_element("tag name", "body").text  # noqa: E731
        wait_for(lambda: "the server is busy" in body(), 60, "the busy message")
        assert "Traceback" not in body()
    finally:
        browser.quit()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_the_server_stops_within_seconds_while_a_client_waits(
    venv_env, serve_files, slow_scene, tmp_path, stop
):
    server = start_server(venv_env, tmp_path / "work", "--root", str(serve_files))
    try:
        waiting = threading.Thread(
            target=lambda: _execute(server, {"input": str(slow_scene), "tta": True}),
            daemon=True,
        )
        waiting.start()
        deadline = time.monotonic() + 120
        while not any(p.is_dir() for p in (server.work / "jobs").glob("*")):
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.2)
        time.sleep(2)  # the job runs, its client waits
        started = time.monotonic()
        server.proc.send_signal(stop)
        try:
            server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the server did not stop within 20 s of {stop.name}") from None
        print(f"{stop.name}: stopped in {time.monotonic() - started:.1f} s")
    finally:
        if server.proc.poll() is None:
            server.proc.kill()


# -- item 9: what used to be HTTP 500 --------------------------------------------------------
def test_requests_that_raised_inside_the_server_are_one_line(server):
    raw = _post(server, EXECUTE, b'{"inputs": {"input": "chip.tif", "buffer_cloud_m": 1e400}}',
                "application/json")  # fmt: skip
    _one_line(raw, 400, "finite number")
    _one_line(_post(server, EXECUTE, b'["chip.tif"]', "application/json"), 400, "JSON object")
    _one_line(_post(server, EXECUTE, b'{"inputs": ["chip.tif"]}', "application/json"), 400,
              "must be an object")  # fmt: skip
    _one_line(_post(server, EXECUTE, b"\xff\xfe", "application/json"), 400, "not JSON")
    _one_line(_execute(server, {"input": "chip\u0000.tif"}), 400, "control character")
    _one_line(_execute(server, {"input": ["chip.tif"]}), 400, "must be text")


def test_a_non_ascii_token_is_just_a_wrong_token(venv_env, serve_files, tmp_path):
    server = start_server(venv_env, tmp_path / "work", "--root", str(serve_files),
                          "--token", "right-token", token="right-token")  # fmt: skip
    try:
        for offered in ("Bearer caf\u00e9", "Bearer \u00ff" * 3):
            response = requests.get(
                f"{server.url}/ogc/?f=json",
                headers={"Authorization": offered.encode("latin-1")},  # type: ignore[dict-item]
                timeout=30,
            )
            _one_line(response, 401, "needs its token")
        cookie = requests.get(f"{server.url}/ogc/?f=json", timeout=30,
                              headers={"Cookie": 'cloudseg_token="\\xff; bad'})  # fmt: skip
        assert cookie.status_code == 401
        assert requests.get(f"{server.url}/ogc/?f=json", headers=server.headers(),
                            timeout=30).status_code == 200  # fmt: skip
    finally:
        server.stop()


def test_errors_do_not_show_the_servers_folders(server, serve_files, tmp_path):
    """A downloaded VRT that names a missing neighbour: its name, not the job's folder."""
    from osgeo import gdal

    (tmp_path / "web").mkdir()
    gdal.BuildVRT(str(tmp_path / "web" / "scene.vrt"), [str(serve_files / "chip.tif")])
    text = (tmp_path / "web" / "scene.vrt").read_text()
    text = text.replace(f'relativeToVRT="0">{serve_files}/chip.tif', 'relativeToVRT="1">chip.tif')
    (tmp_path / "web" / "scene.vrt").write_text(text)
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "web")
    )
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/scene.vrt"
        description = _one_line(_execute(server, {"input": url}), 400, "scene.vrt")
    finally:
        httpd.shutdown()
    assert str(server.work) not in description and "/jobs/" not in description, description


def test_a_refused_request_is_one_line_in_the_server_log(server):
    """The OGC API's refusals, like the page's, are one WARNING line, not a traceback."""
    seen = len(server.lines)
    _one_line(_execute(server, {"input": "/etc/passwd"}), 400, "outside the folders")
    deadline = time.monotonic() + 10
    while not any("outside the folders" in line for line in server.lines[seen:]):
        assert time.monotonic() < deadline, "the refusal was not logged"
        time.sleep(0.1)
    time.sleep(0.5)
    logged = server.lines[seen:]
    assert next(line for line in logged if "outside the folders" in line).count("WARNING") == 1
    assert not any("Traceback" in line for line in logged), "\n".join(logged)
