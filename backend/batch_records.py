"""A batch's records in its output: which files are a batch's, what earlier runs finished.

A scene's record (``<scene>.json``, written last, :func:`record_bytes`) says whether its
mask may be kept (:func:`earlier_done`); the records tell a batch's files from files of
others (:func:`check_ownership`) and which Items of earlier batches stay in the
Collection (:func:`kept_records`); the manifest holds every record of the run
(:func:`write_manifest`). ``destination`` is the output's storage
(:class:`~cloudseg.backend.store.storage.Storage`).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import TYPE_CHECKING, Any

from .batch_scenes import COLLECTION, ITEM_SUFFIX, MANIFEST, SCENE_FILES, BatchScene
from .errors import OutputExistsError

if TYPE_CHECKING:
    from .store.storage import Storage


def earlier_done(
    earlier: dict[str, Any] | None, scene: BatchScene, key: str, destination: Storage
) -> tuple[bool, str | None]:
    """Whether a scene's earlier record lets it be skipped, else why it is redone."""
    if not earlier or earlier.get("status") != "done":
        return False, None
    if earlier.get("key") != key:
        return False, None  # other settings: a new mask, not a repair
    if earlier.get("input") != scene.identity:
        return False, "the input changed since its mask was made"
    recorded = earlier.get("output_checksum")
    found = destination.checksum(f"{scene.scene}.tif")
    if found is None:
        return False, "its mask is missing"
    if not recorded or found != recorded:
        return False, "its mask is not the one written (truncated or changed)"
    if not earlier.get("stac_item") or destination.checksum(f"{scene.scene}{ITEM_SUFFIX}") is None:
        return False, "its STAC Item is missing"
    return True, None


def record_bytes(record: dict[str, Any]) -> bytes:
    """A scene's record as the JSON of ``<scene>.json``."""
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()


def is_record(data: dict[str, Any] | None, scene: str) -> bool:
    """Whether ``data`` is a batch's record of ``scene``."""
    return bool(data) and data.get("scene") == scene and "key" in data and "status" in data


def check_ownership(destination: Storage, scenes: list[BatchScene], overwrite: bool) -> None:
    """Refuse to replace files in the output that no batch wrote, unless ``overwrite``.

    A ``<scene>.tif``, ``<scene>.json`` or ``<scene>.stac.json`` is the batch's own when
    ``<scene>.json`` is a scene record of that scene; ``manifest.json`` when it is a
    batch manifest, ``collection.json`` when it is a batch's STAC Collection.

    Raises:
        OutputExistsError: Naming the first foreign file and how many there are.
    """
    if overwrite:
        return
    names = destination.names()
    foreign: list[str] = []
    if MANIFEST in names:
        manifest = destination.read_json(MANIFEST)
        if not (manifest and "records" in manifest and "cloudseg" in manifest):
            foreign.append(MANIFEST)
    if COLLECTION in names:
        collection = destination.read_json(COLLECTION)
        if not (collection and collection.get("type") == "Collection" and "cloudseg" in collection):
            foreign.append(COLLECTION)
    lowered = {n.casefold(): n for n in names}
    for scene in scenes:
        mine = [lowered.get(f"{scene.scene}{s}".casefold()) for s in SCENE_FILES]
        present = [n for n in mine if n]
        if not present:
            continue
        record_name = lowered.get(f"{scene.scene}.json".casefold())
        record = destination.read_json(record_name) if record_name else None
        if not is_record(record, scene.scene):
            foreign += present
    if foreign:
        where = destination.url.rstrip("/")
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise OutputExistsError(
            f"{where}/{foreign[0]}{more} exists and was not written by a cloudseg batch; "
            "pass --overwrite to replace it, or choose another output folder"
        )


def collection_id(url: str) -> str:
    """The id of a batch's STAC Collection: the output folder's (or prefix's) name, safe."""
    from .inference.stac_item import stac_id

    return stac_id(url.rstrip("/").rsplit("/", 1)[-1], "cloudseg-masks")


def kept_records(destination: Storage, scenes: list[BatchScene]) -> list[dict[str, Any]]:
    """Done scenes of earlier batches in the output that this run does not segment.

    Their Items stay in the collection: every ``<scene>.stac.json`` whose record says
    done, taken from the earlier manifest, else from the scene's own record (a scene a
    killed batch finished after it last wrote its manifest).
    """
    names = destination.names()
    current = {s.scene.casefold() for s in scenes}
    manifest = destination.read_json(MANIFEST) or {}
    earlier = {
        r["scene"]: r
        for r in manifest.get("records", [])
        if isinstance(r, dict) and isinstance(r.get("scene"), str)
    }
    kept = []
    for name in sorted(names):
        scene = name[: -len(ITEM_SUFFIX)]
        if not name.endswith(ITEM_SUFFIX) or scene.casefold() in current:
            continue
        record = earlier.get(scene)
        if not record or record.get("status") not in ("done", "skipped"):
            record = destination.read_json(f"{scene}.json")
        if is_record(record, scene) and listed(record):
            kept.append(record)
    return kept


def listed(record: dict[str, Any]) -> bool:
    """Whether a scene's Item belongs in the collection: done, with its Item written."""
    return record.get("status") in ("done", "skipped") and bool(
        record.get("stac_item") and record.get("bbox")
    )


def write_manifest(
    destination: Storage,
    records: list[dict[str, Any]],
    scenes: list[BatchScene],
    options: dict[str, Any],
    key: str,
    started: float,
    complete: bool,
    kept: list[dict[str, Any]] | None = None,
) -> str:
    """Write the run's manifest, and first the STAC Collection of its done scenes.

    ``kept``: done scenes of earlier batches whose Items stay in the collection. The
    Collection is made with pystac: a batch run on a server from a QGIS without
    cloudseg's packages writes the manifest (``"collection": null``) and each scene's
    Item, but no Collection.
    """
    from ._version import __version__

    # First the STAC Collection: it lists only Items that are written (a scene's Item is
    # written before its record).
    items = sorted(filter(listed, [*(kept or []), *records]), key=lambda r: str(r["scene"]))
    written: str | None = COLLECTION
    try:
        from .inference.stac_item import mask_collection

        collection = mask_collection(collection_id(destination.url), items, ITEM_SUFFIX)
    except ImportError:  # no pystac here
        written = None
    else:
        destination.put(COLLECTION, (json.dumps(collection, indent=2) + "\n").encode())
    data = {
        "cloudseg": __version__,
        "complete": complete,
        "scenes": len(scenes),
        "key": key,
        "options": options,
        "seconds": round(time.perf_counter() - started, 3),
        "written": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "collection": written,
        "records": records,
    }
    return destination.put(MANIFEST, (json.dumps(data, indent=2, default=str) + "\n").encode())


__all__ = [
    "check_ownership",
    "collection_id",
    "earlier_done",
    "is_record",
    "kept_records",
    "listed",
    "record_bytes",
    "write_manifest",
]
