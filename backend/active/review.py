"""Review of suspicious labels: the label dock's second queue.

``cloudseg labels check`` writes a report (``label_issues.json``) that ranks scenes and
their windows by the share of labeled pixels the model contradicts. The review walks
the flagged windows, worst first; for each one the analyst sees the image, the stored
label, the model's classes and the flagged pixels, and decides:

- **accept**: the stored label is right (the model is wrong); training trusts it;
- **drop**: the label is wrong and not worth fixing; training leaves the window out;
- **correct**: the analyst edits the label's polygons (``corrections`` layer of the
  review GeoPackage, QGIS's digitizing tools); the corrected window is stored as a new
  scene with its provenance (``cloudseg:corrects``: scene, window; who, when), and the
  old label stays as it was, out of training under that window.

Every decision is appended to the scene's STAC Item (``cloudseg:label_review``: window,
decision, who, when, and the corrected scene), which training reads
(:func:`cloudseg.training.data.scene_labels`). Stored labels are never changed.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..raster.reader import guess_scale
from ..raster.vectorize import ogr_srs
from ..store.dataset import StoredDataset, open_dataset
from ..store.keys import IGNORE, item_key
from .labels import (
    LabeledWindow,
    add_class_polygons,
    label_shapes,
    login_name,
    windows_to_store,
)

#: The review GeoPackage's layer of label polygons to correct.
CORRECTIONS_LAYER = "corrections"
DECISIONS = ("accepted", "dropped", "corrected")
#: Windows with more than this share of labeled pixels flagged are queued (reports
#: record their own limit; this is for reports without one).
QUEUE_SHARE = 0.1
#: The class name given to unlabeled pixels in the corrections layer.
UNLABELED = "unlabeled"


@dataclass
class Suspect:
    """A flagged window to review.

    Attributes:
        scene: The store's scene id.
        window: ``(row, col, height, width)`` on the scene's grid.
        flagged_share: Share of its labeled pixels the model contradicts.
        status: ``todo`` or the latest decision.
    """

    scene: str
    window: tuple[int, int, int, int]
    flagged_share: float
    status: str = "todo"

    @property
    def key(self) -> str:
        """A short id: ``scene r<row> c<col>``."""
        return f"{self.scene} r{self.window[0]} c{self.window[1]}"


def reviews(properties: dict[str, Any]) -> dict[tuple[int, ...], dict[str, Any]]:
    """The latest review decision of each window of a scene (from its Item properties)."""
    return {tuple(r["window"]): r for r in properties.get("cloudseg:label_review", [])}


def read_report(report: str | Path) -> dict[str, Any]:
    """A label check's report (``label_issues.json``).

    Raises:
        InputError: If it is missing or not a label-check report.
    """
    path = Path(report).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the label check report {path}: {exc}") from None
    if not isinstance(data, dict) or "scenes" not in data or "store" not in data:
        raise InputError(f"{path} is not a label check report (label_issues.json)")
    return data


def review_queue(
    report: str | Path, share: float | None = None, endpoint_url: str | None = None
) -> tuple[StoredDataset, list[Suspect]]:
    """The report's store and its flagged windows, worst first, with their review status.

    A window is queued when its flagged share is above ``share`` (default the report's
    own ``limit``, else :data:`QUEUE_SHARE`).

    Raises:
        InputError: For a bad report or a store that cannot be opened.
    """
    data = read_report(report)
    share = share if share is not None else data.get("limit", QUEUE_SHARE)
    dataset = open_dataset(data["store"], endpoint_url)
    known = set(dataset.scenes())
    queue = []
    for entry in data["scenes"]:
        if entry["scene"] not in known:
            continue
        done = reviews(dataset.item(entry["scene"]).properties)
        for window in entry.get("windows", []):
            if window["flagged_share"] > share:
                box = tuple(window["window"])
                status = done[box]["decision"] if box in done else "todo"
                queue.append(Suspect(entry["scene"], box, window["flagged_share"], status))
    queue.sort(key=lambda s: -s.flagged_share)
    return dataset, queue


@dataclass
class ReviewFiles:
    """What the dock loads for one window (all on the window's grid)."""

    image: Path
    label: Path
    model: Path | None
    flagged: Path | None
    corrections: Path


def _grid(dataset: StoredDataset, scene: str, window: tuple[int, ...]) -> tuple[Any, Any]:
    """The window's geotransform and CRS (None, None where not georeferenced)."""
    from affine import Affine
    from rasterio.crs import CRS

    props = dataset.item(scene).properties
    transform = props.get("proj:transform")
    crs = props.get("proj:wkt2") or props.get("proj:code")
    if not transform:
        return None, None
    shifted = Affine(*transform[:6]) * Affine.translation(window[1], window[0])
    return shifted, CRS.from_user_input(crs) if crs else None


def _write(path: Path, data: np.ndarray, transform: Any, crs: Any, **extra: Any) -> Path:
    import rasterio

    profile = {"driver": "GTiff", "count": data.shape[0], "height": data.shape[1],
               "width": data.shape[2], "dtype": data.dtype.name, **extra}  # fmt: skip
    if transform is not None:
        profile |= {"transform": transform, "crs": crs}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def _crop(source: Path, window: tuple[int, ...], path: Path, crs: Any, transform: Any) -> Path:
    """A window of one of the check's rasters (its tags kept), or None when missing."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(source) as ds:
        data = ds.read(window=Window(window[1], window[0], window[3], window[2]))
        tags, nodata = ds.tags(), ds.nodata
    _write(path, data, transform, crs, nodata=nodata)
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(**tags)
    return path


def open_window(report: str | Path, suspect: Suspect, folder: str | Path) -> ReviewFiles:
    """Write the window's image, stored label, model's classes and flagged pixels.

    The stored label also goes into the review GeoPackage's ``corrections`` layer as
    polygons (one per connected area of one class; unlabeled pixels as class 255), for
    the analyst to correct; polygons already there for this window (earlier edits) are
    kept as they are.

    Args:
        report: The label check's ``label_issues.json``.
        suspect: The window (from :func:`review_queue`).
        folder: The review folder (created if missing).
    """
    data = read_report(report)
    dataset = open_dataset(data["store"])
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    row, col, height, width = suspect.window
    transform, crs = _grid(dataset, suspect.scene, suspect.window)
    image, mask = dataset.read(suspect.scene, (row, col, height, width))
    stem = f"{suspect.scene}_r{row}_c{col}"
    files = ReviewFiles(
        _write(folder / f"{stem}_image.tif", image, transform, crs),
        _write(folder / f"{stem}_label.tif", mask[None], transform, crs, nodata=IGNORE),
        None,
        None,
        folder / "review.gpkg",
    )
    entry = next(e for e in data["scenes"] if e["scene"] == suspect.scene)
    for attr, field_name in (("model", "predicted_raster"), ("flagged", "issue_raster")):
        source = entry.get(field_name)
        if source and Path(source).is_file():
            path = folder / f"{stem}_{attr}.tif"
            setattr(files, attr, _crop(Path(source), suspect.window, path, crs, transform))
    import rasterio

    with rasterio.open(files.image, "r+") as dst:
        dst.descriptions = tuple(dataset.bands)
    names = {c["value"]: c["name"] for c in dataset.classes} | {IGNORE: UNLABELED}
    colors = {c["value"]: c.get("color", "#9e9e9e") for c in dataset.classes}
    with rasterio.open(files.label, "r+") as dst:
        described = [
            {"value": v, "name": n, "color": colors.get(v, "#ffffff00")} for v, n in names.items()
        ]
        dst.update_tags(CLOUDSEG_CLASSES=json.dumps(described))
    _label_polygons(files.corrections, suspect, mask, transform, crs, names)
    return files


def window_text(suspect: Suspect) -> str:
    """The window as written in the corrections layer's ``window`` field."""
    return json.dumps([int(v) for v in suspect.window])


def _corrections_layer(dataset: Any, srs: Any) -> Any:
    from osgeo import ogr

    layer = dataset.GetLayerByName(CORRECTIONS_LAYER)
    if layer is None:
        layer = dataset.CreateLayer(CORRECTIONS_LAYER, srs, ogr.wkbMultiPolygon)
        for name, kind in (("class", ogr.OFTInteger), ("name", ogr.OFTString),
                           ("scene", ogr.OFTString), ("window", ogr.OFTString)):  # fmt: skip
            layer.CreateField(ogr.FieldDefn(name, kind))
    return layer


def _open_gpkg(path: Path) -> Any:
    from osgeo import ogr

    if path.is_file():
        return ogr.Open(str(path), 1)
    return ogr.GetDriverByName("GPKG").CreateDataSource(str(path))


def _label_polygons(
    gpkg: Path,
    suspect: Suspect,
    mask: np.ndarray,
    transform: Any,
    crs: Any,
    names: dict[int, str],
) -> int:
    """Polygons of the stored label in the window (unless the window has some already)."""
    from rasterio.transform import Affine

    dataset = _open_gpkg(gpkg)
    try:
        layer = _corrections_layer(dataset, ogr_srs(crs) if crs else None)
        layer.SetAttributeFilter(window_filter(suspect))
        if layer.GetFeatureCount() > 0:
            return 0
        layer.SetAttributeFilter(None)
        grid = transform if transform is not None else Affine.identity()
        fields = {"scene": suspect.scene, "window": window_text(suspect)}
        return add_class_polygons(dataset, layer, mask, mask != 0, grid, names, fields)
    finally:
        dataset = None


def window_filter(suspect: Suspect) -> str:
    """The OGR attribute filter of one window's polygons in the corrections layer."""
    scene = suspect.scene.replace("'", "''")
    return f"scene = '{scene}' AND window = '{window_text(suspect)}'"


def corrected_labels(gpkg: str | Path, suspect: Suspect, transform: Any) -> np.ndarray:
    """The window's labels from its polygons in the corrections layer.

    Pixels under no polygon are clear (0), as in the label project; later polygons lie
    over earlier ones; class 255 marks pixels left unlabeled.
    """
    from rasterio.features import rasterize
    from rasterio.transform import Affine

    _, _, height, width = suspect.window
    path = Path(gpkg).expanduser()
    shapes = label_shapes(path, CORRECTIONS_LAYER, window_filter(suspect))
    if shapes is None:
        raise InputError(f"{gpkg} has no {CORRECTIONS_LAYER} layer; open the window first")
    if not shapes:
        return np.zeros((height, width), np.uint8)
    grid = transform if transform is not None else Affine.identity()
    return rasterize(shapes, out_shape=(height, width), transform=grid, fill=0, dtype="uint8")


def decide(
    report: str | Path,
    suspect: Suspect,
    decision: str,
    corrections: str | Path | None = None,
    who: str | None = None,
) -> str | None:
    """Record the analyst's decision on a window; for ``corrected``, store the correction.

    Args:
        report: The label check's ``label_issues.json``.
        suspect: The window.
        decision: ``accepted``, ``dropped`` or ``corrected``.
        corrections: The review GeoPackage (for ``corrected``).
        who: The analyst; default the login name.

    Returns:
        The id of the corrected scene, for ``corrected``; else None.

    Raises:
        InputError: For an unknown decision, scene, or a missing corrections layer.
    """
    if decision not in DECISIONS:
        raise InputError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
    data = read_report(report)
    dataset = open_dataset(data["store"])
    if suspect.scene not in dataset.scenes():
        raise InputError(f"no scene {suspect.scene!r} in {dataset.storage.url}")
    who = who or login_name()
    when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    record: dict[str, Any] = {"window": list(suspect.window), "decision": decision, "by": who,
                              "at": when, "check": data.get("model")}  # fmt: skip
    if decision == "corrected":
        if corrections is None:
            raise InputError("a correction needs the review GeoPackage with its polygons")
        transform, crs = _grid(dataset, suspect.scene, suspect.window)
        labels = corrected_labels(corrections, suspect, transform)
        row, col, height, width = suspect.window
        image, _ = dataset.read(suspect.scene, (row, col, height, width))
        versions = [
            s for s in dataset.scenes() if s.startswith(f"{suspect.scene}-fix-r{row}-c{col}-v")
        ]
        stem = f"{suspect.scene}-fix-r{row}-c{col}-v{len(versions) + 1}"
        scale, _ = guess_scale(image.dtype.name, image[0])  # as the engine reads the store
        window = LabeledWindow(
            stem,
            image.astype(np.float32) * np.float32(scale),
            labels,
            transform,
            crs,
            {"cloudseg:corrects": {"scene": suspect.scene, "window": list(suspect.window)},
             "cloudseg:labeled_by": who, "cloudseg:labeled_at": when},
        )  # fmt: skip
        windows_to_store(
            [window], dataset.bands, [c["name"] for c in dataset.classes], data["store"],
            env_file=None,
        )  # fmt: skip
        record["corrected_scene"] = stem
    key = item_key(suspect.scene)
    item = json.loads(dataset.storage.read_bytes(key))
    item["properties"].setdefault("cloudseg:label_review", []).append(record)
    dataset.storage.write_bytes(key, (json.dumps(item, indent=2, sort_keys=True) + "\n").encode())
    return record.get("corrected_scene")
