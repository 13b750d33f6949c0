"""The scenes a batch's inputs name, and the names of a batch's files.

Inputs (:func:`find_scenes`): folders (GeoTIFFs, SAFE folders or zips, folders of band
files), glob patterns, list files (``.txt``: one input per line), STAC Items /
ItemCollections / search results (``.json``: each Item's multi-band asset, or its band
assets as one VRT) and S3 prefixes of GeoTIFFs or SAFE zips. A scene's name is its
output's file name and its Item's id (:func:`check_scene_name`, then
:func:`~cloudseg.backend.inference.stac_item.stac_id`); its identity (sizes, modification
times, a hash of each file's first and last MiB) tells a re-run whether it changed.
:func:`check_not_input` refuses an output that would replace an input.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .atomic import same_file
from .errors import InputError
from .metadata_files import read_text
from .raster.stac_input import (
    BAND_ASSETS,
    SourceItem,
    is_item_input,
    read_items,
    resolve_href,
)

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
#: Bytes hashed at each end of an input file for its identity.
_IDENTITY_BYTES = 1 << 20


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
        identity = _digest([item.text, *(local_identity(h) for h in item.hrefs())])
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


def local_identity(source: str) -> str:
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

    Its identity is taken on the worker (:func:`cloudseg.backend.batch.segment_scene`), in
    parallel, from the files it reads anyway.
    """
    source = scene.source
    if "://" not in source and not source.startswith("/vsi"):
        source = str(Path(source).expanduser().absolute())
    return dataclasses.replace(scene, source=source)


def check_not_input(
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
            if same_file(given, target):
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
            if same_file(source, target):
                raise InputError(
                    f"the output {target} would replace its input; choose another output folder"
                )


__all__ = [
    "BatchScene",
    "check_not_input",
    "check_scene_name",
    "find_scenes",
    "local_identity",
]
