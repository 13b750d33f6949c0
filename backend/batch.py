"""Segment many scenes on a Dask cluster: ``cloudseg segment-batch``.

Each scene is one Dask task; a worker keeps its model loaded between scenes
(:func:`cloudseg.backend.inference.runners.shared_runner`). By default a
``LocalCluster`` sized to the machine runs them (one scene at a time per worker, the
cores shared out between workers so their inference threads do not fight); an existing
cluster is used with ``scheduler`` (``tcp://host:8786``, or a scheduler file).

Inputs: folders (GeoTIFFs, SAFE folders or zips, folders of band files), glob patterns,
list files (``.txt``: one input per line), STAC Items / ItemCollections / search results
(``.json``: each Item's multi-band asset, or its band assets as one VRT), and S3
prefixes of GeoTIFFs or SAFE zips (``s3://bucket/prefix/``). Outputs go to a folder or
an S3 prefix: per scene ``<scene>.tif`` (the class raster) and ``<scene>.json`` (its
record: status, model, seconds, cloud and shadow %, the run's settings key), and a run
manifest ``manifest.json`` (every scene's record).

Safe to re-run: a scene whose record says done with the same model and settings is
skipped; a scene's record is written after its mask, so a killed run redoes only the
scenes it had not finished. A scene whose input is bad is recorded with its one-line
reason and the others go on; an unexpected failure is retried (``retries``), and a
worker that dies loses only its scene (Dask reschedules it).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import glob
import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .callbacks import CancelCallback
from .errors import CancelledError, CloudsegError, InputError
from .models.cards import class_kind

MANIFEST = "manifest.json"
#: Files a folder of inputs contributes as scenes.
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt")
BAND_NAMES = ("B02", "B03", "B04", "B08", "B8A", "B11", "B12")


@dataclass(frozen=True)
class BatchScene:
    """One input scene: its id (the output's name) and where it is read from."""

    scene: str
    source: str


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

    def counts(self) -> dict[str, int]:
        """Scenes by status (done, skipped, failed)."""
        found: dict[str, int] = {}
        for record in self.records:
            found[record["status"]] = found.get(record["status"], 0) + 1
        return found

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable data."""
        return asdict(self) | {"counts": self.counts()}


# -- inputs --------------------------------------------------------------------------------
def _scene_id(path: str) -> str:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".zip", ".SAFE", *RASTER_SUFFIXES, ".TIF"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _folder_scenes(folder: Path) -> list[str]:
    """The scenes in a folder: rasters, SAFE folders and zips, folders of band files."""
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        raster = entry.is_file() and entry.suffix.lower() in (*RASTER_SUFFIXES, ".zip")
        bands = entry.is_dir() and (
            entry.suffix == ".SAFE" or any((entry / f"{b}.tif").exists() for b in BAND_NAMES)
        )
        if raster or bands:
            found.append(str(entry))
    if not found and any((folder / f"{b}.tif").exists() for b in BAND_NAMES):
        found.append(str(folder))  # the folder itself is one scene of band files
    return found


def _stac_scenes(path: Path, work: Path) -> list[BatchScene]:
    """Scenes of a STAC Item, ItemCollection or search result (a FeatureCollection)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"{path}: not JSON ({exc})") from None
    items = data.get("features", [data]) if isinstance(data, dict) else []
    scenes = []
    for item in items:
        if not isinstance(item, dict) or item.get("type") != "Feature":
            raise InputError(f"{path}: not a STAC Item or ItemCollection")
        assets = item.get("assets", {})
        bands = [(name, assets[name]["href"]) for name in BAND_NAMES if name in assets]
        if bands:
            scenes.append(BatchScene(item["id"], _band_vrt(item["id"], bands, path.parent, work)))
            continue
        data_assets = [
            a["href"] for a in assets.values()
            if "data" in a.get("roles", []) or a.get("type", "").startswith("image/tiff")
        ]  # fmt: skip
        if not data_assets:
            raise InputError(f"{path}: Item {item['id']} has no image asset (nor B02, B03...)")
        scenes.append(BatchScene(item["id"], _href(data_assets[0], path.parent)))
    return scenes


def _href(href: str, base: Path) -> str:
    if "://" in href:
        return href
    return str((base / href).resolve())


def _band_vrt(scene: str, bands: list[tuple[str, str]], base: Path, work: Path) -> str:
    """One VRT of an Item's band assets, bands named (what the band matcher reads)."""
    from osgeo import gdal

    def gdal_path(href: str) -> str:
        href = _href(href, base)
        if href.startswith("s3://"):
            return "/vsis3/" + href[5:]
        if href.startswith(("http://", "https://")):
            return "/vsicurl/" + href
        return href

    vrt = work / f"{scene}.vrt"
    dataset = gdal.BuildVRT(str(vrt), [gdal_path(h) for _, h in bands], separate=True)
    if dataset is None:
        raise InputError(f"cannot read the band assets of Item {scene}")
    for i, (name, _) in enumerate(bands, start=1):
        dataset.GetRasterBand(i).SetDescription(name)
    dataset = None
    return str(vrt)


def _s3_scenes(url: str, endpoint_url: str | None) -> list[BatchScene]:
    from .store.storage import open_storage

    storage = open_storage(url, endpoint_url, create=False)
    keys = [k for k in storage.list("") if k.lower().endswith((".tif", ".tiff", ".zip"))]
    return [BatchScene(_scene_id(k), f"{url.rstrip('/')}/{k}") for k in keys]


def find_scenes(inputs: list[str], work: Path, endpoint_url: str | None = None) -> list[BatchScene]:
    """Every scene the inputs name (see module doc), in order.

    Raises:
        InputError: For an input that names nothing, or two scenes of one id.
    """
    scenes: list[BatchScene] = []
    for spec in inputs:
        path = Path(spec).expanduser()
        if spec.startswith("s3://"):
            found = _s3_scenes(spec, endpoint_url)
        elif any(ch in spec for ch in "*?["):
            found = [BatchScene(_scene_id(p), p) for p in sorted(glob.glob(str(path)))]  # noqa: PTH207 (a pattern with its folder)
        elif path.is_dir() and path.suffix != ".SAFE":
            found = [BatchScene(_scene_id(p), p) for p in _folder_scenes(path)]
        elif path.suffix.lower() == ".json" and path.is_file():
            found = _stac_scenes(path, work)
        elif path.suffix.lower() in (".txt", ".lst") and path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            entries = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
            found = find_scenes([_href(e, path.parent) for e in entries], work, endpoint_url)
        elif path.exists():
            found = [BatchScene(_scene_id(str(path)), str(path))]
        else:
            raise InputError(f"{spec}: no such file, folder or pattern")
        if not found:
            raise InputError(f"{spec}: no scenes found (GeoTIFF, SAFE, band folder, zip)")
        scenes += found
    seen: dict[str, str] = {}
    for scene in scenes:
        if scene.scene in seen and seen[scene.scene] != scene.source:
            raise InputError(
                f"two inputs make the output {scene.scene}.tif: {seen[scene.scene]} and "
                f"{scene.source}; rename one or run them apart"
            )
        seen[scene.scene] = scene.source
    return list({s.scene: s for s in scenes}.values())


# -- one scene (runs on a worker) ----------------------------------------------------------
def settings_key(options: dict[str, Any], model_sha: str) -> str:
    """A short hash of everything that changes a mask: the model file and the options."""
    text = json.dumps({"model": model_sha, "options": options}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class _Destination:
    """Where a run's files go: a folder, or an S3 prefix (through the store storage)."""

    def __init__(self, url: str, endpoint_url: str | None) -> None:
        self.url = url.rstrip("/")
        self.s3 = url.startswith("s3://")
        self.endpoint_url = endpoint_url
        if not self.s3:
            Path(url).expanduser().mkdir(parents=True, exist_ok=True)

    @functools.cached_property
    def _storage(self) -> Any:
        """The S3 storage, opened once (one client for the scene's reads and writes)."""
        from .store.storage import open_storage

        return open_storage(self.url, self.endpoint_url, env_file=None)

    def read_json(self, name: str) -> dict[str, Any] | None:
        try:
            if self.s3:
                return json.loads(self._storage.read_bytes(name))
            return json.loads((Path(self.url).expanduser() / name).read_text(encoding="utf-8"))
        except (KeyError, OSError, ValueError):
            return None

    def exists(self, name: str) -> bool:
        if self.s3:
            return self._storage.exists(name)
        return (Path(self.url).expanduser() / name).is_file()

    def put(self, name: str, source: Path | bytes) -> str:
        """Publish a file (moved from ``source``, or these bytes) atomically."""
        from . import atomic

        if self.s3:
            data = source if isinstance(source, bytes) else source.read_bytes()
            self._storage.write_bytes(name, data)
            return f"{self.url}/{name}"
        target = Path(self.url).expanduser() / name
        if isinstance(source, bytes):
            atomic.write_bytes(target, source)
        else:
            Path(source).replace(target)
        return str(target)

    def staging(self) -> Any:
        """A temporary folder for a scene's files (on the output's file system if local)."""
        where = None if self.s3 else Path(self.url).expanduser()
        return tempfile.TemporaryDirectory(prefix=".cloudseg-batch-", dir=where)


def _fetch(source: str, folder: Path, endpoint_url: str | None) -> str:
    """A local path for ``source`` (S3 objects are downloaded into ``folder``)."""
    if not source.startswith("s3://"):
        return source
    from .store.storage import open_storage

    parent, name = source.rsplit("/", 1)
    (folder / "input").mkdir(exist_ok=True)
    local = folder / "input" / name  # apart from the outputs, which take its name
    local.write_bytes(open_storage(parent, endpoint_url, env_file=None).read_bytes(name))
    return str(local)


def segment_scene(
    scene: BatchScene, output: str, options: dict[str, Any], key: str, endpoint_url: str | None
) -> dict[str, Any]:
    """Segment one scene into the output (a Dask task); return its record.

    A bad input (any cloudseg error) gives a ``failed`` record with the one-line reason;
    anything else raises, for Dask to retry.
    """
    from .inference.segment import SegmentOptions, segment

    destination = _Destination(output, endpoint_url)
    earlier = destination.read_json(f"{scene.scene}.json")
    if (
        earlier and earlier.get("status") == "done" and earlier.get("key") == key
        and destination.exists(f"{scene.scene}.tif")
    ):  # fmt: skip
        return earlier | {"status": "skipped", "seconds": 0.0}
    started = time.perf_counter()
    record: dict[str, Any] = {
        "scene": scene.scene, "source": scene.source, "key": key,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }  # fmt: skip
    with destination.staging() as tmp:
        folder = Path(tmp)
        try:
            local = _fetch(scene.source, folder, endpoint_url)
            run = SegmentOptions(**options, keep_runner=True, overwrite=True)
            result = segment(local, folder / f"{scene.scene}.tif", run)
        except CloudsegError as exc:
            record |= {"status": "failed", "error": str(exc).splitlines()[0]}
            record["seconds"] = round(time.perf_counter() - started, 3)
            destination.put(f"{scene.scene}.json", _record_bytes(record))
            return record
        pct = result.class_percent
        record |= {
            "status": "done",
            "model": result.model,
            "runner": result.runner,
            "cloud_percent": round(sum(v for k, v in pct.items() if class_kind(k) == "cloud"), 3),
            "shadow_percent": round(sum(v for k, v in pct.items() if class_kind(k) == "shadow"), 3),
            "class_percent": pct,
            "error": None,
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        record["output"] = destination.put(f"{scene.scene}.tif", folder / f"{scene.scene}.tif")
        record["seconds"] = round(time.perf_counter() - started, 3)
        destination.put(f"{scene.scene}.json", _record_bytes(record))  # last: the scene is done
    return record


def _record_bytes(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()


# -- the run -------------------------------------------------------------------------------
def gpu_count() -> int:
    """NVIDIA GPUs on this machine (NVML), 0 where there are none or no driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no library, no driver, no GPU: the CPU runs the models
        return 0


def machine_workers(
    workers: int | None, cores: int | None = None, gpus: int = 0
) -> tuple[int, int]:
    """(workers, inference threads per worker) for a local cluster.

    By default one worker per GPU where there are GPUs, else one per 4 cores. Each
    worker runs one scene at a time; its inference uses its share of the cores.
    """
    if cores is None:
        affinity = getattr(os, "sched_getaffinity", None)
        cores = len(affinity(0)) if affinity else os.cpu_count() or 1
    if workers is not None and workers < 1:
        raise InputError(f"--workers {workers}: give at least 1")
    count = workers or gpus or max(1, cores // 4)
    return count, max(1, cores // count)


def worker_environments(workers: int, threads: int, gpus: int) -> list[dict[str, str]]:
    """Each local worker's environment: its share of the cores, and its own GPU.

    With GPUs, worker i sees GPU ``i % gpus`` alone (``CUDA_VISIBLE_DEVICES``), so
    every GPU segments one scene at a time.
    """
    base = {"CLOUDSEG_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    if not gpus:
        return [dict(base) for _ in range(workers)]
    return [base | {"CUDA_VISIBLE_DEVICES": str(i % gpus)} for i in range(workers)]


@contextlib.contextmanager
def dask_client(
    scheduler: str | None, workers: int, threads: int, processes: bool = True
) -> Iterator[Any]:
    """A Dask client: of an existing cluster (``scheduler``), else of a LocalCluster.

    The local cluster's workers are processes, or threads of this one (``processes``
    False: inside QGIS, whose interpreter cannot start worker processes).
    """
    from distributed import Client, LocalCluster

    if scheduler:
        client = (
            Client(scheduler_file=scheduler) if Path(scheduler).is_file() else Client(scheduler)
        )
        try:
            yield client
        finally:
            client.close()
        return
    if processes:  # one process per worker, one scene at a time each (and per GPU)
        from distributed import Nanny, Scheduler, SpecCluster

        environments = worker_environments(workers, threads, gpu_count())
        spec = {
            i: {"cls": Nanny, "options": {"nthreads": 1, "env": env, "silence_logs": 40}}
            for i, env in enumerate(environments)
        }
        scheduler_spec = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
        cluster: Any = SpecCluster(workers=spec, scheduler=scheduler_spec, silence_logs=40)
    else:  # one worker of ``workers`` threads in this process
        cluster = LocalCluster(
            processes=False, n_workers=1, threads_per_worker=workers,
            dashboard_address=":0", silence_logs=40,
        )  # fmt: skip
    with cluster, Client(cluster) as client:
        yield client


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
) -> BatchResult:
    """Segment every input scene into ``output`` on a Dask cluster (see module doc).

    Args:
        inputs: Folders, globs, list files, STAC JSON files, S3 prefixes.
        output: A folder or ``s3://bucket/prefix``.
        options: :class:`~cloudseg.backend.inference.segment.SegmentOptions` fields
            (model, bands, resolution...), the same for every scene.
        workers: Worker processes of the local cluster (default one per GPU, else one
            per 4 cores).
        scheduler: An existing cluster: ``tcp://host:port`` or a scheduler file.
        retries: How often a scene that failed unexpectedly is tried again.
        endpoint_url: S3 endpoint (MinIO) for inputs and outputs.
        progress: Called with (scenes finished, scenes, the last record).
        cancelled: Polled between scenes; True cancels the scenes not finished.
        on_start: Called with the Dask dashboard's address once the cluster is up.
        processes: Local workers are processes (else threads of this process).

    Raises:
        CloudsegError: For inputs that name nothing, an unknown model, or a cancel.
    """
    from distributed import as_completed

    from .inference.segment import SegmentOptions
    from .models.registry import load_model

    started = time.perf_counter()
    options = dict(options or {})
    SegmentOptions(**options)  # a bad option fails here, not on every worker
    model = options.get("model")
    sha = load_model(model).sha256 if model else "auto"
    key = settings_key(options, sha)
    count, threads = machine_workers(workers, gpus=gpu_count() if processes else 0)
    report = progress or (lambda done, total, record: None)
    stop = cancelled or (lambda: False)
    with tempfile.TemporaryDirectory(prefix="cloudseg-batch-") as work:
        scenes = find_scenes(inputs, Path(work), endpoint_url)
        destination = _Destination(output, endpoint_url)
        _check_not_input(scenes, output)
        records: list[dict[str, Any]] = []
        with dask_client(scheduler, count, threads, processes) as client:
            dashboard = getattr(client, "dashboard_link", None)
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
                records.append(record)
                report(len(records), len(scenes), record)
                if time.monotonic() - last_write > 2:
                    _write_manifest(destination, records, scenes, options, key, started, False)
                    last_write = time.monotonic()
                if stop():
                    client.cancel(futures)
                    _write_manifest(destination, records, scenes, options, key, started, False)
                    done = sum(r["status"] in ("done", "skipped") for r in records)
                    raise CancelledError(
                        f"batch cancelled after {len(records)} of {len(scenes)} scenes; the "
                        f"{done} finished are kept and a re-run skips them"
                    )
        order = {s.scene: i for i, s in enumerate(scenes)}
        records.sort(key=lambda r: order[r["scene"]])
        manifest = _write_manifest(destination, records, scenes, options, key, started, True)
    return BatchResult(
        output=destination.url,
        manifest=manifest,
        records=records,
        seconds=round(time.perf_counter() - started, 3),
        workers=running,
        dashboard=dashboard,
        settings={"key": key, "options": options, "threads_per_worker": threads},
    )


def _check_not_input(scenes: list[BatchScene], output: str) -> None:
    """No output may be an input: refuse an output folder holding an input scene."""
    if output.startswith("s3://"):
        for scene in scenes:
            if scene.source.rsplit("/", 1)[0].rstrip("/") == output.rstrip("/") and (
                scene.source.endswith(f"/{scene.scene}.tif")
            ):
                raise InputError(f"the output {output} holds the input {scene.source}")
        return
    folder = Path(output).expanduser().resolve()
    for scene in scenes:
        if "://" in scene.source:
            continue
        if Path(scene.source).resolve() == folder / f"{scene.scene}.tif":
            raise InputError(
                f"the output {folder / (scene.scene + '.tif')} would replace its input; "
                "choose another output folder"
            )


def _write_manifest(
    destination: _Destination,
    records: list[dict[str, Any]],
    scenes: list[BatchScene],
    options: dict[str, Any],
    key: str,
    started: float,
    complete: bool,
) -> str:
    from ._version import __version__

    data = {
        "cloudseg": __version__,
        "complete": complete,
        "scenes": len(scenes),
        "key": key,
        "options": options,
        "seconds": round(time.perf_counter() - started, 3),
        "written": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "records": records,
    }
    return destination.put(MANIFEST, (json.dumps(data, indent=2, default=str) + "\n").encode())


__all__ = ["BatchResult", "BatchScene", "find_scenes", "segment_batch", "segment_scene"]
