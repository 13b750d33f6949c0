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
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..metadata_files import read_json
from ..models.cards import class_color
from ..raster.vectorize import ogr_srs
from ..store.dataset import StoredDataset, open_dataset
from ..store.keys import IGNORE, item_key
from .project import add_class_polygons, class_polygons, login_name

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
        data = read_json(path)  # within the metadata limit
    except InputError as exc:
        raise InputError(f"cannot read the label check report: {exc}") from None
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
    """What the dock loads for one window (all on the window's grid).

    ``missing`` says which of the check's rasters the report names but could not be
    found (``model``, ``flagged``: None then), for the dock to tell the analyst.
    """

    image: Path
    label: Path
    model: Path | None
    flagged: Path | None
    corrections: Path
    missing: list[str] = field(default_factory=list)


def check_raster(report: str | Path, recorded: str | None) -> Path | None:
    """One of the check's rasters that the report names, found on disk; None if not.

    Paths are as recorded when they exist; else they are looked for beside the report
    (``issues/``, ``predicted/``), where the check writes them: reports of a check run
    with a relative ``--out`` record paths relative to where it ran, and a check's
    folder may have been moved since.
    """
    if not recorded:
        return None
    folder = Path(report).expanduser().resolve().parent
    path = Path(recorded).expanduser()
    candidates = [path if path.is_absolute() else folder / path,
                  folder / path.parent.name / path.name]  # fmt: skip
    return next((c for c in candidates if c.is_file()), None)


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
        source = check_raster(report, entry.get(field_name))
        if source is None:
            files.missing.append(f"{attr}: {entry.get(field_name) or 'not in the report'}")
            continue
        path = folder / f"{stem}_{attr}.tif"
        setattr(files, attr, _crop(source, suspect.window, path, crs, transform))
    import rasterio

    with rasterio.open(files.image, "r+") as dst:
        dst.descriptions = tuple(dataset.bands)
    names = {c["value"]: c["name"] for c in dataset.classes} | {IGNORE: UNLABELED}
    colors = {c["value"]: class_color(c["name"], c.get("color")) for c in dataset.classes}
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


def corrected_labels(
    gpkg: str | Path, suspect: Suspect, transform: Any, crs: Any = None
) -> np.ndarray:
    """The window's labels from its polygons in the corrections layer.

    Pixels under no polygon are clear (0), as in the label project; later polygons lie
    over earlier ones; class 255 marks pixels left unlabeled. The polygons are read in
    ``crs`` (the window's), whatever the layer's own CRS (the label project's rule).
    """
    from rasterio.features import rasterize
    from rasterio.transform import Affine

    _, _, height, width = suspect.window
    path = Path(gpkg).expanduser()
    shapes = class_polygons(path, CORRECTIONS_LAYER, window_filter(suspect), crs)
    if shapes is None:
        raise InputError(f"{gpkg} has no {CORRECTIONS_LAYER} layer; open the window first")
    if not shapes:
        return np.zeros((height, width), np.uint8)
    grid = transform if transform is not None else Affine.identity()
    return rasterize(shapes, out_shape=(height, width), transform=grid, fill=0, dtype="uint8")


def _store_window(
    dataset: StoredDataset,
    stem: str,
    image: np.ndarray,
    labels: np.ndarray,
    grid: tuple[Any, Any],
    properties: dict[str, Any],
) -> None:
    """Add a corrected window to the store as a scene, stored as the store holds its own.

    The image keeps the store's values and dtype (no rescaling), the labels are class
    values of the store's own classes, and the collection keeps its id.
    """
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    from ..store.ingest import ingest
    from ..store.sources import Scheme

    transform, crs = grid
    with tempfile.TemporaryDirectory(prefix="cloudseg-review-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # stores without a grid
        root = Path(tmp)
        for folder in ("images", "masks", "metadata"):
            (root / folder).mkdir()
        (root / "metadata" / f"{stem}.json").write_text(json.dumps(properties), encoding="utf-8")
        _write(root / "images" / f"{stem}.tif", image, transform, crs)
        with rasterio.open(root / "images" / f"{stem}.tif", "r+") as dst:
            dst.descriptions = tuple(dataset.bands)
        _write(root / "masks" / f"{stem}.tif", labels[None].astype(np.uint8), transform, crs)
        ingest(
            root,
            dataset.storage.url,
            layout="pairs",
            scheme=Scheme(dataset.bands, dataset.classes),  # class values, not raw ones
            name=dataset.collection.get("id", "cloudseg-dataset"),
            env_file=None,
            report=False,
        )


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
        labels = corrected_labels(corrections, suspect, transform, crs)
        row, col, height, width = suspect.window
        image, _ = dataset.read(suspect.scene, (row, col, height, width))
        versions = [
            s for s in dataset.scenes() if s.startswith(f"{suspect.scene}-fix-r{row}-c{col}-v")
        ]
        stem = f"{suspect.scene}-fix-r{row}-c{col}-v{len(versions) + 1}"
        provenance = {"cloudseg:corrects": {"scene": suspect.scene, "window": list(suspect.window)},
                      "cloudseg:labeled_by": who, "cloudseg:labeled_at": when}  # fmt: skip
        _store_window(dataset, stem, image, labels, (transform, crs), provenance)
        record["corrected_scene"] = stem
    key = item_key(suspect.scene)
    item = json.loads(dataset.storage.read_bytes(key))
    item["properties"].setdefault("cloudseg:label_review", []).append(record)
    dataset.storage.write_bytes(key, (json.dumps(item, indent=2, sort_keys=True) + "\n").encode())
    return record.get("corrected_scene")
