"""OGC API - Processes of the real ``cloudseg serve``, called over HTTP as a script would."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import requests

from ..conftest import tiled_scene
from .conftest import cli_segment, same_mask, start_server

pytestmark = [pytest.mark.real_data, pytest.mark.slow]

TIMEOUT = 300


def _execute(server, inputs: dict, prefer: str | None = None, process: str = "segment"):
    headers = server.headers() | ({"Prefer": prefer} if prefer else {})
    return requests.post(
        f"{server.url}/ogc/processes/{process}/execution",
        json={"inputs": inputs},
        headers=headers,
        timeout=TIMEOUT,
    )


def _fetch(server, href: str, target: Path) -> Path:
    response = requests.get(href, headers=server.headers(), timeout=60)
    assert response.status_code == 200, response.text
    target.write_bytes(response.content)
    return target


def _poll(server, job_id: str, until=("successful", "failed", "dismissed"), seen=None) -> dict:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        status = requests.get(f"{server.url}/ogc/jobs/{job_id}?f=json", timeout=30).json()
        if seen is not None:
            seen.append((status["status"], status["progress"], status["message"]))
        if status["status"] in until:
            return status
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not reach {until}")


def test_landing_conformance_and_processes_describe_segment_and_explain(server):
    landing = requests.get(f"{server.url}/ogc/?f=json", timeout=30).json()
    assert any(link["rel"].endswith("conformance") for link in landing["links"])
    conformance = requests.get(f"{server.url}/ogc/conformance?f=json", timeout=30).json()
    assert any("ogcapi-processes-1/1.0/conf/core" in c for c in conformance["conformsTo"])
    listed = requests.get(f"{server.url}/ogc/processes?f=json", timeout=30).json()
    assert {p["id"] for p in listed["processes"]} >= {"segment", "explain"}
    segment = requests.get(f"{server.url}/ogc/processes/segment?f=json", timeout=30).json()
    assert "async-execute" in segment["jobControlOptions"]
    inputs = segment["inputs"]
    assert inputs["input"]["minOccurs"] == 1
    # The CLI's own choices, from its one table of run options.
    assert inputs["resolution"]["schema"]["enum"] == ["native", "preview"]
    assert inputs["product_level"]["schema"]["enum"] == ["L1C", "L2A"]
    assert inputs["tta"]["schema"]["type"] == "boolean"
    assert "max_memory_mib" not in inputs  # the operator's setting, not a request's
    assert inputs["shadow_geometry"]["schema"]["type"] == "boolean"
    explain = requests.get(f"{server.url}/ogc/processes/explain?f=json", timeout=30).json()
    assert "shadow_geometry" not in explain["inputs"]  # a map of the network itself
    assert {"mask", "probabilities", "valid", "polygons", "statistics"} <= set(segment["outputs"])


def test_sync_execution_returns_the_clis_mask(server, serve_files, venv_env, tmp_path):
    response = _execute(server, {"input": str(serve_files / "chip.tif"), "resolution": "preview"})
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["mask"]["type"].startswith("image/tiff")
    served = _fetch(server, document["mask"]["href"], tmp_path / "served.tif")
    cli = cli_segment(venv_env, serve_files / "chip.tif", tmp_path / "cli.tif",
                      "--resolution", "preview")  # fmt: skip
    same_mask(served, cli)
    # The statistics are the run's: the served mask's own pixel shares.
    with rasterio.open(served) as ds:
        mask = ds.read(1)
    valid = mask != 255
    cloud = 100 * np.count_nonzero(mask[valid] == 1) / np.count_nonzero(valid)
    assert document["summary"]["class_percent"]["cloud"] == pytest.approx(cloud, abs=0.01)
    assert "IoU" in document["summary"]["model_accuracy"]


def test_shadow_geometry_runs_as_the_cli_runs_it(server, serve_files, venv_env, tmp_path):
    inputs = {"input": str(serve_files / "chip.tif"), "shadow_geometry": True}
    response = _execute(server, inputs)
    assert response.status_code == 200, response.text
    document = response.json()
    served = _fetch(server, document["mask"]["href"], tmp_path / "served.tif")
    cli = cli_segment(venv_env, serve_files / "chip.tif", tmp_path / "cli.tif",
                      "--shadow-geometry")  # fmt: skip
    same_mask(served, cli)
    with rasterio.open(served) as ds:
        tag = json.loads(ds.tags()["CLOUDSEG_SHADOW_GEOMETRY"])
    assert document["summary"]["shadow_geometry"] == tag


def test_async_execution_reports_progress_and_links_results(server, serve_files, tmp_path):
    response = _execute(server, {"input": str(serve_files / "chip.tif"), "tta": True},
                        prefer="respond-async")  # fmt: skip
    assert response.status_code == 201, response.text
    assert response.headers["Preference-Applied"] == "respond-async"
    job_url = response.headers["Location"]
    job_id = job_url.rstrip("/").rsplit("/", 1)[1]
    assert len(job_id) == 32  # 128 random bits, not a time-based id
    seen: list = []
    status = _poll(server, job_id, seen=seen)
    assert status["status"] == "successful", status
    assert status["progress"] == 100
    results = requests.get(f"{server.url}/ogc/jobs/{job_id}/results?f=json", timeout=30).json()
    valid = _fetch(server, results["valid"]["href"], tmp_path / "valid.tif")
    with rasterio.open(valid) as ds:
        assert set(np.unique(ds.read(1))) <= {0, 1, 255}
    geojson = requests.get(results["polygons_geojson"]["href"], timeout=30).json()
    assert geojson["type"] == "FeatureCollection"
    preview = requests.get(results["preview_mask"]["href"], timeout=30)
    assert preview.headers["content-type"] == "image/png"
    assert preview.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_dismissal_cancels_running_and_queued_jobs(server, serve_files, tmp_path):
    mosaic = tiled_scene(serve_files / "chip.tif", serve_files / "mosaic.tif")
    running = _execute(server, {"input": str(mosaic), "tta": True}, prefer="respond-async")
    queued = _execute(server, {"input": str(mosaic)}, prefer="respond-async")
    first = running.headers["Location"].rsplit("/", 1)[1]
    second = queued.headers["Location"].rsplit("/", 1)[1]
    _poll(server, first, until=("running",))
    waiting = requests.get(f"{server.url}/ogc/jobs/{second}?f=json", timeout=30).json()
    assert waiting["status"] == "accepted" and waiting["message"] == "queued: next to run"
    for job_id in (second, first):
        gone = requests.delete(f"{server.url}/ogc/jobs/{job_id}?f=json", timeout=TIMEOUT)
        assert gone.status_code == 200, gone.text
        assert gone.json()["status"] == "dismissed"
        assert requests.get(f"{server.url}/ogc/jobs/{job_id}?f=json", timeout=30).status_code == 404
        assert requests.get(f"{server.url}/files/{job_id}/mask", timeout=30).status_code == 404


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        ({"input": "/etc/passwd"}, "outside the folders this server reads"),
        ({"input": "../../etc/passwd"}, "outside the folders this server reads"),
        ({"input": "chip.tif", "resolution": "fine"}, "must be one of native, preview"),
        ({"input": "chip.tif", "colour": "red"}, "unknown input 'colour'"),
        ({"input": "chip.tif", "model": "/tmp/evil.pt"}, "no model"),
        ({"input": "file:///etc/passwd"}, "are not read"),
        ({}, "input 'input' is required"),
    ],
)
def test_bad_input_is_refused_in_one_line(server, inputs, words):
    response = _execute(server, inputs)
    assert response.status_code == 400, response.text
    description = response.json()["description"]
    assert words in description
    assert "\n" not in description and "Traceback" not in description


def test_a_symlink_out_of_the_root_is_refused(server, serve_files):
    link = serve_files / "escape"
    if not link.exists():
        link.symlink_to("/etc")
    response = _execute(server, {"input": str(link / "passwd")})
    assert response.status_code == 400
    assert "outside the folders" in response.json()["description"]


def test_a_scene_that_cannot_be_read_fails_with_the_engines_line(server, serve_files):
    (serve_files / "notes.tif").write_text("not a raster")
    response = _execute(server, {"input": str(serve_files / "notes.tif")})
    assert response.status_code == 400
    assert "cannot read" in response.json()["description"]


def test_jobs_are_not_listed_and_guessed_ids_find_nothing(server):
    assert requests.get(f"{server.url}/ogc/jobs?f=json", timeout=30).json()["jobs"] == []
    assert requests.get(f"{server.url}/ogc/jobs/{'0' * 32}?f=json", timeout=30).status_code == 404
    assert requests.get(f"{server.url}/files/{'0' * 32}/mask", timeout=30).status_code == 404


def test_a_foreign_host_header_is_refused(server):
    # A page on another site that rebinds its DNS name to 127.0.0.1 sends its own Host.
    response = requests.get(f"{server.url}/ogc/processes", headers={"Host": "evil.example"},
                            timeout=30)  # fmt: skip
    assert response.status_code == 403


def test_a_token_protected_server_refuses_requests_without_it(venv_env, tmp_path):
    env = dict(venv_env, CLOUDSEG_SERVE_TOKEN="s3cret-token")
    server = start_server(env, tmp_path / "work", token="s3cret-token")
    try:
        plain = requests.get(f"{server.url}/ogc/processes?f=json", timeout=30)
        assert plain.status_code == 401
        assert "token" in plain.json()["description"]
        wrong = requests.get(f"{server.url}/ogc/processes?f=json",
                             headers={"Authorization": "Bearer nope"}, timeout=30)  # fmt: skip
        assert wrong.status_code == 401
        assert requests.get(f"{server.url}/", timeout=30).status_code == 401
        good = requests.get(f"{server.url}/ogc/processes?f=json", headers=server.headers(),
                            timeout=30)  # fmt: skip
        assert good.status_code == 200
        page = requests.get(f"{server.url}/?token=s3cret-token", timeout=30)
        assert page.status_code == 200
        assert "cloudseg_token" in page.headers.get("set-cookie", "")
    finally:
        server.stop()


def test_listening_beyond_loopback_makes_and_needs_a_token(venv_env, tmp_path):
    env = dict(venv_env)
    env.pop("CLOUDSEG_SERVE_TOKEN", None)
    server = start_server(env, tmp_path / "work", "--host", "0.0.0.0")
    try:
        said = "\n".join(server.lines)
        assert "every request needs token" in said
        token = said.split("every request needs token ")[1].split()[0]
        port = server.url.rsplit(":", 1)[1]
        url = f"http://127.0.0.1:{port}"
        assert requests.get(f"{url}/ogc/processes?f=json", timeout=30).status_code == 401
        ok = requests.get(f"{url}/ogc/processes?f=json",
                          headers={"Authorization": f"Bearer {token}"}, timeout=30)  # fmt: skip
        assert ok.status_code == 200
    finally:
        server.stop()


def test_the_jobs_stac_item_reads_back_and_its_assets_resolve(server, serve_files, tmp_path):
    import pystac

    response = _execute(server, {"input": str(serve_files / "chip.tif")})
    document = response.json()
    item_url = document["stac_item"]["href"]
    item = pystac.Item.from_dict(requests.get(item_url, timeout=30).json())
    assert item.properties["eo:cloud_cover"] == pytest.approx(
        document["summary"]["class_percent"]["cloud"], abs=0.01
    )
    mask_href = requests.compat.urljoin(item_url, item.assets["mask"].href)
    served = requests.get(mask_href, timeout=30)
    assert served.status_code == 200
    assert served.content == requests.get(document["mask"]["href"], timeout=30).content


def test_results_and_uploads_go_after_the_keep_time(venv_env, serve_files, tmp_path):
    work = tmp_path / "work"
    server = start_server(venv_env, work, "--root", str(serve_files), "--keep", "0.002")
    try:
        document = _execute(server, {"input": str(serve_files / "chip.tif")}).json()
        mask = document["mask"]["href"]
        job_id = mask.split("/files/")[1].split("/")[0]
        assert requests.get(mask, timeout=30).status_code == 200
        assert (work / "jobs" / job_id).is_dir()
        deadline = time.monotonic() + 60  # kept 7.2 s, swept every 1.8 s
        while (work / "jobs" / job_id).exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not (work / "jobs" / job_id).exists()
        assert requests.get(mask, timeout=30).status_code == 404
    finally:
        server.stop()


def test_an_upload_over_the_limit_is_refused(venv_env, serve_files, tmp_path):
    server = start_server(venv_env, tmp_path / "work", "--max-upload", "0.5")
    try:
        with (serve_files / "chip.tif").open("rb") as chip:  # 2 MiB
            response = requests.post(f"{server.url}/gradio_api/upload",
                                     files={"files": chip}, timeout=60)  # fmt: skip
        assert response.status_code == 413
        assert "MiB" in response.json()["description"]
        assert not any((tmp_path / "work").rglob("chip.tif"))
    finally:
        server.stop()


def test_explain_returns_class_activation_maps(server, serve_files, tmp_path):
    response = _execute(server, {"input": str(serve_files / "chip.tif"), "classes": ["cloud"]},
                        process="explain")  # fmt: skip
    assert response.status_code == 200, response.text
    document = response.json()
    cam = _fetch(server, document["cam"]["href"], tmp_path / "cam.tif")
    with rasterio.open(cam) as ds, rasterio.open(serve_files / "chip.tif") as scene:
        maps = ds.read(1)
        assert (ds.width, ds.height) == (scene.width, scene.height)
    assert np.nanmax(maps) == pytest.approx(1.0) and np.nanmin(maps) >= 0
    assert document["summary"]["method"] == "gradcam"


def test_a_scene_over_http_is_fetched_and_gives_the_clis_mask(server, serve_files, venv_env,
                                                              tmp_path):  # fmt: skip
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(serve_files))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/chip.tif"
        response = _execute(server, {"input": url})
        assert response.status_code == 200, response.text
        served = _fetch(server, response.json()["mask"]["href"], tmp_path / "served.tif")
        missing = _execute(server, {"input": url.replace("chip.tif", "nothing.tif")})
        assert missing.status_code == 400
        assert "HTTP 404" in missing.json()["description"]
    finally:
        httpd.shutdown()
    same_mask(served, cli_segment(venv_env, serve_files / "chip.tif", tmp_path / "cli.tif"))


def test_a_scene_on_s3_is_fetched_and_gives_the_clis_mask(s3_server, serve_files, venv_env,
                                                          tmp_path):  # fmt: skip
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server["endpoint"], region_name="us-east-1",
                          aws_access_key_id=s3_server["access_key"],
                          aws_secret_access_key=s3_server["secret_key"])  # fmt: skip
    client.create_bucket(Bucket="scenes")
    client.upload_file(str(serve_files / "chip.tif"), "scenes", "s2/chip.tif")
    env = dict(venv_env, MINIO_ENDPOINT=s3_server["endpoint"],
               MINIO_ACCESS_KEY=s3_server["access_key"],
               MINIO_SECRET_KEY=s3_server["secret_key"])  # fmt: skip
    server = start_server(env, tmp_path / "work")
    try:
        response = _execute(server, {"input": "s3://scenes/s2/chip.tif"})
        assert response.status_code == 200, response.text
        served = _fetch(server, response.json()["mask"]["href"], tmp_path / "served.tif")
    finally:
        server.stop()
    same_mask(served, cli_segment(venv_env, serve_files / "chip.tif", tmp_path / "cli.tif"))


def test_a_stac_item_input_is_linked_from_the_masks_item(server, serve_files):
    import json

    import pystac

    source = serve_files / "chip-item.json"
    source.write_text(json.dumps({
        "type": "Feature", "stac_version": "1.0.0", "id": "chip", "geometry": None,
        "properties": {"datetime": "2020-04-29T08:20:47Z"}, "links": [],
        "assets": {"image": {"href": "./chip.tif", "type": "image/tiff", "roles": ["data"]}},
    }))  # fmt: skip
    response = _execute(server, {"input": str(source)})
    assert response.status_code == 200, response.text
    item = pystac.Item.from_dict(
        requests.get(response.json()["stac_item"]["href"], timeout=30).json()
    )
    assert [link.get_href() for link in item.links if link.rel == "derived_from"] == [str(source)]
    assert item.datetime.isoformat().startswith("2020-04-29T08:20:47")
