"""Metadata that comes with a scene: SAFE XMLs, STAC Items, the sun's angles.

Every case runs the real ``cloudseg`` on the real crop of the workspace (as a GeoTIFF,
a SAFE product built from its band files, or a STAC Item pointing at it) and checks
what a user relies on: a metadata file over the size limit, or one that is damaged, is
one ``cloudseg: error:`` line naming the file, in bounded memory and time, with every
file left as it was; a sun at the horizon gives a mask, within the memory budget.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio

from .conftest import error_line
from .test_hostile_inputs import _peak_run

pytestmark = pytest.mark.real_data

#: What the bombs inflate to: far beyond any metadata file, cheap to build.
BOMB_BYTES = 2**30
#: Peak memory a refused run may reach (a run reading the bomb whole needs twice it).
REFUSED_PEAK_MIB = 1024


def _inflated(product: Path, member: str, size: int) -> Path:
    """A copy of a SAFE zip whose ``member`` (a regular expression) inflates to ``size``.

    The member keeps its XML; a comment of spaces makes it large (it deflates to about
    a thousandth of that).
    """
    bomb = product.with_name(f"bomb-{product.name}")
    with (
        zipfile.ZipFile(product) as source,
        zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as out,
    ):
        for info in source.infolist():
            data = source.read(info)
            if not re.search(member, info.filename):
                out.writestr(info, data)
                continue
            head, tail = data.split(b"?>", 1)
            with out.open(info.filename, "w", force_zip64=True) as stream:
                stream.write(head + b"?>\n<!--")
                spaces = b" " * 2**20
                for _ in range(size // len(spaces)):
                    stream.write(spaces)
                stream.write(b"-->" + tail)
    product.unlink()
    return bomb


def _sparse(path: Path, text: str, size: int) -> None:
    """``path``: ``text``, then zeros up to ``size`` bytes (a sparse file: no disk used)."""
    path.write_text(text, encoding="utf-8")
    os.truncate(path, size)


def _item(path: Path, image: Path, **properties: object) -> Path:
    """A STAC Item of one image asset (the scene), with ``properties``."""
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": path.stem,
        "geometry": None,
        "properties": {"datetime": "2020-04-29T08:20:47Z", **properties},
        "links": [],
        "assets": {
            "image": {"href": image.name, "type": "image/tiff; application=geotiff",
                      "roles": ["data"]},
        },
    }  # fmt: skip
    path.write_text(json.dumps(item), encoding="utf-8")
    return path


# -- metadata files over the size limit: read no further than it ---------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    ["tile-xml-in-zip", "product-xml-in-zip", "product-xml-in-folder", "tile-xml-in-folder",
     "stac-item", "stac-item-of-a-batch", "level-sidecar-item"],
)  # fmt: skip
def test_a_metadata_file_over_the_limit_is_refused_in_bounded_memory(workspace, make_safe, case):
    """Issue 39, item 8: a 1.6 MB zip whose MTD_TL.xml inflated to 1.5 GB took 3.4 GB."""
    root = workspace.root
    args: list[str | Path] = ["-q", "--shadow-geometry"]
    if case.endswith("in-zip"):
        member = r"GRANULE/[^/]+/MTD_TL\.xml$" if case.startswith("tile") else r"MTD_MSIL2A\.xml$"
        product = make_safe(workspace.chip, root / "products", as_zip=True, sun=(35.2, 151.7))
        scene = _inflated(product, member, BOMB_BYTES)
        named = "MTD_TL.xml" if case.startswith("tile") else "MTD_MSIL2A.xml"
    elif case.endswith("in-folder"):
        scene = make_safe(workspace.chip, root / "products", sun=(35.2, 151.7))
        pattern = "GRANULE/*/MTD_TL.xml" if case.startswith("tile") else "MTD_MSIL2A.xml"
        metadata = next(scene.glob(pattern))
        _sparse(metadata, metadata.read_text(encoding="utf-8"), BOMB_BYTES)
        named = metadata.name
    elif case == "level-sidecar-item":  # scene.json beside scene.tif: read for the level
        scene, named = workspace.scene, "scene.json"
        _sparse(root / "scene.json", '{"type": "Feature", "properties": {}}', BOMB_BYTES)
    else:
        scene = _item(root / "item.json", workspace.scene)
        _sparse(scene, scene.read_text(encoding="utf-8"), BOMB_BYTES)
        named = "item.json"
    before = workspace.snapshot()
    start = time.monotonic()
    if case == "stac-item-of-a-batch":
        result, peak = _peak_run(workspace, "segment-batch", scene, "--out", "batch", "-q")
    else:
        result, peak = _peak_run(workspace, "segment", scene, "m.tif", *args)
    seconds = time.monotonic() - start
    if case == "level-sidecar-item":  # a level hint that cannot be read is no hint
        assert result.returncode == 0, result.stderr
        assert peak < REFUSED_PEAK_MIB, f"{peak:.0f} MiB"
        return
    line = error_line(result)
    assert result.returncode == 1
    assert named in line and "larger than 32 MiB" in line, line
    assert peak < REFUSED_PEAK_MIB, f"{peak:.0f} MiB for a refusal"
    assert seconds < 60
    assert workspace.snapshot() == before


# -- damaged SAFE metadata: one line naming the file and what is wrong ----------------------------
#: ``(file, bytes replaced, by, words of the line)``.
DAMAGE = {
    "quantification-not-a-number": (
        "MTD_MSIL2A.xml", b">10000</BOA_QUANTIFICATION_VALUE>",
        b">ten thousand</BOA_QUANTIFICATION_VALUE>",
        "BOA_QUANTIFICATION_VALUE is 'ten thousand', not a positive number",
    ),
    "quantification-zero": (
        "MTD_MSIL2A.xml", b">10000</BOA_QUANTIFICATION_VALUE>", b">0</BOA_QUANTIFICATION_VALUE>",
        "BOA_QUANTIFICATION_VALUE is '0', not a positive number",
    ),
    "band-id-13": (
        "MTD_MSIL2A.xml", b'band_id="12"', b'band_id="13"',
        "band_id '13', not a Sentinel-2 band (0-12)",
    ),
    "band-id-name": (
        "MTD_MSIL2A.xml", b'band_id="12"', b'band_id="B12"',
        "band_id 'B12', not a Sentinel-2 band (0-12)",
    ),
    "band-id-negative": (
        "MTD_MSIL2A.xml", b'band_id="12"', b'band_id="-1"',
        "band_id '-1', not a Sentinel-2 band (0-12)",
    ),
    "offset-not-a-number": (
        "MTD_MSIL2A.xml", b'band_id="12">-1000<', b'band_id="12">-1e999<',
        "BOA_ADD_OFFSET of band_id 12 is '-1e999', not a number",
    ),
    "product-xml-not-utf8": (
        "MTD_MSIL2A.xml", b"<PROCESSING_LEVEL>Level-2A", b"<PROCESSING_LEVEL>Level-2A \xff\xfe",
        "is not UTF-8 text (byte 0xff on line",
    ),
    "tile-xml-not-utf8": (
        "MTD_TL.xml", b"<ZENITH_ANGLE", b"<!-- \xe9t\xe9 --><ZENITH_ANGLE",
        "is not UTF-8 text (byte 0xe9 on line",
    ),
    "tile-xml-not-xml": (
        "MTD_TL.xml", b"</Mean_Sun_Angle>", b"</Mean_Sun>", "is not well-formed XML",
    ),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_safe_metadata_is_one_line_naming_the_file(workspace, make_safe, case, as_zip):
    """Issue 39, item 9: each was a Python traceback (ValueError, IndexError, Unicode...)."""
    name, old, new, words = DAMAGE[case]
    product = make_safe(workspace.chip, workspace.root / "products", sun=(35.2, 151.7))
    metadata = next(product.rglob(name))
    data = metadata.read_bytes()
    assert old in data, case
    metadata.write_bytes(data.replace(old, new, 1))
    scene = product
    if as_zip:
        scene = Path(shutil.make_archive(str(product.with_suffix("")), "zip", product.parent,
                                         product.name))  # fmt: skip
        shutil.rmtree(product)
    before = workspace.snapshot()
    result = workspace.cli("segment", scene, "m.tif", "-q", "--shadow-geometry")
    line = error_line(result)
    assert result.returncode == 1
    assert name in line and words in line, line
    assert workspace.snapshot() == before


# -- a sun at the horizon: the shadow's reach is clamped to the scene -----------------------------
def _tagged_copy(workspace, elevation: str) -> Path:
    """The workspace scene with the sun's angles in its GDAL metadata."""
    path = workspace.root / "tagged.tif"
    shutil.copy(workspace.scene, path)
    with rasterio.open(path, "r+") as ds:
        ds.update_tags(SUN_ELEVATION=elevation, SUN_AZIMUTH="150")
    return path


def _classes(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("how", "elevation"),
    [("gdal-tags", "0.001"), ("gdal-tags", "0.00001"), ("stac-item", "0.001"),
     ("safe-tile-xml", "0.001")],
)  # fmt: skip
def test_a_sun_at_the_horizon_gives_the_mask_within_the_budget(
    workspace, make_safe, how, elevation
):
    """Issue 39, item 7: SUN_ELEVATION=0.001 took 4-6 GB against --max-memory 1G (and
    minutes); 0.00001 was a 51 GiB MemoryError traceback.

    Shadows that long reach beyond the scene: a cloud outside it may shade any pixel,
    so the step lowers nothing, and the mask is the one without it.
    """
    if how == "gdal-tags":
        scene = _tagged_copy(workspace, elevation)
        plain = ["segment", scene, "plain.tif", "-q", "--product-level", "L2A"]
    elif how == "stac-item":
        sun = {"view:sun_elevation": float(elevation), "view:sun_azimuth": 150.0}
        scene = _item(workspace.root / "item.json", workspace.scene, **sun)
        plain = ["segment", scene, "plain.tif", "-q", "--product-level", "L2A"]
    else:
        zenith = 90.0 - float(elevation)
        scene = make_safe(workspace.chip, workspace.root / "products", sun=(zenith, 150.0))
        plain = ["segment", scene, "plain.tif", "-q"]
    args = [*plain[:2], "m.tif", *plain[3:]]
    start = time.monotonic()
    result, peak = _peak_run(
        workspace, *args, "--shadow-geometry", "--max-memory", "1G", "--stats", "m.json"
    )
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    assert peak < 1024, f"peak {peak:.0f} MiB over the 1 GiB budget"
    assert seconds < 60
    report = json.loads((workspace.root / "m.json").read_text())["shadow_geometry"]
    assert report["sun"]["zenith"] == pytest.approx(90.0 - float(elevation))
    assert report["changed_pixels"] == 0 and "beyond the scene" in report["note"]
    assert "Traceback" not in result.stderr
    assert workspace.cli(*plain).returncode == 0
    np.testing.assert_array_equal(
        _classes(workspace.root / "m.tif"), _classes(workspace.root / "plain.tif")
    )
