"""The web page of the real ``cloudseg serve`` in a real headless Chromium, as a user uses it."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ..browser import chromium, upload, wait_for
from ..conftest import tiled_scene
from .conftest import cli_segment, same_mask

pytestmark = [pytest.mark.real_data, pytest.mark.slow]

#: Where the README's picture of the page goes when asked (scripts/screenshot_serve.py).
SCREENSHOT_ENV = "CLOUDSEG_SERVE_SCREENSHOT"


def _wait(browser, condition, timeout: float = 240, what: str = "") -> None:
    try:
        wait_for(lambda: condition(browser), timeout, what, every=0.25)
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}; status: {browser.find_element('id', 'status').text}"
        ) from None


def _upload_and_run(browser, server, scene: Path) -> None:
    browser.get(server.url + "/")
    upload(browser, "scene-upload", scene)
    browser.find_element("id", "run").click()


def _name_and_run(browser, server, source: str) -> None:
    """Open the page, name a scene in its text field and press Segment."""
    browser.get(server.url + "/")
    fields = "#scene-source textarea, #scene-source input"
    _wait(browser, lambda b: b.find_elements("css selector", fields), 60, "the page")
    browser.find_elements("css selector", fields)[0].send_keys(source)
    browser.find_element("id", "run").click()


def _severe(browser) -> list[dict]:
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_upload_shows_the_mask_and_downloads_the_clis_mask(server, serve_files, venv_env,
                                                           tmp_path):  # fmt: skip
    browser = chromium(1400, 1100)
    try:
        _upload_and_run(browser, server, serve_files / "chip.tif")
        _wait(browser, lambda b: "Done" in b.find_element("id", "status").text,
              what="the result")  # fmt: skip
        image = browser.find_element("css selector", "#mask-view img")
        assert image.get_attribute("naturalWidth") not in (None, "0")
        summary = browser.find_element("id", "summary").text
        assert "cloud" in summary and "usable" in summary and "IoU" in summary
        links = {
            a.get_attribute("href").rsplit("/", 1)[-1]: a.get_attribute("href")
            for a in browser.find_elements("css selector", "#downloads a")
            if a.get_attribute("href")
        }
        assert {"mask.tif", "probabilities.tif", "valid.tif", "polygons.gpkg",
                "polygons.geojson"} <= set(links), links  # fmt: skip
        if os.environ.get(SCREENSHOT_ENV):
            browser.save_screenshot(os.environ[SCREENSHOT_ENV])
        assert _severe(browser) == []
    finally:
        browser.quit()
    served = tmp_path / "served.tif"
    served.write_bytes(requests.get(links["mask.tif"], timeout=60).content)
    cli = cli_segment(venv_env, serve_files / "chip.tif", tmp_path / "cli.tif")
    same_mask(served, cli)


def test_cancel_stops_the_run_and_keeps_nothing(server, serve_files):

    mosaic = tiled_scene(serve_files / "chip.tif", serve_files / "mosaic.tif")
    browser = chromium(1400, 1100)
    try:
        _upload_and_run(browser, server, mosaic)
        _wait(browser, lambda b: "%" in b.find_element("id", "status").text, 120, "progress")
        browser.find_element("id", "cancel").click()
        _wait(browser, lambda b: "Cancelled" in b.find_element("id", "status").text, 120,
              "the cancel")  # fmt: skip
        assert not browser.find_elements("css selector", "#downloads a")
        assert _severe(browser) == []
    finally:
        browser.quit()


def test_a_path_outside_the_roots_is_refused_on_the_page(server):
    browser = chromium(1400, 1100)
    try:
        _name_and_run(browser, server, "/etc/passwd")
        _wait(browser, lambda b: "outside the folders" in b.find_element("tag name", "body").text,
              60, "the error")  # fmt: skip
        assert not browser.find_elements("css selector", "#downloads a")
    finally:
        browser.quit()


def test_the_page_and_the_api_share_one_queue(server, serve_files):
    from .test_ogc import _execute, _poll

    mosaic = tiled_scene(serve_files / "chip.tif", serve_files / "mosaic.tif")
    running = _execute(server, {"input": str(mosaic), "tta": True}, prefer="respond-async")
    job_id = running.headers["Location"].rsplit("/", 1)[1]
    _poll(server, job_id, until=("running",))
    browser = chromium(1400, 1100)
    try:
        _upload_and_run(browser, server, serve_files / "chip.tif")
        _wait(browser, lambda b: "waiting" in b.find_element("id", "status").text, 60,
              "the place in the queue")  # fmt: skip
        assert "next to run" in browser.find_element("id", "status").text
        requests.delete(f"{server.url}/ogc/jobs/{job_id}", timeout=120)
        _wait(browser, lambda b: "Done" in b.find_element("id", "status").text, what="the run")
        assert _severe(browser) == []
    finally:
        browser.quit()


# -- what the page serves, and how it says how a run went (issue 39) ---------------------------
def _status_text(browser) -> str:
    return browser.find_element("id", "status").text


def _links(browser) -> dict[str, str]:
    """The page's downloads: file name -> link."""
    return {
        a.get_attribute("href").rsplit("/", 1)[-1]: a.get_attribute("href")
        for a in browser.find_elements("css selector", "#downloads a")
        if a.get_attribute("href")
    }


def _shown(browser, view: str) -> bool:
    """Whether the image of the page's ``#view`` has loaded (a broken image has no width)."""
    images = browser.find_elements("css selector", f"#{view} img")
    return bool(images) and images[0].get_attribute("naturalWidth") not in (None, "0")


def _tick_explain(browser) -> None:
    """Tick the page's "also explain the mask (Grad-CAM ...)"."""
    label = "//label[contains(., 'also explain the mask')]//input[@type='checkbox']"
    browser.find_element("xpath", label).click()


def _gradio_file(server, path: Path | str) -> requests.Response:
    """Ask Gradio's file route for ``path``, as anyone who can name it may."""
    return requests.get(f"{server.url}/gradio_api/file={path}", timeout=60)


@contextlib.contextmanager
def _http_server(folder: Path) -> Iterator[str]:
    """A plain HTTP server of ``folder`` on loopback (a scene given by URL); yields its URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_gradio_serves_no_file_of_a_jobs_folder(server, serve_files):
    """Item 11: the input a job downloaded lies in its folder, not in its results."""
    from .test_ogc import _execute

    with _http_server(serve_files) as base:
        response = _execute(server, {"input": f"{base}/chip.tif"})
    assert response.status_code == 200, response.text
    hrefs = [v["href"] for v in response.json().values() if isinstance(v, dict) and "href" in v]
    published = set()
    for href in hrefs:
        answer = requests.get(href, timeout=60)
        assert answer.status_code == 200, href
        published.add(re.search(r'filename="?([^";]+)', answer.headers["content-disposition"])[1])
    job_id = hrefs[0].split("/")[-2]
    folder = server.work / "jobs" / job_id
    others = [p for p in folder.rglob("*") if p.is_file() and p.name not in published]
    assert any(p.name == "chip.tif" for p in others), others  # the input, downloaded
    for path in others:
        assert _gradio_file(server, path).status_code in (403, 404), path
        by_name = requests.get(f"{server.url}/files/{job_id}/{path.name}", timeout=60)
        assert by_name.status_code == 404, path


def test_gradio_serves_no_upload_that_a_jobs_results_name(server, serve_files):
    """Item 11: a page job's Item names its upload; whoever has the Item cannot fetch it."""
    browser = chromium(1400, 1100)
    try:
        _upload_and_run(browser, server, serve_files / "chip.tif")
        _wait(browser, lambda b: "Done" in _status_text(b), what="the result")
        _wait(browser, lambda b: _shown(b, "mask-view"), 30, "the mask preview")
        links = _links(browser)
        assert {"mask.tif", "item.json"} <= set(links), links
        for href in links.values():  # the page's downloads are served
            assert requests.get(href, timeout=60).status_code == 200, href
        item = requests.get(links["item.json"], timeout=60).json()
        assert _severe(browser) == []
    finally:
        browser.quit()
    named = [v for v in _strings(item) if v.startswith(str(server.work))]
    assert named, "the Item names the scene it was made from"
    for path in named:
        assert Path(path).is_file()
        assert _gradio_file(server, path).status_code in (403, 404), path


def _strings(data) -> Iterator[str]:
    """Every string in a JSON document."""
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for value in data.values():
            yield from _strings(value)
    elif isinstance(data, list):
        for value in data:
            yield from _strings(value)


def test_cancel_during_the_grad_cam_keeps_the_mask_and_its_downloads(server, serve_files):
    """Item 15: the segmentation had finished; Cancel stops only the Grad-CAM."""

    mosaic = tiled_scene(serve_files / "chip.tif", serve_files / "mosaic.tif")  # a Grad-CAM of 9 s+
    browser = chromium(1400, 1100)
    try:
        browser.get(server.url + "/")
        upload(browser, "scene-upload", mosaic)
        _tick_explain(browser)
        browser.find_element("id", "run").click()
        _wait(browser, lambda b: "Grad-CAM:" in _status_text(b), 120, "the Grad-CAM step")
        browser.find_element("id", "cancel").click()
        _wait(browser, lambda b: "Done" in _status_text(b), 240, "the end of the run")
        status = _status_text(browser)
        assert "Grad-CAM cancelled" in status and "kept" in status, status
        _wait(browser, lambda b: _shown(b, "mask-view"), 30, "the mask preview")
        links = _links(browser)
        assert {"mask.tif", "probabilities.tif", "valid.tif", "polygons.gpkg",
                "item.json"} <= set(links), links  # fmt: skip
        assert "cam.tif" not in links
        for href in links.values():
            assert requests.get(href, timeout=60).status_code == 200, href
        assert "Grad-CAM: cancelled" in browser.find_element("id", "summary").text
        assert _severe(browser) == []
    finally:
        browser.quit()


def test_segment_clicked_while_a_cancel_ends_runs(server, serve_files):
    """Item 15: a Segment click while the last run is still being cancelled is not lost."""

    mosaic = tiled_scene(serve_files / "chip.tif", serve_files / "mosaic.tif")
    browser = chromium(1400, 1100)
    try:
        _upload_and_run(browser, server, mosaic)
        _wait(browser, lambda b: "%" in _status_text(b), 120, "progress")
        browser.find_element("id", "cancel").click()
        browser.find_element("id", "run").click()  # while the cancel is under way
        _wait(browser, lambda b: "Done" in _status_text(b), 240, "the second run")
        assert _shown(browser, "mask-view")
        assert "mask.tif" in _links(browser)
        assert _severe(browser) == []
    finally:
        browser.quit()


def test_warnings_on_the_page_name_the_pages_controls(server, serve_files):
    """Item 15: the product-level warning names the page's control, not a CLI flag."""
    browser = chromium(1400, 1100)
    try:
        _upload_and_run(browser, server, serve_files / "chip.tif")  # no level in its metadata
        _wait(browser, lambda b: "Warning" in b.find_element("id", "summary").text, 120,
              "the warning")  # fmt: skip
        summary = browser.find_element("id", "summary").text
        assert "product level unknown" in summary
        assert "“Product level” L2A" in summary, summary
        assert "--" not in summary, summary
    finally:
        browser.quit()


def test_done_says_the_whole_runs_time_and_its_parts(server, serve_files):
    """Item 15: "Done in" counts the whole run (segmentation and Grad-CAM), not the model's."""
    browser = chromium(1400, 1100)
    try:
        browser.get(server.url + "/")
        upload(browser, "scene-upload", serve_files / "chip.tif")
        _tick_explain(browser)
        started = time.monotonic()
        browser.find_element("id", "run").click()
        _wait(browser, lambda b: "Done" in _status_text(b), 300, "the run")
        wall = time.monotonic() - started
        status = _status_text(browser)
        said = float(re.search(r"Done in ([0-9.]+) s", status)[1])
        assert 0.8 * wall - 1.0 <= said <= wall + 0.5, (said, wall, status)
        assert re.search(r"segmentation [0-9.]+ s", status), status
        assert re.search(r"Grad-CAM [0-9.]+ s", status), status
        browser.find_element("xpath", "//button[@role='tab'][contains(., 'Grad-CAM')]").click()
        _wait(browser, lambda b: _shown(b, "cam-view"), 30, "the Grad-CAM preview")
        assert "cam.tif" in _links(browser)
    finally:
        browser.quit()


def test_each_jobs_stac_item_has_its_own_id(server, serve_files):
    """Item 15: Items of the page's and the API's jobs do not share the id ``mask``."""
    from .test_ogc import _execute

    ids = []
    for _ in range(2):
        document = _execute(server, {"input": str(serve_files / "chip.tif")}).json()
        ids.append(requests.get(document["stac_item"]["href"], timeout=60).json()["id"])
    browser = chromium(1400, 1100)
    try:
        _upload_and_run(browser, server, serve_files / "chip.tif")
        _wait(browser, lambda b: "Done" in _status_text(b), what="the result")
        ids.append(requests.get(_links(browser)["item.json"], timeout=60).json()["id"])
    finally:
        browser.quit()
    assert len(set(ids)) == 3, ids
    assert all(i.startswith("chip-") for i in ids), ids  # the scene's name, then the job's


def test_a_refused_path_is_one_line_in_the_server_log(server):
    """Item 15: a user's error (a path outside --root) is one line, not a traceback."""
    before = len(server.lines)
    browser = chromium(1400, 1100)
    try:
        _name_and_run(browser, server, "/etc/passwd")
        _wait(browser, lambda b: "outside the folders" in b.find_element("tag name", "body").text,
              60, "the error")  # fmt: skip
    finally:
        browser.quit()
    wait_for(lambda: any("/etc/passwd" in line for line in server.lines[before:]), 10,
             "the log line")  # fmt: skip
    time.sleep(1.0)  # anything printed after it
    new = server.lines[before:]
    assert not any("Traceback" in line for line in new), "\n".join(new)
    assert sum("/etc/passwd" in line for line in new) == 1, "\n".join(new)
