"""The web page of the real ``cloudseg serve`` in a real headless Chromium, as a user uses it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

from ..browser import chromium, upload, wait_for
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
    from .test_ogc import _mosaic

    mosaic = _mosaic(serve_files / "chip.tif", serve_files / "mosaic.tif")
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
        browser.get(server.url + "/")
        fields = "#scene-source textarea, #scene-source input"
        _wait(browser, lambda b: b.find_elements("css selector", fields), 60, "the page")
        browser.find_elements("css selector", fields)[0].send_keys("/etc/passwd")
        browser.find_element("id", "run").click()
        _wait(browser, lambda b: "outside the folders" in b.find_element("tag name", "body").text,
              60, "the error")  # fmt: skip
        assert not browser.find_elements("css selector", "#downloads a")
    finally:
        browser.quit()


def test_the_page_and_the_api_share_one_queue(server, serve_files):
    from .test_ogc import _execute, _mosaic, _poll

    mosaic = _mosaic(serve_files / "chip.tif", serve_files / "mosaic.tif")
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
