"""cloudseg's STAC: the Items and Collections of masks and of an ingested store (pystac).

The one owner of a mask's Item (``cloudseg segment --stac-item``, every scene of
``segment-batch``, every job of the server): :func:`mask_item` builds it from the class
raster as written (geometry, bbox and the ``proj``/``raster`` fields through rio-stac;
classes, model and its accuracy from the raster's ``CLOUDSEG_*`` tags) and the run's
statistics; :func:`item_bytes` and :func:`write_item` give its JSON. It builds the Item
of each scene of an ingested store too: :func:`store_item` (geometry, bbox and the
``proj`` fields from the scene's grid, the ``eo`` bands, the Zarr ``image`` and ``mask``
assets, an open time span for a scene of unknown date) from what
:mod:`cloudseg.backend.store.ingest` records of the scene (checksum, class pixels, band
statistics, its Zarr keys as hrefs), which it passes in: this module imports nothing of
the store. And cloudseg's STAC Collections: :func:`collection_dict` is the one builder
(extent from the Items' bboxes and datetimes, item links, summaries), used for a batch's
masks (:func:`mask_collection`) and for an ingested store
(:func:`cloudseg.backend.store.ingest.write_collection`).

What a mask's Item says:

- ``datetime``: when the scene was acquired (:func:`scene_time`: the source STAC Item,
  SAFE metadata, a Sentinel-2 file name, the raster's ``TIFFTAG_DATETIME``), else the
  run's time; ``cloudseg:datetime_from`` says which.
- ``eo:cloud_cover``: the percentage of the data pixels that are cloud (thick and thin:
  every class :func:`~cloudseg.backend.models.cards.class_kind` calls cloud), as STAC
  defines it; cloud shadow is ``cloudseg:shadow_cover``, the valid mask's usable share
  ``cloudseg:usable_percent``.
- Assets: ``mask`` (roles ``data``, ``cloud``, ``cloud-shadow``; the ``classification``
  extension with each class's value, name, colour, pixel count and percentage, and 255
  as nodata), and where written ``probabilities``, ``uncertainty``, ``valid``
  (``data-mask``), ``polygons`` and ``stats`` (``metadata``); each with ``file:size`` and
  ``file:checksum`` (SHA2-256 multihash) and the rasters with ``raster:bands``. An
  asset in the Item's folder has a relative href (``./mask.tif``), so the folder can be
  moved or uploaded as it is.
- Ids and hrefs follow one rule (:func:`stac_id`, :func:`href_of`): an id keeps letters,
  digits and ``-._~!$&'()+,;=@`` (any other character, a space, ``#``, ``%``, ``/`` or a
  newline, becomes ``_``), and every href is a URI reference whose other characters are
  percent-encoded (``./h%23ash.tif``; letters of any script stay as they are, as STAC's
  IRI references allow). A batch names its files by such ids, so their hrefs need no
  encoding and read the same as paths (pystac, GDAL) and as URLs (a web server, S3).
- ``processing:software`` (``{"cloudseg": version}``), ``processing:lineage``,
  ``processing:datetime``, and the model: ``cloudseg:model``, ``cloudseg:model_version``,
  ``cloudseg:model_accuracy`` (its measured accuracy, or "not measured").
- A ``derived_from`` link to the source STAC Item when the input was one.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import unicodedata
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .._version import __version__
from ..atomic import file_sha256
from ..models.cards import class_kind
from .decision import NODATA

if TYPE_CHECKING:
    import pystac

    from ..raster.reader import SceneReader
    from ..raster.stac_input import SourceItem

PROCESSING_SCHEMA = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
#: Each output's asset: media type and roles.
ASSETS: dict[str, tuple[str, list[str], str]] = {
    "mask": (COG, ["data", "cloud", "cloud-shadow"], "Cloud and cloud-shadow classes"),
    "probabilities": (COG, ["data", "probability"], "Class probabilities, percent"),
    "uncertainty": (COG, ["data", "uncertainty"], "Normalized entropy, percent"),
    "valid": (COG, ["data-mask"], "Valid pixels: 1 usable, 0 cloud/shadow/buffer"),
    "polygons": ("application/geopackage+sqlite3", ["data", "cloud", "cloud-shadow"],
                 "Cloud and cloud-shadow polygons"),
    "stats": ("application/json", ["metadata"], "Run statistics"),
}  # fmt: skip


class RunStats(Protocol):
    """What an Item takes from a run (a ``SegmentResult`` has it all)."""

    model: str
    class_pixels: dict[str, int]
    class_percent: dict[str, float]
    nodata_pixels: int
    usable_percent: float | None
    acquired: str | None
    acquired_from: str


RUN_TIME = "the run's time (the source records no acquisition time)"
#: Sentinel-2 names carry the sensing time: ``..._20200429T082047_...``.
_S2_TIME = re.compile(r"(?:^|[_/])(20\d{6}T\d{6})(?:[_./]|$)")


def cover_percent(class_percent: Mapping[str, float], kind: str) -> float:
    """The share of the data pixels in classes of one kind (``cloud``, ``shadow``), %.

    The one rule for ``eo:cloud_cover`` and the batch records' ``cloud_percent``.
    """
    return round(sum(v for k, v in class_percent.items() if class_kind(k) == kind), 3)


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> dt.datetime | None:
    """An ISO 8601 or ``YYYYMMDDTHHMMSS`` time (UTC unless it says), None if not one."""
    text = text.strip()
    for form in ("%Y%m%dT%H%M%S", "%Y:%m:%d %H:%M:%S"):  # S2 names; TIFFTAG_DATETIME
        try:
            return dt.datetime.strptime(text, form).replace(tzinfo=dt.timezone.utc)
        except ValueError:
            pass
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def scene_time(reader: SceneReader) -> tuple[str | None, str]:
    """When a scene was acquired, and how that was found: ``(ISO time or None, how)``.

    SAFE metadata (``PRODUCT_START_TIME``), a Sentinel-2 name of the input or its band
    files (``..._20200429T082047_...``), then the ``TIFFTAG_DATETIME`` of its files.
    """
    from ..raster.safe_product import is_safe, open_safe

    path = reader.path
    try:
        sensing = open_safe(path).sensing_time if is_safe(path) else None
        if sensing and (found := parse_time(sensing)):
            return _iso(found), f"SAFE metadata of {path.name}"
    except Exception:  # the reader read this product already; the time is a nicety
        pass
    files = [str(path), *dict.fromkeys(s.path for s in reader.sources.values())]
    for name in files:
        match = _S2_TIME.search(name)
        if match and (found := parse_time(match[1])):
            return _iso(found), f"the name {Path(name).name}"
    import rasterio

    for name in files[1:]:
        try:
            with rasterio.open(name) as ds:
                stamp = ds.tags().get("TIFFTAG_DATETIME")
        except Exception:
            continue
        if stamp and (found := parse_time(stamp)):
            return _iso(found), f"TIFFTAG_DATETIME of {Path(name).name}"
    return None, RUN_TIME


def multihash(path: Path) -> str:
    """``file:checksum`` of a file: its SHA2-256 as a multihash (``1220`` + hex)."""
    return "1220" + file_sha256(path)


#: What an id keeps besides letters and digits (of any script), and what an href keeps
#: as it is besides those and ``/``: RFC 3986's unreserved characters and the
#: sub-delimiters a path segment takes, less ``*`` (not in a Windows file name).
PLAIN = "-._~!$&'()+,;=@"


def stac_id(text: str, default: str = "mask") -> str:
    """``text`` as a STAC id (and a file name that needs no percent-encoding in an href).

    Letters and digits of any script and :data:`PLAIN` are kept (NFC); every other
    character (a space, ``#``, ``%``, ``?``, ``/``, a newline) becomes ``_``.
    """
    normal = unicodedata.normalize("NFC", text)
    return "".join(c if c.isalnum() or c in PLAIN else "_" for c in normal) or default


def href_of(path: str) -> str:
    """A path as an href: a URI reference, percent-encoded where it must be.

    Characters outside :data:`PLAIN`, ``/`` and letters and digits are percent-encoded
    as UTF-8 (``h#ash m.tif`` -> ``h%23ash%20m.tif``, a newline ``%0A``, ``%`` itself
    ``%25``); letters and digits of other scripts stay as they are (an IRI reference).
    """
    from urllib.parse import quote

    return "".join(
        c if c == "/" or c in PLAIN or (c.isalnum() and (c.isascii() or c.isprintable()))
        else quote(c, safe="")
        for c in unicodedata.normalize("NFC", path)
    )  # fmt: skip


def url_href(url: str) -> str:
    """A URL as an href: as it is, but for what no URL may hold raw.

    Spaces, control characters, quotes and non-ASCII characters are percent-encoded;
    reserved characters and ``%XX`` escapes stay.
    """
    from urllib.parse import quote

    return quote(url, safe=":/?#[]@!$&'()*+,;=%~")


def _href(final: Path, item_path: Path | None) -> str:
    """An asset's href: ``./name`` in the Item's folder, else the absolute path (encoded)."""
    final = Path(final).expanduser()
    if item_path is not None and final.absolute().parent == Path(item_path).absolute().parent:
        return f"./{href_of(final.name)}"
    return href_of(str(final.absolute()))


def _source_href(source: SourceItem) -> str:
    """The ``derived_from`` href of the Item a run read, as a URI reference.

    Its URL, or its file (with the ``#id`` fragment of one Item of a collection).
    """
    href = source.href
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", href):
        return url_href(href)
    if source.source and href == f"{source.source}#{source.id}":
        return f"{href_of(source.source)}#{href_of(source.id)}"
    return href_of(href)


def _field(result: RunStats | Mapping[str, Any], name: str, default: Any = None) -> Any:
    if isinstance(result, Mapping):
        return result.get(name, default)
    return getattr(result, name, default)


def _mask_asset(
    item: pystac.Item,
    mask: Path,
    tags: dict[str, str],
    result: RunStats | Mapping[str, Any],
) -> None:
    """Classes (classification), file size and checksum of the mask asset."""
    from pystac.extensions.classification import Classification, ClassificationExtension

    asset = item.assets["mask"]
    percent = _field(result, "class_percent") or {}
    pixels = _field(result, "class_pixels") or {}
    classes = [
        Classification.create(
            value=int(c["value"]),
            name=re.sub(r"[^0-9A-Za-z_-]+", "-", c["name"]).strip("-") or f"class-{c['value']}",
            title=c["name"],
            description=c["name"],
            color_hint=str(c.get("color", "")).lstrip("#")[:6].upper() or None,
            percentage=percent.get(c["name"]),
            count=pixels.get(c["name"]),
        )
        for c in json.loads(tags.get("CLOUDSEG_CLASSES", "[]"))
    ]
    nodata = _field(result, "nodata_pixels")
    classes.append(
        Classification.create(
            value=NODATA,
            name="nodata",
            title="no data",
            description="no data",
            nodata=True,
            count=nodata,
        )
    )
    ClassificationExtension.ext(asset, add_if_missing=True).classes = classes


def _file_fields(asset: pystac.Asset, path: Path) -> None:
    from pystac.extensions.file import FileExtension

    file_ext = FileExtension.ext(asset, add_if_missing=True)
    file_ext.size = path.stat().st_size
    file_ext.checksum = multihash(path)


def mask_item(
    mask: Path,
    result: RunStats | Mapping[str, Any],
    *,
    item_path: Path | None = None,
    item_id: str | None = None,
    assets: Mapping[str, Path | None] | None = None,
    source: str | None = None,
    source_item: SourceItem | None = None,
    staged: Mapping[Path, Path] | None = None,
) -> pystac.Item:
    """The STAC Item of a mask and the run's other outputs (see the module doc).

    Args:
        mask: The class raster's path (its final one: the asset's href).
        result: The run's ``SegmentResult`` (:mod:`.segment`), or its ``to_dict()``:
            class pixels and percentages, usable share, the acquisition time
            (``acquired``, ``acquired_from``).
        item_path: Where the Item will be written: assets in its folder get relative
            hrefs (``./mask.tif``); None gives absolute ones. Hrefs are percent-encoded
            (:func:`href_of`).
        item_id: The Item's id; default the mask's file name without its suffix (made
            safe by :func:`stac_id`).
        assets: The run's other outputs by kind (``probabilities``, ``uncertainty``,
            ``valid``, ``polygons``, ``stats``; None: not written), final paths.
        source: The input as given (recorded as ``cloudseg:source``).
        source_item: The STAC Item the input was read from: a ``derived_from`` link, and
            the Item's ``datetime``.
        staged: Where files are read from while they are not yet at their final paths
            (``final -> temporary``): an Item is built before the outputs are published.

    Returns:
        The Item (``pystac.Item``); :func:`item_bytes` gives its JSON.
    """
    import pystac
    import rasterio
    from pystac.extensions.eo import EOExtension
    from rio_stac import create_stac_item
    from rio_stac.stac import get_raster_info

    staged = {Path(k): Path(v) for k, v in (staged or {}).items()}
    mask = Path(mask).expanduser()

    def local(path: Path) -> Path:
        return staged.get(Path(path), Path(path))

    acquired = source_item.datetime if source_item is not None else None
    how = f"the source STAC Item {source_item.id}" if acquired and source_item else ""
    if not acquired:
        acquired, how = _field(result, "acquired"), _field(result, "acquired_from") or RUN_TIME
    when = parse_time(acquired) if acquired else None
    if when is None:
        when, how = dt.datetime.now(dt.timezone.utc), RUN_TIME
    with rasterio.open(local(mask)) as ds, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rio-stac's warning for a raster without a CRS
        tags, georeferenced = ds.tags(), ds.crs is not None
        kind, roles, title = ASSETS["mask"]
        item = create_stac_item(
            ds, input_datetime=when, id=stac_id(item_id or mask.stem), asset_name="mask",
            asset_roles=roles, asset_media_type=kind, asset_href=_href(mask, item_path),
            with_proj=georeferenced, with_raster=True, geom_precision=7,
        )  # fmt: skip
    if not georeferenced:  # no footprint rather than rio-stac's whole world
        item.geometry, item.bbox = None, None
        item.properties["cloudseg:note"] = "the input is not georeferenced: no geometry"
    item.assets["mask"].title = title
    _mask_asset(item, local(mask), tags, result)
    _file_fields(item.assets["mask"], local(mask))
    for name, path in (assets or {}).items():
        if path is None:
            continue
        kind, roles, title = ASSETS[name]
        asset = pystac.Asset(_href(path, item_path), title=title, media_type=kind, roles=roles)
        if kind == COG:
            with rasterio.open(local(path)) as ds:
                asset.extra_fields["raster:bands"] = get_raster_info(ds, max_size=1024)
        item.add_asset(name, asset)
        _file_fields(asset, local(path))
    percent = _field(result, "class_percent") or {}
    EOExtension.ext(item, add_if_missing=True).cloud_cover = cover_percent(percent, "cloud")
    model = tags.get("CLOUDSEG_MODEL", _field(result, "model", ""))
    accuracy = tags.get("CLOUDSEG_MODEL_ACCURACY", "not measured")
    created = tags.get("CLOUDSEG_CREATED") or _iso(dt.datetime.now(dt.timezone.utc))
    item.properties |= {
        "created": created,
        "cloudseg:shadow_cover": cover_percent(percent, "shadow"),
        "cloudseg:class_percent": dict(percent),
        "cloudseg:datetime_from": how,
        "processing:software": {"cloudseg": tags.get("CLOUDSEG_VERSION", __version__)},
        "processing:datetime": created,
        "processing:lineage": (
            f"Cloud and cloud-shadow classes by cloudseg with the model {model} "
            f"(measured accuracy: {accuracy})"
        ),
        "cloudseg:model": model,
        "cloudseg:model_version": tags.get("CLOUDSEG_MODEL_VERSION"),
        "cloudseg:model_accuracy": accuracy,
    }
    if (usable := _field(result, "usable_percent")) is not None:
        item.properties["cloudseg:usable_percent"] = usable
    if source is not None:
        item.properties["cloudseg:source"] = source
    if PROCESSING_SCHEMA not in item.stac_extensions:
        item.stac_extensions.append(PROCESSING_SCHEMA)
    if source_item is not None:
        item.add_link(
            pystac.Link("derived_from", _source_href(source_item), pystac.MediaType.GEOJSON,
                        f"STAC Item {source_item.id}")
        )  # fmt: skip
    return item


def item_bytes(item: pystac.Item) -> bytes:
    """The Item as JSON bytes, hrefs as built (relative ones stay relative)."""
    data = item.to_dict(include_self_link=False, transform_hrefs=False)
    return (json.dumps(data, indent=2) + "\n").encode()


def write_item(item: pystac.Item, path: Path) -> None:
    """Write the Item's JSON to ``path`` atomically."""
    from ..atomic import write_bytes

    write_bytes(Path(path).expanduser(), item_bytes(item))


# -- An ingested store's scene Items ----------------------------------------------------------
ZARR = "application/vnd+zarr"
#: The first Sentinel-2 acquisition: where the time of a scene of unknown date starts.
SENTINEL2_START = dt.datetime(2015, 6, 23, tzinfo=dt.timezone.utc)
#: Where the time of a scene of unknown date ends.
OPEN_END = dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc)


def _footprint(
    crs_wkt: str, transform: Sequence[float], shape: tuple[int, int]
) -> tuple[dict[str, Any], list[float]]:
    """A grid's footprint in WGS 84: the rectangle of its bounds, and its bbox (7 decimals).

    Args:
        crs_wkt: The grid's CRS as WKT.
        transform: Its affine transform (``a, b, c, d, e, f``).
        shape: Its ``(rows, cols)``.
    """
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.warp import transform_bounds

    rows, cols = shape
    grid = Affine(*transform)
    left, top = grid * (0, 0)
    right, bottom = grid * (cols, rows)
    west, south, east, north = transform_bounds(
        CRS.from_wkt(crs_wkt), "EPSG:4326",
        min(left, right), min(top, bottom), max(left, right), max(top, bottom),
    )  # fmt: skip
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Polygon", "coordinates": [ring]}, [
        round(v, 7) for v in (west, south, east, north)
    ]


def store_item(
    scene_id: str,
    *,
    shape: tuple[int, int],
    crs_wkt: str | None,
    transform: Sequence[float] | None,
    datetime: dt.datetime | None,
    properties: Mapping[str, Any],
    bands: Sequence[str],
    image_href: str,
    mask_href: str,
    image_dtype: str,
    image_chunks: Sequence[int],
) -> dict[str, Any]:
    """The STAC Item of a scene of an ingested store, as a JSON object (pystac).

    Geometry and bbox (the rectangle of the grid's bounds in WGS 84: not rio-stac's
    reprojected corners, which a mask's Item has) and the ``projection`` extension from
    the scene's grid, the ``eo`` bands of its imagery, and two Zarr assets: ``image``
    (``data``) and ``mask`` (``labels``). A scene of unknown date spans
    :data:`SENTINEL2_START` to :data:`OPEN_END` (``cloudseg:datetime_unknown``).

    Args:
        scene_id: The Item's id.
        shape: The scene's ``(rows, cols)``.
        crs_wkt: Its CRS as WKT; None when it is not georeferenced (no geometry).
        transform: Its affine transform (``a, b, c, d, e, f``), or None.
        datetime: When it was acquired, or None if unknown.
        properties: What the store records of it (checksum, class pixels, band
            statistics, the source's own properties).
        bands: The imagery's band names, in order.
        image_href: The imagery array's href, relative to the Item.
        mask_href: The class array's href, relative to the Item.
        image_dtype: The imagery's data type (``cloudseg:dtype``).
        image_chunks: Its Zarr chunks (``cloudseg:chunks``).
    """
    import pystac
    from pystac.extensions.eo import Band, EOExtension
    from pystac.extensions.projection import ProjectionExtension

    geometry, bbox = None, None
    if crs_wkt and transform:
        geometry, bbox = _footprint(crs_wkt, transform, shape)
    fields = dict(properties)
    if datetime is None:
        fields |= {
            "start_datetime": SENTINEL2_START.isoformat(),
            "end_datetime": OPEN_END.isoformat(),
            "cloudseg:datetime_unknown": True,
        }
    item = pystac.Item(
        id=scene_id, geometry=geometry, bbox=bbox, datetime=datetime, properties=fields
    )
    projection = ProjectionExtension.ext(item, add_if_missing=True)
    projection.shape = list(shape)
    if crs_wkt:
        from rasterio.crs import CRS

        projection.epsg = CRS.from_wkt(crs_wkt).to_epsg()
        if projection.epsg is None:
            projection.wkt2 = crs_wkt
    if transform is not None:
        projection.transform = [float(v) for v in transform]
    image = pystac.Asset(
        href=image_href, media_type=ZARR, roles=["data"], title="imagery (bands, rows, cols)",
        extra_fields={"cloudseg:dtype": image_dtype, "cloudseg:chunks": list(image_chunks)},
    )  # fmt: skip
    item.add_asset("image", image)
    EOExtension.ext(item, add_if_missing=True)
    EOExtension.ext(image).bands = [Band.create(name=b) for b in bands]
    item.add_asset(
        "mask",
        pystac.Asset(
            href=mask_href, media_type=ZARR, roles=["labels"],
            title="class values (rows, cols), 255 = ignore",
        ),
    )  # fmt: skip
    item.set_self_href(None)
    return item.to_dict(include_self_link=False, transform_hrefs=False)


# -- Collections -------------------------------------------------------------------------------
#: A Collection's extent where it has no Item with a bbox.
WHOLE_EARTH = (-180.0, -90.0, 180.0, 90.0)


def collection_dict(
    collection_id: str,
    description: str,
    links: Sequence[Mapping[str, str]],
    boxes: Sequence[Sequence[float]],
    times: Sequence[dt.datetime],
    empty_interval: Sequence[dt.datetime | None],
    title: str | None = None,
    summaries: Mapping[str, Any] | None = None,
    extra_fields: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A STAC Collection (pystac) as a JSON object: the one builder of cloudseg's Collections.

    Args:
        collection_id: Its id.
        description: What it holds.
        links: Its ``item`` links (``rel``, ``href``, ``type`` and maybe ``title``), in order.
        boxes: The Items' bboxes; the extent covers them (the whole Earth without any).
        times: The Items' datetimes; the extent spans them (``empty_interval`` without any).
        empty_interval: The temporal extent of a Collection without datetimes.
        title: Its title, if any.
        summaries: Property summaries: a list of values, or a ``pystac.RangeSummary``.
        extra_fields: Fields of its own (``cloudseg``, ``cloudseg:scheme``), set last.
    """
    import pystac

    bbox = (
        [min(b[0] for b in boxes), min(b[1] for b in boxes),
         max(b[2] for b in boxes), max(b[3] for b in boxes)]
        if boxes else list(WHOLE_EARTH)
    )  # fmt: skip
    ordered = sorted(times)
    interval = [ordered[0], ordered[-1]] if ordered else list(empty_interval)
    collection = pystac.Collection(
        id=collection_id,
        title=title,
        description=description,
        extent=pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([interval])),
        license="other",
    )
    for key, summary in (summaries or {}).items():
        collection.summaries.add(key, summary)
    data = collection.to_dict(include_self_link=False, transform_hrefs=False)
    data["links"] = [link for link in data["links"] if link["rel"] != "root"]
    data["links"] += [dict(link) for link in links]
    data.update(extra_fields or {})
    return data


def mask_collection(
    collection_id: str, scenes: Sequence[Mapping[str, Any]], item_suffix: str
) -> dict[str, Any]:
    """The Collection of a batch's masks: a link to each scene's Item, and their extent.

    Args:
        collection_id: Its id (the output folder's name, made an id by :func:`stac_id`).
        scenes: Per scene (the batch's records): ``scene`` (its id, and its files' name),
            ``bbox``, ``datetime`` (ISO text or None) and ``cloud_percent``.
        item_suffix: What follows a scene's name in its Item's file name.
    """
    import pystac

    now = dt.datetime.now(dt.timezone.utc)
    covers = [s["cloud_percent"] for s in scenes if s.get("cloud_percent") is not None]
    links = [
        {"rel": "item", "href": f"./{href_of(str(s['scene']))}{item_suffix}",
         "type": pystac.MediaType.GEOJSON.value, "title": str(s["scene"])}
        for s in scenes
    ]  # fmt: skip
    return collection_dict(
        collection_id,
        "Cloud and cloud-shadow masks made by cloudseg segment-batch, one STAC Item per "
        "scene (eo:cloud_cover: the share of the data pixels that are cloud).",
        links,
        [s["bbox"] for s in scenes],
        [t for s in scenes if (t := parse_time(str(s.get("datetime", ""))))],
        [now, now],
        title=f"cloudseg masks of {collection_id}",
        summaries={"eo:cloud_cover": pystac.RangeSummary(min(covers), max(covers))}
        if covers
        else None,
        extra_fields={"cloudseg": __version__},
    )


__all__ = [
    "ASSETS",
    "collection_dict",
    "cover_percent",
    "href_of",
    "item_bytes",
    "mask_collection",
    "mask_item",
    "multihash",
    "parse_time",
    "scene_time",
    "stac_id",
    "store_item",
    "write_item",
]
