"""Ingest labeled scenes into a chunked Zarr + STAC store, on a local folder or S3.

The store's layout is in :mod:`.keys`: a STAC Collection, one STAC Item per scene
(written last: it makes the scene visible), the imagery and masks as chunked Zarr, and
the dataset report.

Re-running skips scenes whose Item records the same source checksum; a scene with
chunks but no Item (a run killed while writing it) is written again from scratch, so a
killed run re-run to completion ends identical to a clean one. A bad scene is reported
by name and reason and the others are ingested.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import claim
from ..callbacks import CancelCallback, CountCallback, never_cancelled
from ..errors import CancelledError, OutputConflictError
from .keys import (
    COLLECTION_KEY,
    IGNORE,
    image_key,
    item_key,
    mask_key,
    stored_items,
)
from .sources import LoadedScene, SceneError, Scheme, SourceScene, scan_source
from .storage import Storage, open_storage

logger = logging.getLogger(__name__)

CHUNK = 256


@dataclass
class IngestResult:
    """What an ingestion did."""

    store: str
    layout: str
    ingested: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    megabytes: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)


def _write_array(storage: Storage, prefix: str, data: np.ndarray, chunks: tuple[int, ...]) -> None:
    import zarr
    from numcodecs import Blosc, blosc

    # Blosc's own threads make the compressed bytes vary from run to run; without them
    # a scene always gives the same chunks, so a resumed ingestion equals a clean one.
    threads, blosc.use_threads = blosc.use_threads, False
    try:
        array = zarr.open_array(
            store=storage.mapping(prefix),
            mode="w",
            shape=data.shape,
            chunks=chunks,
            dtype=data.dtype,
            compressor=Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE),
            # A fill value also fixes the padding of edge chunks (zarr leaves it
            # uninitialised without one), so the same scene always gives the same bytes.
            fill_value=IGNORE if data.dtype == np.uint8 else 0,
            write_empty_chunks=True,
        )
        array[...] = data
    finally:
        blosc.use_threads = threads


def _band_stats(image: np.ndarray) -> list[dict[str, float]]:
    data = image.reshape(image.shape[0], -1).astype(np.float64)
    return [
        {
            "mean": round(float(b.mean()), 6),
            "std": round(float(b.std()), 6),
            "min": float(b.min()),
            "max": float(b.max()),
        }
        for b in data
    ]


def _make_item(
    scene: SourceScene, loaded: LoadedScene, scheme: Scheme, checksum: str
) -> dict[str, Any]:
    """The scene's STAC Item: what the store records of it, built by the STAC module."""
    from ..inference.stac_item import store_item

    counts = np.bincount(loaded.mask.ravel(), minlength=256)
    properties: dict[str, Any] = {
        "cloudseg:source_sha256": checksum,
        "cloudseg:class_pixels": {c["name"]: int(counts[c["value"]]) for c in scheme.classes}
        | {"ignore": int(counts[IGNORE])},
        "cloudseg:band_stats": dict(zip(scheme.bands, _band_stats(loaded.image), strict=True)),
        **loaded.properties,
    }
    return store_item(
        scene.scene_id,
        shape=loaded.mask.shape,
        crs_wkt=loaded.crs,
        transform=loaded.transform,
        datetime=loaded.datetime,
        properties=properties,
        bands=scheme.bands,
        image_href=f"../../{image_key(scene.scene_id)}",
        mask_href=f"../../{mask_key(scene.scene_id)}",
        image_dtype=str(loaded.image.dtype),
        image_chunks=[len(scheme.bands), CHUNK, CHUNK],
    )


def write_collection(
    storage: Storage, scheme: Scheme, name: str, items: list[dict[str, Any]]
) -> dict[str, Any]:
    """(Re)write the STAC Collection for ``items`` (those in the store); deterministic.

    Built by the one Collection builder, :func:`~..inference.stac_item.collection_dict`.
    """
    from ..inference.stac_item import SENTINEL2_START, collection_dict

    links = [{"rel": "item", "href": f"items/{i['id']}.json", "type": "application/json"}
             for i in items]  # fmt: skip
    data = collection_dict(
        name,
        f"Labeled cloud and cloud-shadow scenes, ingested by cloudseg ({len(items)})",
        links,
        [i["bbox"] for i in items if i.get("bbox")],
        [
            dt.datetime.fromisoformat(i["properties"]["datetime"])
            for i in items
            if i["properties"].get("datetime")
        ],
        [SENTINEL2_START, None],
        summaries={
            "eo:bands": [{"name": b} for b in scheme.bands],
            "label:classes": [{"name": None, "classes": [c["name"] for c in scheme.classes]}],
        },
        extra_fields={"cloudseg:scheme": scheme.to_json(), "cloudseg:chunk_size": CHUNK},
    )
    storage.write_bytes(
        COLLECTION_KEY, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
    )
    return data


def _check_not_nested(source: str | Path, dest: str | Path) -> None:
    """A local store may be neither the source folder, nor inside it, nor hold it.

    Raises:
        OutputConflictError: If it is.
    """
    if str(dest).startswith("s3://"):
        return
    src, out = Path(source).expanduser().resolve(), Path(dest).expanduser().resolve()
    if src == out or src in out.parents or out in src.parents:
        raise OutputConflictError(
            f"the store {dest} and the source {source} overlap; write the store to a folder "
            "outside the source (and not around it)"
        )


def _one_writer(function: Callable[..., IngestResult]) -> Callable[..., IngestResult]:
    """Hold a local store for the call: a second ingestion into it is refused meanwhile."""

    @functools.wraps(function)
    def holding(source: str | Path, dest: str | Path, *args: Any, **kwargs: Any) -> IngestResult:
        if str(dest).startswith("s3://"):
            return function(source, dest, *args, **kwargs)
        with claim([Path(dest).expanduser()]):
            return function(source, dest, *args, **kwargs)

    return holding


@_one_writer
def ingest(
    source: str | Path,
    dest: str | Path,
    layout: str | None = None,
    scheme: Scheme | None = None,
    name: str = "cloudseg-dataset",
    endpoint_url: str | None = None,
    env_file: str | Path | None = ".env",
    report: bool = True,
    progress: CountCallback | None = None,
    cancelled: CancelCallback | None = None,
) -> IngestResult:
    """Ingest a source folder into a store (local folder or ``s3://bucket/prefix``).

    Args:
        source: The source folder (see :mod:`cloudseg.backend.store.sources`).
        dest: Local folder or ``s3://bucket/prefix``.
        layout: Layout name; detected when None.
        scheme: Bands and classes; from the source's ``data.json`` (or the layout) if None.
        name: The STAC Collection id.
        endpoint_url: S3 endpoint (MinIO, ...); else from MINIO_ENDPOINT / AWS settings.
        env_file: A ``.env`` file with S3 settings, if present.
        report: Also write the dataset report (JSON and PNG plots) under ``report/``.
        progress: Called with (scenes done, scenes in all, scene name).
        cancelled: Polled between scenes; True stops the run (it can be resumed).

    Returns:
        An :class:`IngestResult` listing ingested, skipped and failed scenes.

    Raises:
        InputError: For an unusable source, or a store that cannot be reached.
        CancelledError: When cancelled; what was complete stays, the rest is not visible.
    """
    import time

    start = time.perf_counter()
    _check_not_nested(source, dest)
    found = scan_source(source, layout, scheme)
    storage = open_storage(dest, endpoint_url, env_file)
    existing = _stored_scheme(storage)
    if existing is not None and not existing.same_data(found.scheme):
        raise SceneError(
            f"{storage.url} holds a dataset with other bands or classes "
            f"({existing.bands}, {[c['name'] for c in existing.classes]}); use another destination"
        )
    result = IngestResult(store=storage.url, layout=found.layout, failed=list(found.problems))
    for name_, reason in found.problems:
        logger.info("skipped %s: %s", name_, reason)
    progress = progress or (lambda done, total, scene: None)
    cancelled = cancelled or never_cancelled
    total = len(found.scenes)
    for done, scene in enumerate(found.scenes):
        if cancelled():
            raise CancelledError("ingestion cancelled; re-run to complete it")
        progress(done, total, scene.scene_id)
        try:
            checksum = scene.checksum()
        except OSError as exc:
            result.failed.append((scene.scene_id, f"unreadable file: {exc}"))
            continue
        stored = _stored_item(storage, scene.scene_id)
        if stored is not None:
            if stored["properties"].get("cloudseg:source_sha256") == checksum:
                result.skipped.append(scene.scene_id)
                continue
            # The source changed: hide the old version before its chunks are replaced.
            storage.delete_prefix(item_key(scene.scene_id))
        try:
            loaded = scene.load()
        except SceneError as exc:
            result.failed.append((scene.scene_id, str(exc)))
            logger.warning("%s", exc)
            continue
        _write_array(
            storage, image_key(scene.scene_id), loaded.image, (loaded.image.shape[0], CHUNK, CHUNK)
        )
        _write_array(storage, mask_key(scene.scene_id), loaded.mask, (CHUNK, CHUNK))
        item = _make_item(scene, loaded, found.scheme, checksum)
        storage.write_bytes(
            item_key(scene.scene_id), (json.dumps(item, indent=2, sort_keys=True) + "\n").encode()
        )
        result.ingested.append(scene.scene_id)
        result.megabytes += (loaded.image.nbytes + loaded.mask.nbytes) / 1e6
    progress(total, total, "")
    items = stored_items(storage)
    # A store keeps the scheme it was made with (its colours, its first source's
    # mask_values): scenes added later share its bands and classes.
    write_collection(storage, existing or found.scheme, name, items)
    if report:
        from .dashboard import write_dashboard
        from .dataset import StoredDataset
        from .report import write_report

        write_report(storage, items)
        write_dashboard(StoredDataset(storage))
    result.seconds = round(time.perf_counter() - start, 3)
    result.megabytes = round(result.megabytes, 3)
    return result


def _stored_item(storage: Storage, scene_id: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_bytes(item_key(scene_id)))
    except KeyError:
        return None


def _stored_scheme(storage: Storage) -> Scheme | None:
    try:
        collection = json.loads(storage.read_bytes(COLLECTION_KEY))
    except KeyError:
        return None
    return Scheme.from_json(collection["cloudseg:scheme"], storage.url)
