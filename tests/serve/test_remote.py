"""The client QGIS uses to run on a cloudseg server: a real server with a token, on loopback.

``backend/remote.py`` (the standard library only) against ``cloudseg serve --token``:
the mask a job gives is the CLI's, a scene outside the server's roots is streamed to
it and the results come back together (or not at all), Cancel dismisses the server's
job, and a wrong token, a closed port and a silent server are each one line within the
timeout.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudseg.backend.errors import CancelledError
from cloudseg.backend.remote import RemoteError, ServerClient, run_on_server

from ..conftest import tiled_scene
from ..serving import Server, start_server
from .conftest import cli_segment, same_mask

pytestmark = [pytest.mark.real_data, pytest.mark.slow]

TOKEN = "a-long-token-for-the-remote-client-test"


@pytest.fixture(scope="module")
def token_server(venv_env, serve_files, tmp_path_factory) -> Iterator[Server]:
    """A loopback server that needs a token, reading ``serve_files``."""
    env = dict(venv_env)
    env.pop("CLOUDSEG_SERVE_TOKEN", None)
    work = tmp_path_factory.mktemp("remote-work")
    proc = start_server(env, work, "--root", str(serve_files), "--token", TOKEN, token=TOKEN)
    yield proc
    proc.stop()


def test_a_job_on_the_server_gives_the_clis_mask(token_server, serve_files, venv_env, tmp_path):
    client = ServerClient(token_server.url, TOKEN)
    seen: list[tuple[float, str]] = []
    job = client.run(
        "segment", {"input": str(serve_files / "chip.tif"), "product_level": "L2A"},
        progress=lambda p, m: seen.append((p, m)),
    )  # fmt: skip
    served = client.download(job.results["mask"]["href"], tmp_path / "served.tif")
    cli = cli_segment(venv_env, serve_files / "chip.tif", tmp_path / "cli.tif",
                      "--product-level", "L2A")  # fmt: skip
    same_mask(served, cli)
    assert seen and seen[-1][0] == 100
    assert job.summary["runner"] and job.summary["model"] == "ukis-csmask-4b-l2a"
    assert not list(tmp_path.glob(".*.partial"))


def _uploads(server: Server) -> list[Path]:
    """The files the server holds from uploads by script."""
    return sorted(p for p in (server.work / "uploads" / "api").glob("*/*") if p.is_file())


def test_a_scene_outside_the_roots_is_uploaded_and_its_results_come_back(
    token_server, serve_files, venv_env, tmp_path
):
    scene = shutil.copy(serve_files / "chip.tif", tmp_path / "adwp.tif")  # not under --root
    before = _uploads(token_server)
    seen: list[tuple[float, str]] = []
    (tmp_path / "out").mkdir()  # as for a local run, the results' folder exists
    outputs = {"mask": tmp_path / "out" / "mask.tif", "valid": tmp_path / "out" / "valid.tif",
               "polygons": tmp_path / "out" / "polygons.gpkg", "probabilities": None}  # fmt: skip
    run = run_on_server(
        ServerClient(token_server.url, TOKEN), "segment", Path(scene),
        {"product_level": "L2A", "bands": ["B02", "B03", "B04", "B08"], "max_memory_mib": 512.0},
        outputs, progress=lambda p, m: seen.append((p, m)),
    )  # fmt: skip
    # Uploaded (one new file on the server, named as the scene), segmented as the CLI does.
    added = [p for p in _uploads(token_server) if p not in before]
    assert [p.name for p in added] == ["adwp.tif"]
    assert added[0].read_bytes() == Path(scene).read_bytes()
    cli = cli_segment(venv_env, Path(scene), tmp_path / "cli.tif", "--product-level", "L2A")
    same_mask(run.files["mask"], cli)
    assert set(run.files) == {"mask", "valid", "polygons"} and run.files["polygons"].stat().st_size
    assert not (tmp_path / "out" / "probabilities.tif").exists()
    # Where it ran, the server's runner, in one line without the token.
    assert run.where.startswith("server 127.0.0.1:") and run.summary["runner"] in run.where
    assert TOKEN not in run.where and run.summary["accounting"]["km2"] > 0
    # Progress went through sending, the job and the downloads, in order.
    messages = [m for _, m in seen]
    assert any(m.startswith("uploading adwp.tif") for m in messages)
    assert any(m.startswith("downloading the results") for m in messages)
    assert [p for p, _ in seen] == sorted(p for p, _ in seen) and seen[-1][0] >= 95


def test_a_scene_under_a_root_is_sent_by_its_path(token_server, serve_files):
    client = ServerClient(token_server.url, TOKEN)
    before = _uploads(token_server)
    assert client.scene_input(serve_files / "chip.tif") == str((serve_files / "chip.tif").resolve())
    capabilities = client.capabilities()
    assert capabilities["roots"] == [str(serve_files.resolve())]
    # What runs the models there, for the dock's device line before a run (read in the
    # background after the start, so that /health always answers at once).
    deadline = time.monotonic() + 60
    while capabilities["device"] is None and time.monotonic() < deadline:
        time.sleep(0.5)
        capabilities = client.capabilities()
    runner = capabilities["device"]["runner"]
    assert runner.split()[0] in ("onnxruntime", "openvino", "torch")
    assert ("CPU" in runner) != ("CUDA" in runner)
    assert _uploads(token_server) == before


def test_results_are_published_together_or_not_at_all(token_server, serve_files, tmp_path):
    client = ServerClient(token_server.url, TOKEN)
    job = client.run("segment", {"input": str(serve_files / "chip.tif")})
    kept = tmp_path / "mask.tif"
    kept.write_bytes(b"an earlier result")
    with pytest.raises(RemoteError, match="no cam to download"):
        client.fetch(job.results, {"mask": kept, "cam": tmp_path / "cam.tif"})
    assert kept.read_bytes() == b"an earlier result"
    stopped = iter([False, True])  # cancel after the first chunk
    with pytest.raises(CancelledError):
        client.fetch(job.results, {"mask": kept, "probabilities": tmp_path / "p.tif"},
                     cancelled=lambda: next(stopped, True))  # fmt: skip
    assert kept.read_bytes() == b"an earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.tif"]  # no partial file


def test_an_upload_over_the_limit_is_said_before_sending(token_server, tmp_path):
    client = ServerClient(token_server.url, TOKEN)
    big = tmp_path / "big.tif"
    with big.open("wb") as handle:  # sparse: 3 MiB announced, nothing sent
        handle.truncate(3 * 2**20)
    before = _uploads(token_server)
    with pytest.raises(RemoteError, match=r"big.tif is 3 MiB; .* accepts uploads up to 1 MiB"):
        client.upload(big, limit=2**20)
    assert _uploads(token_server) == before


def test_a_cancelled_upload_leaves_nothing_on_the_server(token_server, tmp_path):
    client = ServerClient(token_server.url, TOKEN)
    scene = tmp_path / "scene.tif"
    scene.write_bytes(b"\0" * (8 * 2**20))
    chunks = iter(range(3))
    with pytest.raises(CancelledError, match="upload was stopped"):
        client.upload(scene, cancelled=lambda: next(chunks, 99) >= 2)
    api = token_server.work / "uploads" / "api"
    deadline = time.monotonic() + 10
    while list(api.glob("*/.*.partial")) and time.monotonic() < deadline:
        time.sleep(0.2)  # the server sees the connection drop, then removes the part
    assert not list(api.glob("*/.*.partial"))
    assert not any(p.name == "scene.tif" for p in _uploads(token_server))


def test_cancel_dismisses_the_servers_job(token_server, serve_files):
    client = ServerClient(token_server.url, TOKEN)
    mosaic = tiled_scene(serve_files / "chip.tif", serve_files / "remote-mosaic.tif")
    job_id = client.submit("segment", {"input": str(mosaic), "tta": True})
    started = time.monotonic()
    with pytest.raises(CancelledError, match="dismissed"):
        client.wait(job_id, cancelled=lambda: time.monotonic() - started > 1.0)
    with pytest.raises(RemoteError, match="no such job"):  # dismissed: gone with its files
        client.status(job_id)


def test_a_wrong_token_and_a_refused_request_are_one_line(token_server, serve_files):
    with pytest.raises(RemoteError) as wrong:
        ServerClient(token_server.url, "not-the-token").describe()
    message = str(wrong.value)
    assert "token" in message and "\n" not in message and "not-the-token" not in message
    client = ServerClient(token_server.url, TOKEN)
    with pytest.raises(RemoteError) as outside:
        client.submit("segment", {"input": "/etc/passwd"})
    assert "refused" in str(outside.value) and "\n" not in str(outside.value)
    assert client.describe()["id"] == "segment"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_or_silent_server_is_one_line_within_the_timeout():
    closed = ServerClient(f"http://127.0.0.1:{_free_port()}", TOKEN, timeout=2)
    with pytest.raises(RemoteError, match="cannot reach the cloudseg server") as refused:
        closed.describe()
    assert "\n" not in str(refused.value) and TOKEN not in str(refused.value)

    silent = socket.socket()  # accepts connections and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(silent.accept()[0]), daemon=True).start()
    try:
        client = ServerClient(f"http://127.0.0.1:{silent.getsockname()[1]}", TOKEN, timeout=2)
        started = time.monotonic()
        with pytest.raises(RemoteError, match="no answer within 2 s"):
            client.submit("segment", {"input": "chip.tif"})
        assert time.monotonic() - started < 10
    finally:
        for connection in held:
            connection.close()
        silent.close()


def test_a_url_that_is_not_a_server_is_refused_at_once():
    with pytest.raises(RemoteError, match="http"):
        ServerClient("file:///etc/passwd")
