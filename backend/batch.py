"""Segment many scenes on a Dask cluster: ``cloudseg segment-batch`` (the orchestration).

Each scene is one Dask task; a worker keeps its model loaded between scenes
(:func:`cloudseg.backend.inference.runners.shared_runner`). The cluster is a local one
sized to the machine, or an existing one (``scheduler``): :mod:`.dask_cluster`. The
inputs and the scenes they name: :mod:`.batch_scenes`. The output is a folder or an S3
prefix behind one storage interface (:mod:`.store.storage`: files published whole from
a staging folder, checksums, the lock). Per scene it holds ``<scene>.tif`` (the class
raster), ``<scene>.stac.json`` (its STAC Item, :mod:`.inference.stac_item`:
``eo:cloud_cover``, classes, checksum, model; ``derived_from`` the input's Item) and
``<scene>.json`` (its record: status, model, seconds, cloud and shadow %, the run's
settings key, the input's identity and the mask's checksum); for the run a manifest
``manifest.json`` (every scene's record) and a STAC Collection ``collection.json``
(:func:`~.inference.stac_item.mask_collection`) linking every done scene's Item (also
those of earlier batches into the folder), rewritten with the manifest as scenes finish.
A scene's name is its Item's id and its files' name (:func:`.batch_scenes.check_scene_name`,
:func:`~.inference.stac_item.stac_id`), so every href of the collection is a plain
relative URL.

Safe to re-run: a scene whose record says done with the same model and settings, the
same input (size, modification time and a hash of its first and last MiB), a mask
whose checksum is the recorded one and its STAC Item is skipped; anything else is
segmented again. A scene's record is written after its mask and Item, so a killed run
redoes only the scenes it had not finished, and the next run's collection lists every
done scene again; the next run on the folder removes what a killed one left (its staging
folders and temporary files). One batch at a time writes a local output folder (the
kernel's lock beside the manifest, :func:`cloudseg.backend.atomic.claim`, which a killed
batch lets go of), and files there that no batch wrote (``p.tif`` without a record) are
never replaced unless ``overwrite`` is given.

Failures stay local: a scene whose input is bad or cannot be read over the network
(every read has a timeout, :mod:`cloudseg.backend.network`) is recorded with its
one-line reason and the others go on; an unexpected failure is retried (``retries``),
and a worker that dies loses only its scene (Dask reschedules it). An output store that
cannot be written stops the batch at once with one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .batch_records import (
    check_ownership,
    collection_id,
    earlier_done,
    kept_records,
    record_bytes,
    write_manifest,
)
from .batch_scenes import (
    COLLECTION,
    ITEM_SUFFIX,
    MANIFEST,
    BatchScene,
    check_not_input,
    check_scene_name,
    find_scenes,
    local_identity,
)
from .callbacks import CancelCallback
from .dask_cluster import LOOPBACK, dask_client, gpu_count, machine_workers, worker_environments
from .errors import CancelledError, CloudsegError
from .raster.stac_input import band_vrt

if TYPE_CHECKING:
    import pystac

    from .store.storage import Storage


class OutputStoreError(CloudsegError, OSError):
    """The batch's output folder or S3 prefix cannot be read or written."""


@dataclass
class BatchResult:
    """What a batch run did, scene by scene."""

    output: str
    manifest: str
    records: list[dict[str, Any]]
    seconds: float
    workers: int
    dashboard: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    scheduler: str | None = None
    #: The STAC Collection of every done scene's Item.
    collection: str = ""

    def counts(self) -> dict[str, int]:
        """Scenes by status (done, skipped, failed)."""
        found: dict[str, int] = {}
        for record in self.records:
            found[record["status"]] = found.get(record["status"], 0) + 1
        return found

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable data."""
        return asdict(self) | {"counts": self.counts()}


#: Options that never change a mask (column blocks give byte-identical outputs), so a
#: re-run with another value resumes rather than redoing every scene.
SAME_MASK_OPTIONS = frozenset({"max_memory_mib"})


def settings_key(options: dict[str, Any], model_sha: str) -> str:
    """A short hash of everything that changes a mask: the model file and the options."""
    kept = {name: value for name, value in options.items() if name not in SAME_MASK_OPTIONS}
    text = json.dumps({"model": model_sha, "options": kept}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class BatchOutput:
    """The run's output store (:func:`.store.storage.open_storage`: a folder or an S3 prefix).

    Its methods are the storage's; every failure to reach the store is an
    :class:`OutputStoreError` (one line): the batch stops at the first, as no scene could
    be kept.
    """

    def __init__(self, url: str, endpoint_url: str | None) -> None:
        from .store.storage import open_storage

        self.url = url.rstrip("/") or url
        with self._reaching():
            self.storage: Storage = open_storage(self.url, endpoint_url, env_file=None)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "storage":
            raise AttributeError(name)
        method = getattr(self.storage, name)

        @functools.wraps(method)
        def reaching(*args: Any, **kwargs: Any) -> Any:
            with self._reaching():
                return method(*args, **kwargs)

        return reaching

    @contextlib.contextmanager
    def _reaching(self) -> Iterator[None]:
        """Turn any failure to reach the output into one :class:`OutputStoreError`."""
        from .store.storage import explain_s3_error, is_s3_error

        try:
            yield
        except OutputStoreError:
            raise
        except CloudsegError as exc:  # StorageError: already one line
            raise OutputStoreError(f"the output {self.url}: {exc}") from None
        except Exception as exc:
            if is_s3_error(exc):
                raise OutputStoreError(f"the output {self.url}: {explain_s3_error(exc)}") from None
            if isinstance(exc, OSError):
                reason = (exc.strerror or type(exc).__name__).lower()
                raise OutputStoreError(
                    f"cannot write to the output {self.url} ({reason})"
                ) from None
            raise


def segment_scene(
    scene: BatchScene, output: str, options: dict[str, Any], key: str, endpoint_url: str | None
) -> dict[str, Any]:
    """Segment one scene into the output (a Dask task); return its record.

    A bad input (any cloudseg error, a network read that timed out) gives a ``failed``
    record with the one-line reason; an output that cannot be written gives one with
    ``store_error`` set (the batch stops); anything else raises, for Dask to retry.
    """
    if not scene.identity:
        scene = dataclasses.replace(scene, identity=local_identity(scene.source))
    record: dict[str, Any] = {
        "scene": scene.scene, "source": scene.source, "key": key, "input": scene.identity,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }  # fmt: skip
    started = time.perf_counter()
    try:
        return _segment_scene(scene, output, options, key, endpoint_url, record, started)
    except OutputStoreError as exc:
        return record | {
            "status": "failed", "error": str(exc).splitlines()[0], "store_error": True,
            "seconds": round(time.perf_counter() - started, 3),
        }  # fmt: skip


def _segment_scene(
    scene: BatchScene,
    output: str,
    options: dict[str, Any],
    key: str,
    endpoint_url: str | None,
    record: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    import pystac

    from .inference.segment import SegmentOptions, segment
    from .network import configure_gdal
    from .store.storage import fetch_scene

    configure_gdal()  # this worker's GDAL reads under the network timeouts
    destination = BatchOutput(output, endpoint_url)
    earlier = destination.read_json(f"{scene.scene}.json")
    done, redo = earlier_done(earlier, scene, key, destination)
    if done and earlier is not None:
        return earlier | {"status": "skipped", "seconds": 0.0}
    if redo:
        record["redone"] = redo
    with destination.staging() as tmp:
        folder = Path(tmp)
        try:
            if scene.bands:
                local = band_vrt(scene.scene, scene.bands, folder)
            else:
                local = fetch_scene(scene.source, folder, endpoint_url)
            run = SegmentOptions(**options, keep_runner=True, overwrite=True)
            result = segment(local, folder / f"{scene.scene}.tif", run)
        except CloudsegError as exc:
            record |= {"status": "failed", "error": str(exc).splitlines()[0]}
            record["seconds"] = round(time.perf_counter() - started, 3)
            destination.put(f"{scene.scene}.json", record_bytes(record))
            return record
        mask = folder / f"{scene.scene}.tif"
        item = _scene_item(scene, mask, result, destination)
        pct = result.class_percent
        record |= {
            "status": "done",
            "model": result.model,
            "runner": result.runner,
            "cloud_percent": item.properties["eo:cloud_cover"],
            "shadow_percent": item.properties["cloudseg:shadow_cover"],
            "class_percent": pct,
            "error": None,
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "bbox": item.bbox,
            "datetime": pystac.utils.datetime_to_str(item.datetime) if item.datetime else None,
        }
        record["output"] = destination.put(f"{scene.scene}.tif", mask)
        record["output_checksum"] = destination.checksum(f"{scene.scene}.tif")
        from .inference.stac_item import item_bytes

        record["stac_item"] = destination.put(f"{scene.scene}{ITEM_SUFFIX}", item_bytes(item))
        record["seconds"] = round(time.perf_counter() - started, 3)
        destination.put(f"{scene.scene}.json", record_bytes(record))  # last: the scene is done
    return record


def _scene_item(
    scene: BatchScene, mask: Path, result: Any, destination: BatchOutput
) -> pystac.Item:
    """The STAC Item of a scene's mask (staged in ``mask``'s folder), in the collection."""
    import pystac

    from .inference.stac_item import mask_item

    item = mask_item(
        mask,
        result,
        item_path=mask.with_name(f"{scene.scene}{ITEM_SUFFIX}"),
        item_id=scene.scene,
        source=scene.source,
        source_item=scene.item,
    )
    item.collection_id = collection_id(destination.url)
    item.add_link(pystac.Link("collection", f"./{COLLECTION}", pystac.MediaType.JSON))
    return item


def segment_batch(
    inputs: list[str],
    output: str,
    options: dict[str, Any] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    retries: int = 2,
    endpoint_url: str | None = None,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
    cancelled: CancelCallback | None = None,
    on_start: Callable[[str | None], None] | None = None,
    processes: bool = True,
    overwrite: bool = False,
) -> BatchResult:
    """Segment every input scene into ``output`` on a Dask cluster (see module doc).

    Args:
        inputs: Folders, globs, list files, STAC JSON files, S3 prefixes.
        output: A folder or ``s3://bucket/prefix``.
        options: :class:`~cloudseg.backend.inference.segment.SegmentOptions` fields
            (model, bands, resolution...), the same for every scene.
        workers: Worker processes of the local cluster (default one per GPU, else one
            per 4 cores).
        scheduler: An existing cluster: ``tcp://host:port``, ``tls://host:port`` or a
            scheduler file.
        retries: How often a scene that failed unexpectedly is tried again.
        endpoint_url: S3 endpoint (MinIO) for inputs and outputs.
        progress: Called with (scenes finished, scenes, the last record).
        cancelled: Polled between scenes; True cancels the scenes not finished.
        on_start: Called with the Dask dashboard's address once the cluster is up.
        processes: Local workers are processes (else threads of this process).
        overwrite: Replace files in the output that no earlier batch wrote (a
            ``<scene>.tif`` without its record, a ``manifest.json`` of something else).

    Raises:
        CloudsegError: For inputs that name nothing, an unknown model, an output that
            holds files of others (without ``overwrite``) or is busy with another batch,
            an output store that cannot be reached, or a cancel.
    """
    from distributed import as_completed

    from .inference.segment import SegmentOptions
    from .models.registry import load_model
    from .network import timeouts

    started = time.perf_counter()
    options = dict(options or {})
    SegmentOptions(**options)  # a bad option fails here, not on every worker
    for service in ("http", "s3"):
        timeouts(service)  # a bad network limit too
    model = options.get("model")
    sha = load_model(model).sha256 if model else "auto"
    key = settings_key(options, sha)
    count, threads = machine_workers(workers, gpus=gpu_count() if processes else 0)
    report = progress or (lambda done, total, record: None)
    stop = cancelled or (lambda: False)
    scenes = find_scenes(inputs, Path(), endpoint_url)
    if not output.startswith("s3://"):  # as workers in other folders (or hosts) see it
        output = str(Path(output).expanduser().absolute())
    check_not_input(scenes, output, inputs)
    new_folder = None if output.startswith("s3://") or Path(output).exists() else Path(output)
    # An output store that does not answer stops here, in one line.
    destination = BatchOutput(output, endpoint_url)
    # One batch at a time on a local folder (S3 has no lock); what dead ones left goes.
    with _removed_if_empty(new_folder), destination.hold(MANIFEST):
        check_ownership(destination, scenes, overwrite)
        kept = kept_records(destination, scenes)
        records: list[dict[str, Any]] = []

        def save(complete: bool) -> str:  # the manifest, and first the collection
            return write_manifest(
                destination, records, scenes, options, key, started, complete, kept
            )

        with dask_client(scheduler, count, threads, processes) as client:
            dashboard = getattr(client, "dashboard_link", None)
            address = getattr(client.scheduler, "address", None)
            port = client.scheduler_info().get("services", {}).get("dashboard")
            if not scheduler and port:  # where it listens (Dask's link may name the host)
                dashboard = f"http://{LOOPBACK}:{port}/status"
            if on_start:
                on_start(dashboard)
            futures = [
                client.submit(segment_scene, s, output, options, key, endpoint_url,
                              retries=retries, pure=False, key=f"cloudseg-{s.scene}-{key}")
                for s in scenes
            ]  # fmt: skip
            running = len(client.scheduler_info().get("workers", {})) or count
            by_future = dict(zip(futures, scenes, strict=True))
            last_write = 0.0
            for future in as_completed(futures):
                scene = by_future[future]
                try:
                    record = future.result()
                except Exception as exc:  # retried and still failing, or its worker died
                    reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    record = {"scene": scene.scene, "source": scene.source, "key": key,
                              "status": "failed", "error": reason, "seconds": None}  # fmt: skip
                if record.pop("store_error", False):
                    client.cancel(futures)
                    done = sum(r["status"] in ("done", "skipped") for r in records)
                    raise OutputStoreError(
                        f"{record['error']}; the batch stopped after {len(records)} of "
                        f"{len(scenes)} scenes ({done} finished are kept, a re-run resumes)"
                    )
                records.append(record)
                report(len(records), len(scenes), record)
                if time.monotonic() - last_write > 2:
                    save(False)
                    last_write = time.monotonic()
                if stop():
                    client.cancel(futures)
                    save(False)
                    done = sum(r["status"] in ("done", "skipped") for r in records)
                    raise CancelledError(
                        f"batch cancelled after {len(records)} of {len(scenes)} scenes; the "
                        f"{done} finished are kept and a re-run skips them"
                    )
        order = {s.scene: i for i, s in enumerate(scenes)}
        records.sort(key=lambda r: order[r["scene"]])
        manifest = save(True)
    return BatchResult(
        output=destination.url,
        manifest=manifest,
        collection=destination.location(COLLECTION),
        records=records,
        seconds=round(time.perf_counter() - started, 3),
        workers=running,
        dashboard=dashboard,
        settings={"key": key, "options": options, "threads_per_worker": threads},
        scheduler=address,
    )


@contextlib.contextmanager
def _removed_if_empty(folder: Path | None) -> Iterator[None]:
    """Remove ``folder`` (made by this run) if the run fails before writing to it."""
    try:
        yield
    except BaseException:
        if folder is not None:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
        raise


__all__ = [
    "LOOPBACK",
    "BatchOutput",
    "BatchResult",
    "BatchScene",
    "OutputStoreError",
    "check_scene_name",
    "dask_client",
    "find_scenes",
    "gpu_count",
    "machine_workers",
    "segment_batch",
    "segment_scene",
    "settings_key",
    "worker_environments",
]
