"""The folder layouts people download labeled cloud data in, as a list of scenes.

- ``raw``: ``Scenes/``, ``Masks/``, optional ``Metadata/`` and a ``data.json`` with bands
  and classes (the Sentinel-2 Cloud Mask Catalogue style); GeoTIFF or ``.npy``, masks as
  class indices or one-hot.
- ``cloudsen12``: patch folders holding ``S2L1C.tif`` (or ``S2L2A.tif``) and
  ``manual_hq.tif`` (dense labels) or ``manual_sc.tif`` (scribbles).
- ``pairs``: ``images/`` and ``masks/`` with the same file stems.
- ``npz``: ``.npz`` chips holding an image and a mask array.

Every layout but ``cloudsen12`` takes its band names and classes from a ``data.json``
in the source folder (or from arguments); raw mask values can be mapped to classes with
``mask_values``. Scenes are loaded lazily and validated one by one, so one bad scene
never stops the others.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..metadata_files import read_json
from .keys import IGNORE

LAYOUTS = ("raw", "cloudsen12", "pairs", "npz")
#: Files a source layout reads scenes and masks from.
SOURCE_SUFFIXES = (".tif", ".tiff", ".npy")

CLOUDSEN12_CLASSES = [
    {"value": 0, "name": "clear", "color": "#2e7d32"},
    {"value": 1, "name": "thick cloud", "color": "#00e5ff"},
    {"value": 2, "name": "thin cloud", "color": "#80deea"},
    {"value": 3, "name": "cloud shadow", "color": "#7b1fa2"},
]
CLOUDSEN12_BANDS = ["B02", "B03", "B04"]  # the figure patches' band order (PROVENANCE.md)


class SceneError(InputError):
    """One scene cannot be ingested; the message says which and why."""


@dataclass(frozen=True)
class Scheme:
    """Band names and classes of a dataset, recorded once in its STAC collection.

    Attributes:
        bands: Band names in the stored order.
        classes: ``{"value", "name", "color"}`` per class; 255 means "ignore".
        mask_values: Raw mask value -> class value; None when masks hold class values.
    """

    bands: list[str]
    classes: list[dict[str, Any]]
    mask_values: dict[int, int] | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> Scheme:
        """Read ``{"bands": [...], "classes": [...], "mask_values": {...}}``.

        Classes may be names (values 0, 1, ...) or ``{"value", "name"[, "color"]}``.
        """
        try:
            bands = [str(b) for b in data["bands"]]
            classes = [
                {"value": i, "name": str(c)} if isinstance(c, str) else dict(c)
                for i, c in enumerate(data["classes"])
            ]
            for c in classes:
                c["value"], c["name"] = int(c["value"]), str(c["name"])
            mapping = data.get("mask_values")
            mask_values = {int(k): int(v) for k, v in mapping.items()} if mapping else None
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(
                f"{where}: needs 'bands' (names) and 'classes' (names or value/name pairs); "
                f"{type(exc).__name__}: {exc}"
            ) from None
        return cls(bands, classes, mask_values)

    def same_data(self, other: Scheme) -> bool:
        """Whether ``other`` names the same stored data: bands, class values and names.

        Class colours and ``mask_values`` (how one source's raw masks map to the
        classes) may differ: scenes ingested under either scheme are stored alike.
        """

        def named(scheme: Scheme) -> list[tuple[int, str]]:
            return [(c["value"], c["name"]) for c in scheme.classes]

        return self.bands == other.bands and named(self) == named(other)

    def to_json(self) -> dict[str, Any]:
        """The scheme as JSON data."""
        data: dict[str, Any] = {"bands": self.bands, "classes": self.classes}
        if self.mask_values:
            data["mask_values"] = {str(k): v for k, v in sorted(self.mask_values.items())}
        return data


@dataclass
class LoadedScene:
    """A scene's pixels and grid, validated."""

    image: np.ndarray  # (bands, rows, cols), the source dtype
    mask: np.ndarray  # (rows, cols) uint8 class values, 255 = ignore
    crs: str | None = None  # WKT, or None when not georeferenced
    transform: tuple[float, ...] | None = None  # affine a, b, c, d, e, f
    datetime: dt.datetime | None = None
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass
class SourceScene:
    """A scene found in the source folder, not read yet."""

    scene_id: str
    files: list[Path]
    load: Callable[[], LoadedScene]

    def checksum(self) -> str:
        """SHA-256 over the scene's source files (names and bytes)."""
        digest = hashlib.sha256()
        for path in sorted(self.files):
            digest.update(path.name.encode())
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()


@dataclass
class Source:
    """A source folder: its layout, scheme and scenes."""

    root: Path
    layout: str
    scheme: Scheme
    scenes: list[SourceScene]
    problems: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)


# -- detection --------------------------------------------------------------------------
def _child(root: Path, name: str) -> Path | None:
    for child in root.iterdir():
        if child.is_dir() and child.name.lower() == name.lower():
            return child
    return None


def detect_layout(root: Path) -> str:
    """Name the layout of ``root``.

    Raises:
        InputError: If none fits, saying what each layout needs.
    """
    if _child(root, "Scenes") and _child(root, "Masks"):
        return "raw"
    if _child(root, "images") and _child(root, "masks"):
        return "pairs"
    if any(root.rglob("S2L1C.tif")) or any(root.rglob("S2L2A.tif")):
        return "cloudsen12"
    if any(root.glob("*.npz")):
        return "npz"
    raise InputError(
        f"{root}: unknown layout; expected Scenes/ + Masks/ + data.json (raw), patch "
        "folders with S2L1C.tif + manual_hq.tif (cloudsen12), images/ + masks/ (pairs), "
        "or .npz chips (npz); name it with --layout"
    )


def _inside(root: Path, path: Path) -> Path:
    """``path`` resolved, refusing anything that escapes ``root`` (links, ``..``)."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise SceneError(f"{path.name}: path escapes the source folder ({resolved})")
    return resolved


def _scene_id(root: Path, path: Path) -> str:
    rel = path.relative_to(root)
    return "-".join(rel.parts).replace(" ", "_") or root.name


# -- reading ----------------------------------------------------------------------------
def _read_raster(path: Path) -> tuple[np.ndarray, str | None, tuple | None, float | None]:
    """(bands, rows, cols) array, CRS WKT, transform and nodata of a GeoTIFF or ``.npy``."""
    if path.suffix.lower() == ".npy":
        array = np.load(path, allow_pickle=False)
        if array.ndim == 3 and array.shape[2] < array.shape[0]:  # (rows, cols, bands)
            array = np.moveaxis(array, -1, 0)
        return (array[None] if array.ndim == 2 else array), None, None, None
    import rasterio

    with rasterio.open(path) as ds:
        georeferenced = ds.crs is not None and not ds.transform.is_identity
        return (
            ds.read(),
            ds.crs.to_wkt() if georeferenced else None,
            tuple(ds.transform)[:6] if georeferenced else None,
            ds.nodata,
        )


def _to_classes(
    raw: np.ndarray, scheme: Scheme, name: str, nodata: float | None = None
) -> np.ndarray:
    """Class values (uint8, 255 = ignore) from a raw mask: indices, one-hot or mapped."""
    if raw.ndim == 3 and raw.shape[0] == 1:
        raw = raw[0]
    if raw.ndim == 3:  # one-hot (classes, rows, cols)
        if raw.shape[0] != len(scheme.classes):
            raise SceneError(
                f"{name}: one-hot mask has {raw.shape[0]} layers but the dataset has "
                f"{len(scheme.classes)} classes"
            )
        hot = raw.astype(bool)
        out = np.full(raw.shape[1:], IGNORE, dtype=np.uint8)
        values = np.array([c["value"] for c in scheme.classes], dtype=np.uint8)
        single = hot.sum(axis=0) == 1
        out[single] = values[hot.argmax(axis=0)[single]]
        return out
    invalid = np.zeros(raw.shape, bool)
    if nodata is not None:
        invalid |= raw == nodata if not np.isnan(nodata) else np.isnan(raw)
    if np.issubdtype(raw.dtype, np.floating):
        invalid |= ~np.isfinite(raw)
        if np.any((raw != np.round(raw)) & ~invalid):
            raise SceneError(f"{name}: mask holds fractional values; expected class numbers")
    values = np.where(invalid, 0, raw).astype(np.int64)
    mapping = scheme.mask_values or {c["value"]: c["value"] for c in scheme.classes}
    lookup_keys = np.array(sorted(mapping), dtype=np.int64)
    known = np.isin(values, lookup_keys) | invalid | (values == IGNORE)
    if not known.all():
        bad = sorted(set(np.unique(values[~known]).tolist()))[:8]
        raise SceneError(
            f"{name}: unknown mask value(s) {bad}; known: {sorted(mapping)} "
            "(map them with mask_values in data.json)"
        )
    out = np.full(raw.shape, IGNORE, dtype=np.uint8)
    for raw_value, class_value in mapping.items():
        out[(values == raw_value) & ~invalid] = class_value
    return out


def load_pair(
    image_path: Path,
    mask_path: Path,
    scheme: Scheme,
    name: str,
    metadata: dict[str, Any] | None = None,
    mask_fixup: Callable[[np.ndarray], np.ndarray] | None = None,
) -> LoadedScene:
    """Read and validate an image and its mask.

    Raises:
        SceneError: On unreadable files, size or grid mismatch, NaNs, unknown values.
    """
    try:
        image, crs, transform, _ = _read_raster(image_path)
        raw_mask, mask_crs, mask_transform, mask_nodata = _read_raster(mask_path)
    except SceneError:
        raise
    except Exception as exc:  # rasterio / numpy raise many types for broken files
        raise SceneError(f"{name}: unreadable file ({type(exc).__name__}: {exc})") from None
    if mask_fixup is not None:
        raw_mask = mask_fixup(raw_mask)
    if (
        crs
        and mask_crs
        and raw_mask.shape[-2:] == image.shape[-2:]
        and (crs != mask_crs or not np.allclose(transform, mask_transform))
    ):
        raise SceneError(f"{name}: image and mask are on different grids (CRS or transform)")
    scene = _validated_arrays(image, raw_mask, scheme, name, mask_nodata)
    metadata = metadata or {}
    when = metadata.get("datetime")
    scene.crs, scene.transform = crs, transform
    scene.datetime = dt.datetime.fromisoformat(when.replace("Z", "+00:00")) if when else None
    scene.properties = {k: v for k, v in metadata.items() if k != "datetime"}
    return scene


# -- the layouts ------------------------------------------------------------------------
def _scheme_file(root: Path, scheme: Scheme | None) -> Scheme:
    if scheme is not None:
        return scheme
    for name in ("data.json", "dataset.json"):
        if (root / name).is_file():
            data = read_json(root / name)  # within the metadata limit
            return Scheme.from_json(data, str(root / name))
    raise InputError(
        f"{root}: no data.json naming the bands and classes; write one, e.g. "
        '{"bands": ["B02", "B03", "B04"], "classes": ["clear", "cloud", "shadow"]}'
    )


def _by_stem(folder: Path) -> dict[str, Path]:
    return {
        p.stem: p
        for p in sorted(folder.iterdir())
        if p.suffix.lower() in SOURCE_SUFFIXES and not p.name.startswith(".")
    }


def _paired(
    root: Path, layout: str, scheme: Scheme, image_dir: Path, mask_dir: Path, meta_dir: Path | None
) -> Source:
    images, masks = _by_stem(image_dir), _by_stem(mask_dir)
    source = Source(root, layout, scheme, [])
    for stem in sorted(set(images) | set(masks)):
        if stem not in masks or stem not in images:
            missing = "mask" if stem not in masks else "image"
            source.problems.append((stem, f"no {missing} for this scene"))
            continue
        meta = meta_dir / f"{stem}.json" if meta_dir else None
        files = [images[stem], masks[stem]] + ([meta] if meta and meta.is_file() else [])

        def load(stem: str = stem, meta: Path | None = meta) -> LoadedScene:
            image = _inside(root, images[stem])
            mask = _inside(root, masks[stem])
            metadata = read_json(_inside(root, meta)) if meta and meta.is_file() else None
            return load_pair(image, mask, scheme, stem, metadata)

        source.scenes.append(SourceScene(stem, files, load))
    return source


def _cloudsen12(root: Path) -> Source:
    scheme = Scheme(CLOUDSEN12_BANDS, CLOUDSEN12_CLASSES, {0: 0, 1: 1, 2: 2, 3: 3})
    source = Source(root, "cloudsen12", scheme, [])
    images = sorted([*root.rglob("S2L1C.tif"), *root.rglob("S2L2A.tif")])
    for image in images:
        folder = image.parent
        name = _scene_id(root, folder)
        labels = [folder / n for n in ("manual_hq.tif", "manual_sc.tif") if (folder / n).is_file()]
        if not labels:
            source.problems.append((name, "no manual_hq.tif or manual_sc.tif (unlabeled)"))
            continue
        label = labels[0]  # dense labels win over scribbles

        def load(image: Path = image, label: Path = label, name: str = name) -> LoadedScene:
            # Scribble values 4-6 are undocumented: ignore them, like unlabeled pixels.
            def fixup(raw: np.ndarray) -> np.ndarray:
                return np.where(np.isin(raw, [4, 5, 6]), np.float32(IGNORE), raw)

            scene = load_pair(
                _inside(root, image), _inside(root, label), scheme, name, mask_fixup=fixup
            )
            scene.properties["cloudsen12:label_type"] = label.stem
            return scene

        source.scenes.append(SourceScene(name, [image, label], load))
    return source


def _npz(root: Path, scheme: Scheme) -> Source:
    source = Source(root, "npz", scheme, [])
    for path in sorted(root.glob("*.npz")):

        def load(path: Path = path) -> LoadedScene:
            try:
                with np.load(_inside(root, path), allow_pickle=False) as chip:
                    names = list(chip.files)
                    image_key = next((k for k in ("img", "image", "x") if k in names), None)
                    mask_key = next((k for k in ("msk", "mask", "y", "label") if k in names), None)
                    if image_key is None or mask_key is None:
                        raise SceneError(f"{path.name}: needs image and mask arrays, has {names}")
                    image, mask = chip[image_key], chip[mask_key]
            except SceneError:
                raise
            except Exception as exc:
                raise SceneError(f"{path.name}: unreadable ({type(exc).__name__}: {exc})") from None
            if image.ndim == 3 and image.shape[2] < image.shape[0]:
                image = np.moveaxis(image, -1, 0)
            if mask.ndim == 3 and mask.shape[2] < mask.shape[0]:
                mask = np.moveaxis(mask, -1, 0)
            return _validated_arrays(image, mask, scheme, path.stem)

        source.scenes.append(SourceScene(path.stem, [path], load))
    return source


def _validated_arrays(
    image: np.ndarray, raw_mask: np.ndarray, scheme: Scheme, name: str, nodata: float | None = None
) -> LoadedScene:
    if image.shape[0] != len(scheme.bands):
        raise SceneError(
            f"{name}: image has {image.shape[0]} bands, the dataset names {len(scheme.bands)}"
        )
    if raw_mask.shape[-2:] != image.shape[-2:]:
        raise SceneError(
            f"{name}: image is {image.shape[-2]} x {image.shape[-1]} but the mask is "
            f"{raw_mask.shape[-2]} x {raw_mask.shape[-1]}"
        )
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise SceneError(f"{name}: image holds values that are not finite (NaN or +-Inf)")
    return LoadedScene(image=image, mask=_to_classes(raw_mask, scheme, name, nodata))


def scan_source(
    root: str | Path, layout: str | None = None, scheme: Scheme | None = None
) -> Source:
    """Find the scenes of a source folder.

    Args:
        root: The source folder.
        layout: One of :data:`LAYOUTS`; detected when None.
        scheme: Bands and classes; from the folder's ``data.json`` when None.

    Raises:
        InputError: If the folder is missing, its layout unknown, or its scheme absent.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise InputError(f"source {root} is not a folder")
    layout = layout or detect_layout(root)
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if layout == "cloudsen12":
        return _cloudsen12(root)
    if layout == "npz":
        return _npz(root, _scheme_file(root, scheme))
    if layout == "raw":
        scenes, masks = _child(root, "Scenes"), _child(root, "Masks")
        if scenes is None or masks is None:
            raise InputError(f"{root}: the raw layout needs Scenes/ and Masks/ folders")
        return _paired(
            root, "raw", _scheme_file(root, scheme), scenes, masks, _child(root, "Metadata")
        )
    images, masks = _child(root, "images"), _child(root, "masks")
    if images is None or masks is None:
        raise InputError(f"{root}: the pairs layout needs images/ and masks/ folders")
    metadata = _child(root, "metadata")
    return _paired(root, "pairs", _scheme_file(root, scheme), images, masks, metadata)
