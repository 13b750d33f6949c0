"""Segment many scenes on a Dask cluster: ``cloudseg segment-batch``.

Each scene is one Dask task; a worker keeps its model loaded between scenes
(:func:`cloudseg.backend.inference.runners.shared_runner`). By default a local cluster
sized to the machine runs them (one scene at a time per worker, the cores shared out
between workers so their inference threads do not fight); an existing cluster is used
with ``scheduler`` (``tcp://host:8786``, ``tls://host:8786`` or a scheduler file).

Inputs: folders (GeoTIFFs, SAFE folders or zips, folders of band files), glob patterns,
list files (``.txt``: one input per line), STAC Items / ItemCollections / search results
(``.json``: each Item's multi-band asset, or its band assets as one VRT), and S3
prefixes of GeoTIFFs or SAFE zips (``s3://bucket/prefix/``). Outputs go to a folder or
an S3 prefix: per scene ``<scene>.tif`` (the class raster), ``<scene>.stac.json`` (its
STAC Item, :mod:`cloudseg.backend.inference.stac_item`: ``eo:cloud_cover``, classes,
checksum, model; ``derived_from`` the input's Item) and ``<scene>.json`` (its record:
status, model, seconds, cloud and shadow %, the run's settings key, the input's identity
and the mask's checksum), a run manifest ``manifest.json`` (every scene's record) and a
STAC Collection ``collection.json`` linking every done scene's Item (also those of
earlier batches into the folder), rewritten with the manifest as scenes finish. No scene
may be named ``manifest`` or ``collection``, end in ``.stac``, nor be anything that is
not a plain file name. A scene's name is its Item's id and its files' name, by the one
id rule of :func:`~cloudseg.backend.inference.stac_item.stac_id`: the input ``h#ash.tif``
or ``my scene.tif`` gives ``h_ash.tif`` or ``my_scene.tif`` (the record keeps the
source), so every href of the collection is a plain relative URL that pystac, GDAL and
a web server read alike.

Safe to re-run: a scene whose record says done with the same model and settings, the
same input (size, modification time and a hash of its first and last MiB), a mask
whose checksum is the recorded one and its STAC Item is skipped; anything else is
segmented again. A scene's record is written after its mask and Item, so a killed run
redoes only the scenes it had not finished, and the next run's collection lists every
done scene again; the next run on the folder removes what a killed one left (its staging
folders and temporary files). One batch at a time writes a local output folder (a lock
beside the manifest), and files there that no batch wrote (``p.tif`` without a record)
are never replaced unless ``overwrite`` is given.

Failures stay local: a scene whose input is bad or cannot be read over the network
(every read has a timeout, :mod:`cloudseg.backend.network`) is recorded with its
one-line reason and the others go on; an unexpected failure is retried (``retries``),
and a worker that dies loses only its scene (Dask reschedules it). An output store that
cannot be written stops the batch at once with one line. The local cluster listens on
the loopback interface only, with TLS and a key made for the run where
``cryptography`` is installed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import file_sha256
from .callbacks import CancelCallback
from .errors import CancelledError, CloudsegError, InputError, OutputExistsError
from .metadata_files import read_json, read_text
from .raster.stac_input import (
    BAND_ASSETS,
    SourceItem,
    band_vrt,
    is_item_input,
    read_items,
    resolve_href,
)

if TYPE_CHECKING:
    import pystac

MANIFEST = "manifest.json"
#: The STAC Collection of the batch's masks (every done scene's Item).
COLLECTION = "collection.json"
#: A scene's STAC Item: ``<scene>.stac.json``, beside its mask and record.
ITEM_SUFFIX = ".stac.json"
#: A scene's files in the output: its mask, record and STAC Item.
SCENE_FILES = (".tif", ".json", ITEM_SUFFIX)
#: Scene names no scene may take: its files would replace the batch's own.
RESERVED_NAMES = ("manifest", "collection")
#: Files a folder of inputs contributes as scenes.
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt")
BAND_NAMES = BAND_ASSETS
#: Where the local cluster listens: this machine only.
LOOPBACK = "127.0.0.1"
#: A scene's staging folder in the output folder: host and process id of its writer.
STAGING_PREFIX = ".cloudseg-batch-"
_STAGING = re.compile(r"^\.cloudseg-batch-(?P<host>.+)-(?P<pid>\d+)-[^-]+$")
_TEMPORARY_FILE = re.compile(r"^\.(?P<name>.+)\.\d+-[0-9a-f]{8}\.(?:part|cog)(?:\.gpkg)?$")
#: Bytes hashed at each end of an input file for its identity.
_IDENTITY_BYTES = 1 << 20


class OutputStoreError(CloudsegError, OSError):
    """The batch's output folder or S3 prefix cannot be read or written."""


@dataclass(frozen=True)
class BatchScene:
    """One input scene: its id (the output's name) and where it is read from.

    Attributes:
        scene: The scene's name; its outputs are ``<scene>.tif`` and ``<scene>.json``.
        source: A path or URL, or for an Item's band assets the Item (``items.json#id``).
        identity: What the input is (sizes, modification times, hashes): a re-run
            redoes a scene whose input changed.
        bands: An Item's band assets, ``(band, href)``, made into one VRT where the
            scene is segmented.
        item: The STAC Item the scene is read from (its mask's Item derives from it).
    """

    scene: str
    source: str
    identity: str = ""
    bands: tuple[tuple[str, str], ...] = ()
    item: SourceItem | None = None


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


# -- inputs --------------------------------------------------------------------------------
def _scene_id(path: str) -> str:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".zip", ".SAFE", *RASTER_SUFFIXES, ".TIF"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def check_scene_name(scene: str, source: str) -> None:
    """Refuse a scene name that cannot be an output's file name in the batch's folder.

    Raises:
        InputError: For an empty, hidden or path-like name, or a reserved one.
    """
    plain = (
        isinstance(scene, str) and scene.strip() == scene and scene not in ("", ".", "..")
        and not scene.startswith(".") and len(scene.encode()) <= 200
        and not any(ch in scene for ch in '/\\:*?"<>|') and scene.isprintable()
    )  # fmt: skip
    if not plain:
        raise InputError(
            f"{source}: the scene name {scene!r} cannot be a file name (no path separators, "
            "no leading dot, printable, 200 bytes at most); rename the input or the Item"
        )
    if scene.casefold() in RESERVED_NAMES:
        raise InputError(
            f"{source}: a scene named {scene!r} would overwrite the batch's "
            f"{scene.casefold()}.json; rename the input or the Item"
        )
    if scene.casefold().endswith(ITEM_SUFFIX[:-5]):
        raise InputError(
            f"{source}: a scene named {scene!r} would overwrite the STAC Item of the scene "
            f"{scene[: -len(ITEM_SUFFIX) + 5]!r}; rename the input or the Item"
        )


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


def _stac_scenes(source: str) -> list[BatchScene]:
    """Scenes of a STAC Item, ItemCollection or search result (a file or an http(s) URL).

    The Items' assets are chosen by the one rule of :mod:`.raster.stac_input`. Nothing
    else is read over the network here: an Item's band assets are opened (and made one
    VRT) where the scene is segmented, so an asset server that does not answer fails
    that scene alone, within the network timeouts.
    """
    scenes = []
    for item in read_items(source):
        check_scene_name(item.id, f"{source} Item")
        identity = _digest([item.text, *(_local_identity(h) for h in item.hrefs())])
        if item.bands:
            where = f"{source}#{item.id}"
            scenes.append(BatchScene(item.id, where, identity, item.bands, item))
        else:
            assert item.image is not None
            scenes.append(BatchScene(item.id, item.image, identity, item=item))
    return scenes


def _s3_scenes(url: str, endpoint_url: str | None) -> list[BatchScene]:
    from .store.storage import open_storage

    storage = open_storage(url, endpoint_url, create=False)
    details = storage.list_details("")
    keys = [k for k in details if k.lower().endswith((".tif", ".tiff", ".zip"))]
    return [
        BatchScene(_scene_id(k), f"{url.rstrip('/')}/{k}", _digest(["s3", *map(str, details[k])]))
        for k in keys
    ]


def _digest(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _file_identity(path: Path) -> str:
    """Size, modification time and a hash of the first and last MiB of a file."""
    stat = path.stat()
    digest = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    with path.open("rb") as handle:
        digest.update(handle.read(_IDENTITY_BYTES))
        if stat.st_size > 2 * _IDENTITY_BYTES:
            handle.seek(-_IDENTITY_BYTES, os.SEEK_END)
        digest.update(handle.read(_IDENTITY_BYTES))
    return digest.hexdigest()


def _local_identity(source: str) -> str:
    """The identity of a local file or folder (every file in it); a URL stands for itself."""
    path = Path(source)
    if "://" in source or source.startswith("/vsi"):
        return source
    try:
        if path.is_file():
            return _file_identity(path)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            return _digest([f"{p.relative_to(path)}:{_file_identity(p)}" for p in files])
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    return "missing"


def find_scenes(inputs: list[str], work: Path, endpoint_url: str | None = None) -> list[BatchScene]:
    """Every scene the inputs name (see module doc), in order.

    Args:
        inputs: Folders, patterns, list files, STAC files, S3 prefixes.
        work: Unused; kept for callers of earlier versions.
        endpoint_url: The S3 endpoint of ``s3://`` inputs.

    Raises:
        InputError: For an input that names nothing, two scenes of one output name
            (letter case aside), or a scene name that cannot be an output's.
    """
    del work
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
            found = _stac_scenes(str(path))
        elif spec.startswith(("http://", "https://")) and is_item_input(spec):
            found = _stac_scenes(spec)
        elif path.suffix.lower() in (".txt", ".lst") and path.is_file():
            lines = read_text(path).splitlines()  # within the metadata limit
            entries = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
            found = find_scenes([resolve_href(e, str(path)) for e in entries], Path(), endpoint_url)
        elif path.exists():
            found = [BatchScene(_scene_id(str(path)), str(path))]
        else:
            raise InputError(f"{spec}: no such file, folder or pattern")
        if not found:
            raise InputError(f"{spec}: no scenes found (GeoTIFF, SAFE, band folder, zip)")
        scenes += found
    from .inference.stac_item import stac_id

    seen: dict[str, BatchScene] = {}
    for i, scene in enumerate(scenes):
        check_scene_name(scene.scene, scene.source)
        # The scene names its files and is its Item's id: characters an href would
        # have to percent-encode (a space, '#', '%') become '_'.
        scene = scenes[i] = dataclasses.replace(scene, scene=stac_id(scene.scene))
        other = seen.get(scene.scene.casefold())
        if other is not None and other.source != scene.source:
            raise InputError(
                f"two inputs make the output {scene.scene}.tif: {other.source} and "
                f"{scene.source}; rename one or run them apart"
            )
        seen[scene.scene.casefold()] = scene
    unique = list({s.scene.casefold(): s for s in scenes}.values())
    return [s if s.identity else _absolute(s) for s in unique]


def _absolute(scene: BatchScene) -> BatchScene:
    """The scene with its path absolute (workers have their own cwd).

    Its identity is taken on the worker (:func:`segment_scene`), in parallel, from the
    files it reads anyway.
    """
    source = scene.source
    if "://" not in source and not source.startswith("/vsi"):
        source = str(Path(source).expanduser().absolute())
    return dataclasses.replace(scene, source=source)


# -- where the outputs go ------------------------------------------------------------------
#: Options that never change a mask (column blocks give byte-identical outputs), so a
#: re-run with another value resumes rather than redoing every scene.
SAME_MASK_OPTIONS = frozenset({"max_memory_mib"})


def settings_key(options: dict[str, Any], model_sha: str) -> str:
    """A short hash of everything that changes a mask: the model file and the options."""
    kept = {name: value for name, value in options.items() if name not in SAME_MASK_OPTIONS}
    text = json.dumps({"model": model_sha, "options": kept}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class _Destination:
    """Where a run's files go: a folder, or an S3 prefix (through the store storage).

    Every failure to reach it is an :class:`OutputStoreError` (one line): the batch
    stops at the first, as no scene could be kept.
    """

    def __init__(self, url: str, endpoint_url: str | None) -> None:
        self.url = url.rstrip("/") or url
        self.s3 = url.startswith("s3://")
        self.endpoint_url = endpoint_url
        if not self.s3:
            with self._reaching():
                self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def folder(self) -> Path:
        """The local output folder (not for S3)."""
        return Path(self.url).expanduser()

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

    @functools.cached_property
    def _storage(self) -> Any:
        """The S3 storage, opened once (one client for the scene's reads and writes)."""
        from .store.storage import open_storage

        with self._reaching():
            return open_storage(self.url, self.endpoint_url, env_file=None)

    def open(self) -> None:
        """Reach the output now (S3: the bucket answers and the credentials work)."""
        if self.s3:
            self._storage  # noqa: B018 (opening checks the bucket)

    def names(self) -> set[str]:
        """The names of the files directly in the output."""
        with self._reaching():
            if self.s3:
                return {k for k in self._storage.list("") if "/" not in k}
            return {p.name for p in self.folder.iterdir()}

    def read_json(self, name: str) -> dict[str, Any] | None:
        """A JSON object of the output, None where absent or not a JSON object."""
        with self._reaching():
            try:
                if self.s3:
                    data = json.loads(self._storage.read_bytes(name))
                else:  # within the metadata limit: a foreign file there is not read whole
                    data = read_json(self.folder / name)
            except (KeyError, FileNotFoundError, IsADirectoryError, ValueError):
                return None
        return data if isinstance(data, dict) else None

    def checksum(self, name: str) -> str | None:
        """What identifies a file's content: SHA-256 (folder) or ETag (S3); None if absent."""
        with self._reaching():
            if self.s3:
                tag = self._storage.etag(name)
                return f"etag:{tag}" if tag else None
            path = self.folder / name
            return f"sha256:{file_sha256(path)}" if path.is_file() else None

    def location(self, name: str) -> str:
        """Where a file of the output is: its path, or its ``s3://`` URL."""
        return f"{self.url}/{name}" if self.s3 else str(self.folder / name)

    def put(self, name: str, source: Path | bytes) -> str:
        """Publish a file (moved from ``source``, or these bytes) atomically."""
        from . import atomic

        with self._reaching():
            if self.s3:
                data = source if isinstance(source, bytes) else source.read_bytes()
                self._storage.write_bytes(name, data)
                return f"{self.url}/{name}"
            target = self.folder / name
            if isinstance(source, bytes):
                atomic.write_bytes(target, source)
            else:
                Path(source).replace(target)
            return str(target)

    def staging(self) -> Any:
        """A temporary folder for a scene's files (on the output's file system if local).

        Its name carries this host and process, so that a later run can remove it
        if this process dies (:func:`_remove_leftovers`).
        """
        where = None if self.s3 else self.folder
        prefix = f"{STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-"
        with self._reaching():
            return tempfile.TemporaryDirectory(prefix=prefix, dir=where)


# -- one scene (runs on a worker) ----------------------------------------------------------
def _earlier_done(
    earlier: dict[str, Any] | None, scene: BatchScene, key: str, destination: _Destination
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


def segment_scene(
    scene: BatchScene, output: str, options: dict[str, Any], key: str, endpoint_url: str | None
) -> dict[str, Any]:
    """Segment one scene into the output (a Dask task); return its record.

    A bad input (any cloudseg error, a network read that timed out) gives a ``failed``
    record with the one-line reason; an output that cannot be written gives one with
    ``store_error`` set (the batch stops); anything else raises, for Dask to retry.
    """
    if not scene.identity:
        scene = dataclasses.replace(scene, identity=_local_identity(scene.source))
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
    destination = _Destination(output, endpoint_url)
    earlier = destination.read_json(f"{scene.scene}.json")
    done, redo = _earlier_done(earlier, scene, key, destination)
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
            destination.put(f"{scene.scene}.json", _record_bytes(record))
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
        local_sum = f"sha256:{file_sha256(mask)}"
        record["output"] = destination.put(f"{scene.scene}.tif", mask)
        record["output_checksum"] = (
            destination.checksum(f"{scene.scene}.tif") if destination.s3 else local_sum
        )
        from .inference.stac_item import item_bytes

        record["stac_item"] = destination.put(f"{scene.scene}{ITEM_SUFFIX}", item_bytes(item))
        record["seconds"] = round(time.perf_counter() - started, 3)
        destination.put(f"{scene.scene}.json", _record_bytes(record))  # last: the scene is done
    return record


def _scene_item(
    scene: BatchScene, mask: Path, result: Any, destination: _Destination
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


def _local_security() -> Any:
    """TLS with a key and certificate made for this run, or None without ``cryptography``.

    With it, only this process and its workers hold the key: another user of the machine
    cannot join the cluster or run code in its workers, although it listens on loopback.
    """
    try:
        from distributed.security import Security

        return Security.temporary()
    except ImportError:  # cryptography is not installed: loopback alone
        return None


def _quiet_dask() -> None:
    """Dask's own logging: errors in the workers are reported as scene records instead."""
    for name in ("distributed", "tornado", "bokeh"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


@contextlib.contextmanager
def dask_client(
    scheduler: str | None, workers: int, threads: int, processes: bool = True
) -> Iterator[Any]:
    """A Dask client: of an existing cluster (``scheduler``), else of a local cluster.

    The local cluster listens on ``127.0.0.1`` only (scheduler, workers, dashboard), with
    TLS where ``cryptography`` is installed; its workers are processes, or threads of
    this one (``processes`` False: inside QGIS, whose interpreter cannot start worker
    processes; they then talk in memory, with no port at all). An existing cluster is
    reached with Dask's own security configuration (``distributed.comm.tls``: see
    docs/batch.md).

    Raises:
        InputError: If the scheduler cannot be reached or refuses the connection.
    """
    from distributed import Client, LocalCluster

    silent = logging.CRITICAL
    if scheduler:
        try:
            client = (
                Client(scheduler_file=scheduler) if Path(scheduler).is_file() else Client(scheduler)
            )
        except Exception as exc:  # OSError, TimeoutError, ssl and TypeError for TLS set-ups
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(
                f"cannot reach the Dask scheduler {scheduler} ({reason}); check the address, "
                "and for tls:// the certificates in Dask's distributed.comm.tls settings "
                "(see docs/batch.md)"
            ) from None
        try:
            yield client
        finally:
            client.close()
        return
    if processes:  # one process per worker, one scene at a time each (and per GPU)
        from distributed import Nanny, Scheduler, SpecCluster

        security = _local_security()
        protocol = "tls://" if security else "tcp://"
        listen = {"host": LOOPBACK, "protocol": protocol, "security": security}
        environments = worker_environments(workers, threads, gpu_count())
        spec = {
            i: {"cls": Nanny, "options": listen | {
                "nthreads": 1, "env": env, "silence_logs": silent,
                "dashboard_address": f"{LOOPBACK}:0",
            }}
            for i, env in enumerate(environments)
        }  # fmt: skip
        scheduler_spec = {
            "cls": Scheduler,
            "options": listen | {"dashboard_address": f"{LOOPBACK}:0"},
        }
        cluster: Any = SpecCluster(
            workers=spec, scheduler=scheduler_spec, silence_logs=silent, security=security
        )
    else:  # one worker of ``workers`` threads in this process, in memory (inproc://)
        cluster = LocalCluster(
            processes=False, n_workers=1, threads_per_worker=workers,
            dashboard_address=f"{LOOPBACK}:0", worker_dashboard_address=f"{LOOPBACK}:0",
            silence_logs=silent,
        )  # fmt: skip
    _quiet_dask()
    with cluster, Client(cluster, security=getattr(cluster, "security", None)) as client:
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
    _check_not_input(scenes, output, inputs)
    new_folder = not output.startswith("s3://") and not Path(output).exists()
    destination = _Destination(output, endpoint_url)
    destination.open()  # an output store that does not answer stops here, in one line
    with _removed_if_empty(destination.folder if new_folder else None), _hold(destination):
        _check_ownership(destination, scenes, overwrite)
        kept = _kept_records(destination, scenes)
        records: list[dict[str, Any]] = []

        def write_manifest(complete: bool) -> str:
            return _write_manifest(
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
                    kept = sum(r["status"] in ("done", "skipped") for r in records)
                    raise OutputStoreError(
                        f"{record['error']}; the batch stopped after {len(records)} of "
                        f"{len(scenes)} scenes ({kept} finished are kept, a re-run resumes)"
                    )
                records.append(record)
                report(len(records), len(scenes), record)
                if time.monotonic() - last_write > 2:
                    _write_manifest(
                        destination, records, scenes, options, key, started, False, kept
                    )
                    last_write = time.monotonic()
                if stop():
                    client.cancel(futures)
                    _write_manifest(
                        destination, records, scenes, options, key, started, False, kept
                    )
                    done = sum(r["status"] in ("done", "skipped") for r in records)
                    raise CancelledError(
                        f"batch cancelled after {len(records)} of {len(scenes)} scenes; the "
                        f"{done} finished are kept and a re-run skips them"
                    )
        order = {s.scene: i for i, s in enumerate(scenes)}
        records.sort(key=lambda r: order[r["scene"]])
        manifest = write_manifest(True)
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
def _hold(destination: _Destination) -> Iterator[None]:
    """One batch at a time on a local output folder; remove what dead batches left there.

    The lock is the manifest's (:func:`cloudseg.backend.atomic.claim`): a second batch
    on the folder is refused with one line while the first lives, and a lock left by a
    dead one is taken over. An S3 prefix has no lock (S3 offers none to every server).

    Raises:
        OutputConflictError: If another live batch writes the folder.
    """
    from . import atomic

    if destination.s3:
        yield
        return
    with atomic.claim([destination.folder / MANIFEST]):
        _remove_leftovers(destination.folder)
        yield


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


def _remove_leftovers(folder: Path) -> None:
    """Staging folders and temporary files of dead batches on this host (a kill, a crash).

    Only processes of this host are judged: a staging folder of another host's worker
    (a cluster writing to a shared file system) is left alone.
    """
    from . import atomic

    host = socket.gethostname()
    stale_names = set()
    for entry in folder.iterdir():
        staging = _STAGING.match(entry.name)
        if staging and entry.is_dir():
            if staging["host"] == host and not _running(int(staging["pid"])):
                shutil.rmtree(entry, ignore_errors=True)
            continue
        if entry.name.startswith(STAGING_PREFIX) and entry.is_dir():  # an older run's
            owners = [atomic._lock_owner(lock) for lock in entry.glob(".*.cloudseg-lock")]
            if not any(o and (o[1] != host or _running(o[0])) for o in owners):
                shutil.rmtree(entry, ignore_errors=True)
            continue
        temporary = _TEMPORARY_FILE.match(entry.name)
        if temporary:
            stale_names.add(temporary["name"])
    for name in sorted(stale_names):
        atomic.remove(*atomic.stale_temporaries(folder / name))


def _running(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs (a killed one not yet reaped does not)."""
    from . import atomic

    if not atomic._alive(pid):
        return False
    try:
        import psutil

        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except ImportError:
        return True
    except psutil.Error:  # gone meanwhile
        return False


def _is_record(data: dict[str, Any] | None, scene: str) -> bool:
    return bool(data) and data.get("scene") == scene and "key" in data and "status" in data


def _check_ownership(destination: _Destination, scenes: list[BatchScene], overwrite: bool) -> None:
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
        if not _is_record(record, scene.scene):
            foreign += present
    if foreign:
        where = destination.url.rstrip("/")
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise OutputExistsError(
            f"{where}/{foreign[0]}{more} exists and was not written by a cloudseg batch; "
            "pass --overwrite to replace it, or choose another output folder"
        )


def _check_not_input(
    scenes: list[BatchScene], output: str, inputs: tuple[str, ...] | list[str] = ()
) -> None:
    """No output may be an input: refuse a mask, record or manifest over an input.

    Inputs are the scenes and the list or STAC files that name them.
    """
    if output.startswith("s3://"):
        for scene in scenes:
            if scene.source.rsplit("/", 1)[0].rstrip("/") == output.rstrip("/") and (
                scene.source.endswith(f"/{scene.scene}.tif")
            ):
                raise InputError(f"the output {output} holds the input {scene.source}")
        return
    folder = Path(output).expanduser().resolve()
    files = [Path(i).expanduser() for i in inputs if "://" not in i and Path(i).is_file()]
    targets = [folder / MANIFEST, folder / COLLECTION] + [
        folder / f"{s.scene}{x}" for s in scenes for x in SCENE_FILES
    ]
    for target in targets:
        for given in files:
            if given.resolve() == target or (target.exists() and _same_file(given, target)):
                raise InputError(
                    f"the output {target} would replace its input {given}; choose another "
                    "output folder"
                )
    for scene in scenes:
        if "://" in scene.source or scene.bands:
            continue
        source = Path(scene.source).resolve()
        for suffix in SCENE_FILES:
            target = folder / f"{scene.scene}{suffix}"
            if source == target or (target.exists() and _same_file(source, target)):
                raise InputError(
                    f"the output {target} would replace its input; choose another output folder"
                )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def collection_id(url: str) -> str:
    """The id of a batch's STAC Collection: the output folder's (or prefix's) name, safe."""
    from .inference.stac_item import stac_id

    return stac_id(url.rstrip("/").rsplit("/", 1)[-1], "cloudseg-masks")


def _kept_records(destination: _Destination, scenes: list[BatchScene]) -> list[dict[str, Any]]:
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
        if _is_record(record, scene) and _listed(record):
            kept.append(record)
    return kept


def _listed(record: dict[str, Any]) -> bool:
    """Whether a scene's Item belongs in the collection: done, with its Item written."""
    return record.get("status") in ("done", "skipped") and bool(
        record.get("stac_item") and record.get("bbox")
    )


def _write_collection(
    destination: _Destination, records: list[dict[str, Any]], kept: list[dict[str, Any]]
) -> str:
    """The batch's STAC Collection: a link to every done scene's Item, and their extent.

    Rewritten with the manifest as scenes finish, from the records: it lists only Items
    that are written (a scene's Item is written before its record).
    """
    import pystac

    from ._version import __version__
    from .inference.stac_item import href_of, parse_time

    entries = sorted((r for r in [*kept, *records] if _listed(r)), key=lambda r: str(r["scene"]))
    boxes = [r["bbox"] for r in entries]
    bbox = (
        [min(b[0] for b in boxes), min(b[1] for b in boxes),
         max(b[2] for b in boxes), max(b[3] for b in boxes)]
        if boxes else [-180.0, -90.0, 180.0, 90.0]
    )  # fmt: skip
    times = sorted(t for r in entries if (t := parse_time(str(r.get("datetime", "")))))
    now = dt.datetime.now(dt.timezone.utc)
    interval = [times[0], times[-1]] if times else [now, now]
    collection = pystac.Collection(
        id=collection_id(destination.url),
        title=f"cloudseg masks of {collection_id(destination.url)}",
        description="Cloud and cloud-shadow masks made by cloudseg segment-batch, one "
        "STAC Item per scene (eo:cloud_cover: the share of the data pixels that are cloud).",
        extent=pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([interval])),
        license="other",
    )
    covers = [r["cloud_percent"] for r in entries if r.get("cloud_percent") is not None]
    if covers:
        collection.summaries.add("eo:cloud_cover", pystac.RangeSummary(min(covers), max(covers)))
    for record in entries:
        collection.add_link(
            pystac.Link("item", f"./{href_of(str(record['scene']))}{ITEM_SUFFIX}",
                        pystac.MediaType.GEOJSON, str(record["scene"]))
        )  # fmt: skip
    data = collection.to_dict(include_self_link=False, transform_hrefs=False)
    data["cloudseg"] = __version__
    return destination.put(COLLECTION, (json.dumps(data, indent=2) + "\n").encode())


def _write_manifest(
    destination: _Destination,
    records: list[dict[str, Any]],
    scenes: list[BatchScene],
    options: dict[str, Any],
    key: str,
    started: float,
    complete: bool,
    kept: list[dict[str, Any]] | None = None,
) -> str:
    """Write the run's manifest, and first the STAC Collection of its done scenes.

    ``kept``: done scenes of earlier batches whose Items stay in the collection.
    """
    from ._version import __version__

    _write_collection(destination, records, kept or [])
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


__all__ = [
    "BatchResult",
    "BatchScene",
    "OutputStoreError",
    "check_scene_name",
    "find_scenes",
    "segment_batch",
    "segment_scene",
]
