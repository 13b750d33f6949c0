"""A server job reads nothing outside ``--root``, whatever its input points at.

Every indirection a client can hand the real ``cloudseg serve``: a VRT fetched by URL or
uploaded through the page whose source is a private file, a VRT under the root that
reaches out (absolute, ``../``, nested), a STAC Item under the root whose assets lie
elsewhere. Each is refused in one line, and the private file is never segmented (no
result, no preview). The same files still work where they stay inside, and the CLI,
run by its user, reads what its user names.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..browser import chromium, upload, wait_for
from .conftest import cli_segment
from .test_ogc import _execute

pytestmark = [pytest.mark.real_data, pytest.mark.slow]

REFUSED = "outside the folders this server reads"


@pytest.fixture(scope="module")
def private(serve_files, tmp_path_factory) -> Path:
    """A scene the server must never read: the chip, in a folder beside the root."""
    folder = tmp_path_factory.mktemp("private")
    shutil.copy(serve_files / "chip.tif", folder / "secret.tif")
    return folder / "secret.tif"


def _vrt(target: Path, source: str, relative: bool = False) -> Path:
    """A VRT on the real chip's grid whose bands are read from ``source``, as written."""
    import re

    from osgeo import gdal

    from ..conftest import BANDS, real_data_dir, stack_bands

    grid = target.parent / ".grid.tif"
    if not grid.exists():
        stack_bands(real_data_dir() / "oncloudn_l2a/adwp", grid, BANDS)
    dataset = gdal.BuildVRT(str(target), [str(grid)])
    for i, band in enumerate(BANDS, start=1):
        dataset.GetRasterBand(i).SetDescription(band)
    dataset = None
    flag = "1" if relative else "0"
    text = re.sub(
        r"<SourceFilename[^>]*>[^<]*</SourceFilename>",
        f'<SourceFilename relativeToVRT="{flag}">{source}</SourceFilename>',
        target.read_text(),
    )
    target.write_text(text)
    return target


@pytest.fixture
def web_folder(tmp_path) -> Iterator[tuple[Path, str]]:
    """A folder served over http on loopback, and its URL."""
    folder = tmp_path / "web"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _refused(response, words: str = REFUSED) -> str:
    assert response.status_code == 400, response.text
    description = response.json()["description"]
    assert words in description, description
    assert "\n" not in description and "Traceback" not in description
    return description


def test_a_vrt_fetched_by_url_that_reads_a_private_file_is_refused(server, private, web_folder):
    folder, url = web_folder
    _vrt(folder / "scene.vrt", str(private))
    _refused(_execute(server, {"input": f"{url}/scene.vrt"}))
    _refused(_execute(server, {"input": f"{url}/scene.vrt"}, process="explain"))


@pytest.mark.parametrize(
    "how", ["absolute", "relative", "nested", "working folder", "vsi", "driver prefix"]
)
def test_a_vrt_under_the_root_that_reaches_out_is_refused(server, serve_files, private, how):
    name = f"reach-{how.replace(' ', '-')}.vrt"
    if how == "absolute":
        _vrt(serve_files / name, str(private))
    elif how == "relative":
        _vrt(serve_files / name, f"../{private.parent.name}/{private.name}", relative=True)
    elif how == "nested":
        _vrt(serve_files / "reach-inner.vrt", str(private))
        _vrt(serve_files / name, "reach-inner.vrt", relative=True)
    elif how == "working folder":
        _vrt(serve_files / name, "secret.tif")
    elif how == "vsi":
        _vrt(serve_files / name, f"/vsigzip/{private}")
    else:
        _vrt(serve_files / name, f"GTIFF_DIR:1:{private}")
    words = {"working folder": "from the working folder", "vsi": "does not read",
             "driver prefix": "does not read"}.get(how, REFUSED)  # fmt: skip
    description = _refused(_execute(server, {"input": str(serve_files / name)}), words)
    assert name in description


def test_a_vrt_that_stays_under_the_root_is_read(server, serve_files):
    vrt = _vrt(serve_files / "inside.vrt", "chip.tif", relative=True)
    response = _execute(server, {"input": str(vrt)})
    assert response.status_code == 200, response.text
    assert response.json()["mask"]["href"]


@pytest.mark.parametrize("href", ["absolute", "relative", "band assets"])
def test_a_stac_item_under_the_root_whose_assets_lie_elsewhere_is_refused(
    server, serve_files, private, href
):
    assets: dict[str, dict[str, object]]
    outside = f"../{private.parent.name}/{private.name}"
    if href == "band assets":
        assets = {b: {"href": str(private)} for b in ("B02", "B03", "B04", "B08")}
    else:
        where = str(private) if href == "absolute" else outside
        assets = {"image": {"href": where, "type": "image/tiff", "roles": ["data"]}}
    item = serve_files / f"item-{href.replace(' ', '-')}.json"
    item.write_text(json.dumps({
        "type": "Feature", "stac_version": "1.0.0", "id": "chip", "geometry": None,
        "properties": {"datetime": "2020-04-29T08:20:47Z"}, "links": [], "assets": assets,
    }))  # fmt: skip
    description = _refused(_execute(server, {"input": str(item)}))
    assert "asset" in description


def test_a_vrt_uploaded_through_the_page_that_reads_a_private_file_is_refused(
    server, private, tmp_path
):
    from selenium.webdriver.common.by import By

    vrt = _vrt(tmp_path / "scene.vrt", str(private))
    browser = chromium(1400, 1100)
    try:
        browser.get(server.url + "/")
        upload(browser, "scene-upload", vrt)
        browser.find_element("id", "run").click()
        wait_for(lambda: "Failed" in browser.find_element(By.ID, "status").text, 240,
                 "the refusal", every=0.25)  # fmt: skip
        assert REFUSED in browser.find_element(By.ID, "status").text
        assert not browser.find_elements(By.CSS_SELECTOR, "#downloads a")
        assert not browser.find_elements(By.CSS_SELECTOR, "#mask-view img")
    finally:
        browser.quit()


def test_the_cli_reads_the_vrt_its_user_names(serve_files, private, venv_env, tmp_path):
    """Run by its user, a VRT's sources are the user's own choice: it is read."""
    vrt = _vrt(tmp_path / "scene.vrt", str(private))
    out = cli_segment(venv_env, vrt, tmp_path / "mask.tif")
    assert out.is_file()
