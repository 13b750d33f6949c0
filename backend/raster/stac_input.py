"""STAC Items as input: which assets a scene is read from, and a local path to read them.

The one rule for ``cloudseg segment`` and ``cloudseg segment-batch``: an Item's band
assets named like Sentinel-2 bands (:data:`BAND_ASSETS`) are read as one scene (one VRT
whose bands carry their names), else its first image asset (role ``data`` or a TIFF
type). Relative hrefs are resolved against the Item's own file or URL. An Item file may
also hold an ItemCollection or a search result (a FeatureCollection of Items).

Reading an Item never reads its assets: :func:`local_source` opens them, where the scene
is segmented, under the network timeouts (:mod:`cloudseg.backend.network`).
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from ..errors import InputError
from .boundary import check_raster

#: Asset names read as the bands of one scene.
BAND_ASSETS = ("B02", "B03", "B04", "B08", "B8A", "B11", "B12")
#: URL suffixes of rasters, not Items (see :func:`is_item_input`).
RASTER_URL = (".tif", ".tiff", ".jp2", ".vrt", ".zip", ".img", ".png", ".jpg")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class SourceItem:
    """A STAC Item a scene is read from.

    Attributes:
        id: The Item's id.
        href: Where the Item is: its ``self`` link when absolute, else the file or URL it
            was read from (``items.json#<id>`` for one Item of a collection).
        datetime: Its ``datetime`` (or ``start_datetime``), ISO 8601; None if it has none.
        bands: Its band assets, ``(band, href)``, hrefs resolved.
        image: Its image asset's resolved href, when it has no band assets.
        text: The Item as canonical JSON (what identifies it).
        source: The file (absolute) or URL the Item was read from.
    """

    id: str
    href: str
    datetime: str | None
    bands: tuple[tuple[str, str], ...]
    image: str | None
    text: str
    source: str = ""

    def hrefs(self) -> list[str]:
        """Every asset href the scene is read from."""
        return [h for _, h in self.bands] or ([self.image] if self.image else [])


def is_item_input(source: str | Path) -> bool:
    """Whether an input names a STAC Item: a ``.json`` file, or an http(s) URL of one.

    An http(s) URL is an Item unless its path ends like a raster file (:data:`RASTER_URL`):
    a STAC API's ``.../collections/c/items/<id>`` has no suffix, or the id's own
    (``...T110000.SAFE``). A raster's URL is left to the scene reader, which reads local
    files only and says so.
    """
    from urllib.parse import urlsplit

    text = str(source)
    if text.startswith(("http://", "https://")):
        return Path(urlsplit(text).path).suffix.lower() not in RASTER_URL
    return text.lower().endswith(".json") and not (_URL.match(text) or text.startswith("/vsi"))


def resolve_href(href: str, base: str) -> str:
    """An asset href as an absolute path or URL, relative ones against ``base``.

    Args:
        href: The asset's href.
        base: The file or URL of the Item that holds it.
    """
    if _URL.match(href):
        return href
    if _URL.match(base):
        return urljoin(base, href)
    return str((Path(base).expanduser().absolute().parent / href).resolve())


def _read_json(source: str) -> Any:
    """The JSON of a local file or an http(s) URL (read under the network timeouts).

    Read within :data:`~cloudseg.backend.metadata_files.MAX_METADATA_BYTES`, as every
    metadata file is.

    Raises:
        InputError: For a file or URL that cannot be read, is over the size limit, or
            holds text that is not JSON.
    """
    from ..metadata_files import parse_json, read_file
    from ..network import download, redact

    shown = redact(source, query=False)
    if source.startswith(("http://", "https://")):
        with tempfile.TemporaryDirectory(prefix="cloudseg-item-") as folder:
            target = Path(folder) / "item.json"
            download(source, target)
            return parse_json(read_file(target, shown), shown)
    return parse_json(read_file(source, shown), shown)


def _self_link(item: dict[str, Any]) -> str | None:
    for link in item.get("links") or []:
        if isinstance(link, dict) and link.get("rel") == "self":
            href = link.get("href")
            if isinstance(href, str) and (_URL.match(href) or href.startswith("/")):
                return href
    return None


def _datetime(item: dict[str, Any]) -> str | None:
    properties = item.get("properties")
    if not isinstance(properties, dict):
        return None
    value = properties.get("datetime") or properties.get("start_datetime")
    return value if isinstance(value, str) and value else None


def _source_item(item: Any, source: str, many: bool) -> SourceItem:
    """One Item of ``source`` (a file or URL), its assets chosen by the module's rule.

    Raises:
        InputError: For something that is not an Item, or an Item without an image
            asset or band assets.
    """
    from ..network import redact

    shown = redact(source, query=False)
    if not isinstance(item, dict) or item.get("type") != "Feature":
        raise InputError(f"{shown}: not a STAC Item or ItemCollection")
    item_id, assets = item.get("id"), item.get("assets", {})
    if not isinstance(item_id, str) or not isinstance(assets, dict):
        raise InputError(f"{shown}: an Item without a text id or an assets object")
    hrefs = {name: a.get("href") for name, a in assets.items() if isinstance(a, dict)}
    if any(not isinstance(h, str) or not h for h in hrefs.values()):
        raise InputError(f"{shown}: Item {item_id} has an asset without an href")
    text = json.dumps(item, sort_keys=True, default=str)
    where = _self_link(item) or (f"{source}#{item_id}" if many else source)
    bands = tuple(
        (name, resolve_href(hrefs[name], source)) for name in BAND_ASSETS if name in hrefs
    )
    if bands:
        return SourceItem(item_id, where, _datetime(item), bands, None, text, source)
    data_assets = [
        hrefs[name] for name, a in assets.items()
        if isinstance(a, dict) and ("data" in (a.get("roles") or [])
                                    or str(a.get("type", "")).startswith("image/tiff"))
    ]  # fmt: skip
    if not data_assets:
        raise InputError(f"{shown}: Item {item_id} has no image asset (nor B02, B03...)")
    image = resolve_href(data_assets[0], source)
    return SourceItem(item_id, where, _datetime(item), (), image, text, source)


def read_items(source: str | Path) -> list[SourceItem]:
    """The Items of a STAC Item, ItemCollection or search result (file or http(s) URL).

    Raises:
        InputError: For a file that cannot be read, is not JSON, or holds something
            other than Items with an image asset or band assets.
    """
    text = str(source)
    if not _URL.match(text):
        text = str(Path(text).expanduser().absolute())
    data = _read_json(text)
    items = data.get("features", [data]) if isinstance(data, dict) else None
    if not isinstance(items, list):
        from ..network import redact

        raise InputError(f"{redact(text, query=False)}: not a STAC Item or ItemCollection")
    many = isinstance(data, dict) and "features" in data
    return [_source_item(item, text, many) for item in items]


def read_item(source: str | Path) -> SourceItem:
    """The one Item of a STAC Item file or URL (see :func:`read_items`).

    Raises:
        InputError: Also for a collection of more or fewer than one Item.
    """
    items = read_items(source)
    if len(items) != 1:
        from ..network import redact

        raise InputError(
            f"{redact(str(source), query=False)} holds {len(items)} Items; segment takes "
            "one: use segment-batch for a collection"
        )
    return items[0]


def gdal_path(href: str) -> str:
    """The GDAL path of an href: ``/vsis3/`` for S3, ``/vsicurl/`` for http(s)."""
    if href.startswith("s3://"):
        return "/vsis3/" + href[5:]
    if href.startswith(("http://", "https://")):
        return "/vsicurl/" + href
    return href


def band_vrt(item_id: str, bands: tuple[tuple[str, str], ...], folder: Path) -> str:
    """One VRT of an Item's band assets, bands named (what the band matcher reads).

    Each asset is opened first, one at a time, under the network timeouts: the first
    that cannot be read fails the scene with one line, without waiting on the others.

    Args:
        item_id: The Item's id (the VRT's name and messages).
        bands: ``(band, href)`` of its band assets.
        folder: Where the VRT is written.

    Raises:
        InputError: Naming the band asset that cannot be read, and why.
    """
    from osgeo import gdal

    from ..network import configure_gdal, redact

    configure_gdal()
    for name, href in bands:  # a server job reads local assets under its roots only
        if not href.startswith(("http://", "https://", "s3://")):
            check_raster(href, f"band asset {name} of Item {item_id} ({href})")
    paths = [gdal_path(href) for _, href in bands]
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        for (name, href), path in zip(bands, paths, strict=True):
            gdal.ErrorReset()
            try:
                opened = gdal.Open(path)
            except RuntimeError as exc:  # where another caller turned exceptions on
                opened, message = None, str(exc)
            else:
                message = gdal.GetLastErrorMsg()
            if opened is None:
                reason = (message or "cannot be opened").splitlines()[0]
                raise InputError(
                    f"band asset {name} of Item {item_id} ({redact(href, query=False)}) "
                    f"cannot be read: {reason}"
                )
            opened = None
        vrt = _scene_file(folder, item_id, ".vrt")
        dataset = gdal.BuildVRT(str(vrt), paths, separate=True)
        if dataset is None:
            raise InputError(f"cannot read the band assets of Item {item_id}")
        for i, (name, _) in enumerate(bands, start=1):
            dataset.GetRasterBand(i).SetDescription(name)
        dataset = None
    finally:
        gdal.PopErrorHandler()
    return str(vrt)


def _scene_file(folder: Path, name: str, suffix: str) -> Path:
    """A file in ``folder`` named after ``name``, a name from the input made safe.

    ``name`` is an Item id or a URL's last part: it never becomes a path of its own
    (``../``, ``/``), so the file is always in ``folder``.
    """
    from ..atomic import safe_name

    clean_suffix = "." + safe_name(suffix.lstrip("."))[:8]
    return folder / f"{safe_name(name)}{clean_suffix}"


def local_source(item: SourceItem, folder: Path) -> str:
    """A local path the scene reader opens for an Item's scene.

    Band assets become one VRT in ``folder``; a local image asset is read where it is;
    a remote one is downloaded into ``folder`` (http(s)) or read through a VRT (S3, with
    GDAL's AWS settings).

    Raises:
        InputError: For an asset that cannot be read, in one line.
    """
    if item.bands:
        return band_vrt(item.id, item.bands, folder)
    assert item.image is not None
    if item.image.startswith(("http://", "https://")):
        from ..network import download

        name = item.image.split("?", 1)[0].rsplit("/", 1)[-1]
        stem, dot, suffix = name.rpartition(".")
        local = _scene_file(folder, stem if dot else name, f".{suffix}" if dot else ".tif")
        download(item.image, local)
        return str(local)
    if _URL.match(item.image):
        from osgeo import gdal

        from ..network import configure_gdal

        configure_gdal()
        vrt = _scene_file(folder, item.id, ".vrt")
        dataset = gdal.BuildVRT(str(vrt), [gdal_path(item.image)])
        if dataset is None:
            raise InputError(f"the image asset of Item {item.id} cannot be read")
        dataset = None
        return str(vrt)
    check_raster(item.image, f"the image asset of Item {item.id} ({item.image})")
    return item.image


__all__ = [
    "BAND_ASSETS",
    "SourceItem",
    "band_vrt",
    "gdal_path",
    "is_item_input",
    "local_source",
    "read_item",
    "read_items",
    "resolve_href",
]
