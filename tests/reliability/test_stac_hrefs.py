"""STAC outputs that others can read: ids and hrefs of inputs with awkward names.

A batch's collection and a run's Item are read back with pystac (as a catalogue tool
would) and followed to the files they name; every href must be a URI reference (no
raw ``#``, space, ``%`` or newline) and every id plain. The inputs are copies of the
workspace's real crop under names users have: ``h#ash.tif``, ``my scene.tif``,
``per%cent.tif``, ``été.tif``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import pystac
import pytest

pytestmark = pytest.mark.real_data

#: Input names, and the scene (Item id, file name) the batch gives each.
NAMES = {"h#ash": "h_ash", "my scene": "my_scene", "per%cent": "per_cent", "été": "été"}
#: What an href may hold raw: a URI reference's characters, letters of any script.
HREF = re.compile(r"^(?:[\w\-.~!$&'()*+,;=:@/?#\[\]]|%[0-9A-F]{2})+$")
#: What an id may hold.
ID = re.compile(r"^[\w\-.~!$&'()+,;=@]+$")


def _hrefs(document: dict) -> list[str]:
    """Every href of a STAC document: its links' and its assets'."""
    links = [link["href"] for link in document.get("links", [])]
    return links + [asset["href"] for asset in document.get("assets", {}).values()]


def _plain(path: Path) -> None:
    """Every href of the STAC document at ``path`` is a URI reference, its id plain."""
    document = json.loads(path.read_text(encoding="utf-8"))
    assert ID.match(document["id"]), document["id"]
    for href in _hrefs(document):
        assert HREF.match(href), f"{path.name}: {href!r}"


@pytest.mark.slow
def test_a_batch_of_awkward_names_writes_a_collection_pystac_reads_back(workspace):
    """Issue 39, item 10: with ``h#ash.tif`` the collection linked ``./h#ash.stac.json``,
    which pystac reads as ``./h`` (and a fragment): the collection could not be read."""
    inputs = workspace.root / "in"
    inputs.mkdir()
    for name in NAMES:
        shutil.copy(workspace.scene, inputs / f"{name}.tif")
    out = workspace.root / "masks v2"
    result = workspace.cli(
        "segment-batch", inputs, "--out", out, "--product-level", "L2A", "--workers", "1", "-q",
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    collection = pystac.Collection.from_file(str(out / "collection.json"))
    assert collection.id == "masks_v2"
    items = {item.id: item for item in collection.get_items()}
    assert set(items) == set(NAMES.values())
    records = {r["scene"]: r for r in json.loads((out / "manifest.json").read_text())["records"]}
    for name, scene in NAMES.items():
        mask = Path(items[scene].assets["mask"].get_absolute_href())
        assert mask == out / f"{scene}.tif" and mask.is_file()
        assert Path(records[scene]["output"]) == mask
        assert Path(records[scene]["source"]).name == f"{name}.tif"  # the input, as it is
        assert items[scene].get_collection().id == "masks_v2"
        _plain(out / f"{scene}.stac.json")
    _plain(out / "collection.json")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["h#ash m", "per%cent", "new\nline"])
def test_an_item_of_an_awkward_output_name_has_encoded_hrefs_and_a_plain_id(workspace, name):
    """``segment --stac-item`` names the user's own files: its hrefs are percent-encoded
    (``./h%23ash%20m.tif``), the Item's id plain, and the link to the source Item too."""
    source = workspace.root / f"source {name}.json"
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": f"scene {name}", "geometry": None,
        "properties": {"datetime": "2020-04-29T08:20:47Z"}, "links": [],
        "assets": {"image": {"href": "scene.tif", "type": "image/tiff", "roles": ["data"]}},
    }  # fmt: skip
    source.write_text(json.dumps(item), encoding="utf-8")
    mask = workspace.root / f"{name}.tif"
    written = workspace.root / "item.json"
    result = workspace.cli(
        "segment", source, mask, "-q", "--product-level", "L2A", "--stac-item", written
    )
    assert result.returncode == 0, result.stderr
    _plain(written)
    read = pystac.Item.from_file(str(written))
    assert read.id == re.sub(r"[ #%\n]", "_", name)
    href = read.assets["mask"].href
    assert href.startswith("./") and Path(unquote(read.assets["mask"].get_absolute_href())) == mask
    derived = next(link for link in read.links if link.rel == "derived_from")
    assert Path(unquote(derived.href)) == source
