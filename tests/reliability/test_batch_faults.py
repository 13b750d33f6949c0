"""``segment-batch`` under faults and hostile inputs, through the real CLI on real scenes.

The cluster listens on loopback only (and speaks TLS with a key of its own); every network
read has a timeout, so silent servers cost a bounded time and one line per scene; the
output folder holds only the batch's own files, resumes check the input and the mask,
and one batch at a time writes it, whatever a killed one left behind.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from ..conftest import start_moto
from .conftest import error_line, snapshot

pytestmark = pytest.mark.real_data

#: Short network limits for the tests: one request meets a silent server for 1 s.
FAST = {"CLOUDSEG_CONNECT_TIMEOUT": "1", "CLOUDSEG_READ_TIMEOUT": "1"}
#: What the command itself costs here (start, model load, a local cluster), in seconds.
STARTUP = 60


@pytest.fixture
def scenes(batch_scenes, tmp_path) -> Path:
    """Three real scenes (256 x 512 px, 4 bands) in a folder of their own."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("adwp-top", "adwu-top", "adxp-bottom"):
        shutil.copy2(batch_scenes / f"{name}.tif", folder / f"{name}.tif")
    return folder


def batch(workspace, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """``cloudseg segment-batch ... --json -q`` in the workspace."""
    return workspace.cli(
        "segment-batch", *args, "--product-level", "L2A", "--workers", "1", "--json", "-q",
        timeout=timeout,
    )  # fmt: skip


def no_dask_noise(stderr: str) -> None:
    """Nothing of Dask's own logging nor any traceback reached the terminal."""
    assert "Traceback" not in stderr
    assert "distributed." not in stderr and "Compute Failed" not in stderr


# -- 4. the local cluster listens on loopback only, with TLS ----------------------------------
def _listening(pid: int, children: bool = True) -> set[tuple[str, int]]:
    """(address, port) of every listening socket of a process (and of its children)."""
    import psutil

    found = set()
    try:
        root = psutil.Process(pid)
        for process in [root, *(root.children(recursive=True) if children else [])]:
            try:
                for conn in process.net_connections(kind="inet"):
                    if conn.status == psutil.CONN_LISTEN:
                        found.add((conn.laddr.ip, conn.laddr.port))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    except psutil.NoSuchProcess:
        pass
    return found


@pytest.mark.slow
def test_a_local_batch_listens_on_loopback_only_and_needs_its_own_key(
    workspace, batch_scenes, tmp_path
):
    from distributed import Client
    from distributed.security import Security

    process = subprocess.Popen(
        ["cloudseg", "segment-batch", str(batch_scenes), "--out", str(tmp_path / "out"),
         "--product-level", "L2A", "--workers", "2", "--json", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=workspace.env,
    )  # fmt: skip
    seen: set[tuple[str, int]] = set()
    refused = None
    while process.poll() is None:
        seen |= _listening(process.pid)
        own = _listening(process.pid, children=False)  # the scheduler (and dashboard)
        if refused is None and own and len(seen) > len(own):  # and the workers are up
            # Another user of the machine (no key of the run) cannot join and run code.
            joined = []
            for _, port in sorted(own):
                if _is_http(port):  # the dashboard (read-only pages)
                    continue
                for address in (f"tcp://127.0.0.1:{port}", f"tls://127.0.0.1:{port}"):
                    security = Security.temporary() if address.startswith("tls") else None
                    try:
                        with Client(address, timeout=3, security=security) as client:
                            client.run(os.getpid)
                        joined.append(address)
                    except Exception:  # refused: no key of the run
                        continue
            refused = not joined and process.poll() is None  # refused by a live cluster
        time.sleep(0.05)
    stdout, stderr = process.communicate()
    assert process.returncode == 1, stderr  # the broken scene
    result = json.loads(stdout)
    assert result["counts"] == {"done": 10, "failed": 1}
    assert seen, "no listening socket was seen"
    assert all(ipaddress.ip_address(ip).is_loopback for ip, _ in seen), seen
    tls = importlib.util.find_spec("cryptography") is not None  # else loopback alone
    assert result["scheduler"].startswith(f"{'tls' if tls else 'tcp'}://127.0.0.1:")
    assert result["dashboard"] is None or "127.0.0.1" in result["dashboard"]
    assert refused is True
    no_dask_noise(stderr)


def test_the_in_process_cluster_of_qgis_listens_on_loopback_only():
    # Inside QGIS the workers are threads (no worker processes): they talk in memory,
    # and the dashboards listen on 127.0.0.1.
    from cloudseg.backend.batch import dask_client

    before = _listening(os.getpid(), children=False)  # this test process's own
    with dask_client(None, 2, 1, processes=False) as client:
        assert client.scheduler.address.startswith("inproc://")
        listening = _listening(os.getpid(), children=False) - before
    assert listening and all(ipaddress.ip_address(ip).is_loopback for ip, _ in listening)


def _is_http(port: int) -> bool:
    """Whether the server on a loopback port answers HTTP (the dashboard)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as connection:
        connection.sendall(b"GET / HTTP/1.0\r\n\r\n")
        try:
            return connection.recv(4).startswith(b"HTTP")
        except OSError:  # the scheduler waits for a TLS hello, or closes
            return False


def _pem_files(folder: Path) -> tuple[object, dict[str, str]]:
    """A TLS Security for a test cluster, and the Dask variables a client needs for it."""
    from distributed.security import Security

    security = Security.temporary()
    folder.mkdir()
    (folder / "ca.pem").write_text(security.tls_ca_file)
    (folder / "cert.pem").write_text(security.tls_client_cert)
    (folder / "key.pem").write_text(security.tls_client_key)
    env = {
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(folder / "ca.pem"),
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": str(folder / "cert.pem"),
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": str(folder / "key.pem"),
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
    }
    return security, env


@pytest.mark.slow
def test_a_tls_scheduler_runs_the_batch_with_dask_security_settings(workspace, scenes, tmp_path):
    from distributed import LocalCluster

    security, tls_env = _pem_files(tmp_path / "certs")
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, protocol="tls://",
        host="127.0.0.1", security=security, dashboard_address=None,
    ) as cluster:  # fmt: skip
        address = cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        # Without the certificates: one line, no traceback, nothing written.
        before = workspace.snapshot()
        line = error_line(batch(workspace, scenes, "--out", "plain", "--scheduler", address))
        assert f"cannot reach the Dask scheduler {address}" in line
        assert "distributed.comm.tls" in line
        assert workspace.snapshot() == before and not (workspace.root / "plain").exists()
        # With Dask's security settings (as a real cluster's users set them): it runs.
        workspace.env |= tls_env
        result = batch(workspace, scenes, "--out", "masks", "--scheduler", address)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["counts"] == {"done": 3}
    assert sorted(p.name for p in (workspace.root / "masks").glob("*.tif")) == [
        "adwp-top.tif", "adwu-top.tif", "adxp-bottom.tif",
    ]  # fmt: skip


# -- 6. network reads that never answer --------------------------------------------------------
@pytest.mark.slow
def test_an_s3_output_that_never_answers_stops_at_once_with_one_line(
    workspace, scenes, silent_server
):
    workspace.env |= FAST | {"MINIO_ACCESS_KEY": "key", "MINIO_SECRET_KEY": "secret"}
    before = workspace.snapshot()
    started = time.monotonic()
    result = batch(workspace, scenes, "--out", "s3://bucket/masks", "--endpoint-url",
                   silent_server, timeout=120)  # fmt: skip
    line = error_line(result)
    assert "the output s3://bucket/masks" in line and "did not answer within 1 s" in line
    # 3 attempts of (1 s connect + 1 s read) and the back-off: the documented bound.
    assert time.monotonic() - started < 3 * (1 + 1) + 2 + STARTUP
    no_dask_noise(result.stderr)
    assert workspace.snapshot() == before


@pytest.mark.slow
def test_an_s3_input_that_never_answers_is_one_line_and_creates_nothing(workspace, silent_server):
    workspace.env |= FAST | {"MINIO_ACCESS_KEY": "key", "MINIO_SECRET_KEY": "secret"}
    before = workspace.snapshot()
    started = time.monotonic()
    args = ["s3://bucket/scenes/", "--out", "masks", "--endpoint-url", silent_server]
    line = error_line(batch(workspace, *args, timeout=120))
    assert "did not answer within 1 s" in line
    assert time.monotonic() - started < 3 * (1 + 1) + 2 + STARTUP
    assert workspace.snapshot() == before and not (workspace.root / "masks").exists()


def _item(item_id: str, assets: dict[str, dict[str, object]]) -> dict[str, object]:
    return {"type": "Feature", "stac_version": "1.0.0", "id": item_id, "assets": assets}


@pytest.mark.slow
@pytest.mark.parametrize("form", ["band assets", "image asset"])
def test_assets_on_a_server_that_never_answers_fail_their_scene_alone(
    workspace, real_data, silent_server, form
):
    chip = real_data / "oncloudn_l2a" / "adwp"
    bands = ("B02", "B03", "B04", "B08")
    local = _item("local", {b: {"href": str(chip / f"{b}.tif")} for b in bands})
    if form == "band assets":
        remote = _item("remote", {b: {"href": f"{silent_server}/{b}.tif"} for b in bands})
    else:
        remote = _item("remote", {"image": {"href": f"{silent_server}/scene.tif?sig=secret",
                                            "roles": ["data"]}})  # fmt: skip
    items = {"type": "FeatureCollection", "features": [remote, local]}
    (workspace.root / "items.json").write_text(json.dumps(items))
    workspace.env |= FAST
    started = time.monotonic()
    result = batch(workspace, "items.json", "--out", "masks", timeout=180)
    seconds = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    counts = json.loads(result.stdout)["counts"]
    assert counts == {"done": 1, "failed": 1}
    failed = [ln for ln in result.stderr.splitlines() if ln.startswith("failed: ")]
    assert len(failed) == 1 and failed[0].startswith("failed: remote: ")
    assert "127.0.0.1" in failed[0] and "secret" not in result.stderr
    no_dask_noise(result.stderr)
    # One request of at most 1 s + 1 s per try (3 tries for a download), not minutes.
    assert seconds < 3 * (1 + 1) + 2 + STARTUP
    record = json.loads((workspace.root / "masks" / "remote.json").read_text())
    assert record["status"] == "failed" and "\n" not in record["error"]
    assert not (workspace.root / "masks" / "remote.tif").exists()
    assert (workspace.root / "masks" / "local.tif").is_file()
    assert not [p for p in (workspace.root / "masks").iterdir() if p.name.startswith(".")]


# -- 8. the output folder holds only the batch's own files -------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["manifest", "MANIFEST", "Manifest"])
def test_a_scene_named_like_the_manifest_is_refused(workspace, scenes, name):
    shutil.copy2(scenes / "adwp-top.tif", scenes / f"{name}.tif")
    before = workspace.snapshot()
    line = error_line(batch(workspace, scenes, "--out", "masks"))
    assert f"a scene named '{name}' would overwrite the batch's manifest.json" in line
    assert workspace.snapshot() == before and not (workspace.root / "masks").exists()


@pytest.mark.slow
@pytest.mark.parametrize("item_id", ["manifest", "../escaped", ".hidden", "a/b", ""])
def test_an_item_id_that_is_not_a_plain_scene_name_is_refused(workspace, real_data, item_id):
    chip = real_data / "oncloudn_l2a" / "adwp"
    item = _item(item_id, {"image": {"href": str(chip / "B02.tif"), "roles": ["data"]}})
    (workspace.root / "item.json").write_text(json.dumps(item))
    before = workspace.snapshot()
    line = error_line(batch(workspace, "item.json", "--out", "masks"))
    assert repr(item_id) in line
    assert workspace.snapshot() == before
    assert not (workspace.root / "masks").exists() and not (workspace.root / "escaped.tif").exists()


@pytest.mark.slow
@pytest.mark.parametrize("foreign", ["adwu-top.tif", "adwu-top.json", "manifest.json"])
def test_files_the_batch_did_not_write_are_kept_unless_overwrite(workspace, scenes, foreign):
    masks = workspace.root / "masks"
    masks.mkdir()
    (masks / foreign).write_bytes(b"the user's own file, not a batch's")
    before = workspace.snapshot()
    line = error_line(batch(workspace, scenes, "--out", "masks"))
    assert f"masks/{foreign} exists and was not written by a cloudseg batch" in line
    assert "--overwrite" in line
    assert workspace.snapshot() == before
    result = batch(workspace, scenes, "--out", "masks", "--overwrite")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["counts"] == {"done": 3}
    with rasterio.open(masks / "adwu-top.tif") as ds:
        assert ds.read(1).shape == (256, 512)


@pytest.mark.slow
def test_a_rerun_redoes_a_truncated_mask_and_a_changed_input_and_skips_the_rest(workspace, scenes):
    masks = workspace.root / "masks"
    first = batch(workspace, scenes, "--out", "masks")
    assert first.returncode == 0, first.stderr
    with rasterio.open(masks / "adwu-top.tif") as ds:
        adwu_mask = ds.read(1)
    untouched = (masks / "adwp-top.tif").read_bytes()
    # A truncated mask, and an input replaced by another scene of the same size whose
    # modification time is kept (copy2): neither may pass for done.
    data = (masks / "adwu-top.tif").read_bytes()
    (masks / "adwu-top.tif").write_bytes(data[: len(data) // 2])
    stamp = (scenes / "adxp-bottom.tif").stat()
    with rasterio.open(scenes / "adxp-bottom.tif") as src:
        profile, pixels, names = src.profile, src.read(), src.descriptions
    with rasterio.open(workspace.root / "other.tif", "w", **profile) as dst:
        dst.write(pixels[:, ::-1, ::-1])  # another scene: the same one turned around
        dst.descriptions = names
    shutil.copyfile(workspace.root / "other.tif", scenes / "adxp-bottom.tif")
    os.utime(scenes / "adxp-bottom.tif", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert (scenes / "adxp-bottom.tif").stat().st_size == stamp.st_size

    again = batch(workspace, scenes, "--out", "masks")
    assert again.returncode == 0, again.stderr
    by_scene = {r["scene"]: r for r in json.loads(again.stdout)["records"]}
    assert by_scene["adwp-top"]["status"] == "skipped"
    assert by_scene["adwu-top"]["status"] == "done"
    assert "truncated or changed" in by_scene["adwu-top"]["redone"]
    assert by_scene["adxp-bottom"]["status"] == "done"
    assert "input changed" in by_scene["adxp-bottom"]["redone"]
    assert (masks / "adwp-top.tif").read_bytes() == untouched
    with rasterio.open(masks / "adwu-top.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), adwu_mask)  # whole again
    # The changed input's mask is the new scene's: that of a single run on it.
    single = workspace.cli("segment", scenes / "adxp-bottom.tif", "single.tif",
                           "--product-level", "L2A", "-q")  # fmt: skip
    assert single.returncode == 0, single.stderr
    with (
        rasterio.open(workspace.root / "single.tif") as a,
        rasterio.open(masks / "adxp-bottom.tif") as b,
    ):
        np.testing.assert_array_equal(a.read(1), b.read(1))
    third = json.loads(batch(workspace, scenes, "--out", "masks").stdout)
    assert third["counts"] == {"skipped": 3}


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _wait_gone(group: int, seconds: float = 30) -> None:
    """Wait until no process of the process group ``group`` runs any more."""
    import psutil

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = []
        for process in psutil.process_iter(["status"]):
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(process.pid) == group and process.info["status"] != "zombie":
                    left.append(process.pid)
        if not left:
            return
        time.sleep(0.1)


@pytest.mark.slow
def test_a_killed_batch_leaves_nothing_that_the_next_run_keeps(workspace, scenes, tmp_path):
    masks = tmp_path / "masks"
    process = subprocess.Popen(
        ["cloudseg", "segment-batch", str(scenes), "--out", str(masks),
         "--product-level", "L2A", "--workers", "1", "-q"],
        env=workspace.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if masks.is_dir() and any(n.startswith(".cloudseg-batch-") for n in _hidden(masks)):
            break
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the batch, its nannies and workers
    process.wait()
    _wait_gone(process.pid)
    left = _hidden(masks)
    assert any(n.startswith(".cloudseg-batch-") for n in left), left
    assert ".manifest.json.cloudseg-lock" in left
    # A leftover in the old form: a staging folder without a process id, holding a
    # lock and a part file of a dead process.
    dead = subprocess.Popen(["true"])
    dead.wait()
    old = masks / ".cloudseg-batch-k2j4x9"
    old.mkdir()
    (old / ".x.tif.cloudseg-lock").write_text(f"{dead.pid} {socket.gethostname()}\n")
    (old / f".x.tif.{dead.pid}-0123abcd.part").write_bytes(b"half a mask")
    (masks / f".adwp-top.json.{dead.pid}-89abcdef.part").write_bytes(b"{")

    result = workspace.cli("segment-batch", scenes, "--out", masks, "--product-level",
                           "L2A", "--workers", "1", "--json", "-q")  # fmt: skip
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)["counts"]
    assert counts.get("done", 0) + counts.get("skipped", 0) == 3 and counts.get("done", 0) >= 1
    assert _hidden(masks) == []
    assert sorted(p.name for p in masks.glob("*.tif")) == sorted(p.name for p in scenes.iterdir())
    # Every scene's STAC Item is written and the collection lists each one, whatever the
    # killed run had written of them.
    import pystac

    linked = pystac.Collection.from_file(str(masks / "collection.json")).get_items()
    assert sorted(i.id for i in linked) == sorted(p.stem for p in scenes.iterdir())


@pytest.mark.slow
def test_a_second_batch_on_the_same_folder_is_refused_while_the_first_runs(
    workspace, scenes, tmp_path, silent_server
):
    masks = tmp_path / "masks"
    # The first batch is kept busy by an Item whose server answers nothing for 10 s.
    slow = _item("slow", {"image": {"href": f"{silent_server}/s.tif", "roles": ["data"]}})
    (tmp_path / "slow.json").write_text(json.dumps(slow))
    first = subprocess.Popen(
        ["cloudseg", "segment-batch", str(tmp_path / "slow.json"), str(scenes), "--out",
         str(masks), "--product-level", "L2A", "--workers", "1", "--json", "-q"],
        env=workspace.env | {"CLOUDSEG_READ_TIMEOUT": "10", "CLOUDSEG_NETWORK_RETRIES": "0"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lock = masks / ".manifest.json.cloudseg-lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.02)
    assert lock.exists()
    second = workspace.cli("segment-batch", scenes, "--out", masks, "--product-level",
                           "L2A", "-q")  # fmt: skip
    line = error_line(second)
    assert f"another cloudseg run (process {first.pid}" in line
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 1, stderr  # the silent server's scene
    assert json.loads(stdout)["counts"] == {"done": 3, "failed": 1}
    assert not lock.exists()
    manifest = json.loads((masks / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["records"]) == 4


@pytest.mark.slow
def test_a_batch_leaves_the_input_folder_as_it_was(workspace, scenes):
    before = snapshot(scenes)
    result = batch(workspace, scenes, "--out", "masks")
    assert result.returncode == 0, result.stderr
    assert snapshot(scenes) == before


@pytest.mark.slow
@pytest.mark.parametrize(("listing", "item_id"), [("items.json", "items"), ("manifest.json", "x")])
def test_a_stac_file_in_the_output_folder_is_never_replaced(workspace, listing, item_id):
    # Even with --overwrite: the Item's record, or the manifest, would replace the input.
    masks = workspace.root / "masks"
    masks.mkdir()
    item = _item(item_id, {"image": {"href": str(workspace.scene), "roles": ["data"]}})
    (masks / listing).write_text(json.dumps(item))
    before = workspace.snapshot()
    line = error_line(batch(workspace, f"masks/{listing}", "--out", "masks", "--overwrite"))
    assert f"would replace its input masks/{listing}" in line
    assert workspace.snapshot() == before


@pytest.mark.slow
def test_an_s3_output_that_stops_answering_mid_run_stops_the_batch_with_one_line(
    workspace, batch_scenes, tmp_path
):

    import boto3

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    moto = start_moto(port, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    silent = socket.socket()
    try:
        keys = {"aws_access_key_id": "key", "aws_secret_access_key": "secret"}
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys)
        s3.create_bucket(Bucket="masks")
        workspace.env |= FAST | {"MINIO_ACCESS_KEY": "key", "MINIO_SECRET_KEY": "secret"}
        batch_run = subprocess.Popen(
            ["cloudseg", "segment-batch", str(batch_scenes), "--out", "s3://masks/run",
             "--endpoint-url", endpoint, "--product-level", "L2A", "--workers", "1", "-q"],
            env=workspace.env, cwd=workspace.root, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and batch_run.poll() is None:
            found = s3.list_objects_v2(Bucket="masks", Prefix="run/").get("Contents", [])
            if any(o["Key"].endswith(".json") for o in found):
                break
            time.sleep(0.1)
        # The store goes silent: it still accepts connections, and never answers.
        moto.kill()
        moto.wait()
        silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        silent.bind(("127.0.0.1", port))
        silent.listen(64)
        stopped = time.monotonic()
        _, stderr = batch_run.communicate(timeout=180)
        seconds = time.monotonic() - stopped
    finally:
        moto.kill()
        silent.close()
    assert batch_run.returncode == 1
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 2 and lines[0].startswith("Dask dashboard: "), stderr
    assert lines[1].startswith("cloudseg: error: ") and "s3://masks/run" in lines[1]
    assert "did not answer within 1 s" in lines[1]
    no_dask_noise(stderr)
    # The scene on its way, then one request's bound (3 x (1 s + 1 s) and back-off) or two.
    assert seconds < 2 * (3 * (1 + 1) + 2) + STARTUP


@pytest.mark.slow
@pytest.mark.parametrize(
    ("variable", "value"),
    [("CLOUDSEG_READ_TIMEOUT", "soon"), ("CLOUDSEG_CONNECT_TIMEOUT", "0"),
     ("CLOUDSEG_NETWORK_RETRIES", "-1")],
)  # fmt: skip
def test_a_bad_network_limit_is_one_line(workspace, scenes, silent_server, variable, value):
    workspace.env |= {variable: value, "MINIO_ACCESS_KEY": "key", "MINIO_SECRET_KEY": "secret"}
    before = workspace.snapshot()
    args = [scenes, "--out", "s3://bucket/masks", "--endpoint-url", silent_server]
    line = error_line(batch(workspace, *args, timeout=60))
    assert variable in line and value in line
    assert workspace.snapshot() == before
