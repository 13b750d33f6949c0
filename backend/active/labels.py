"""An analyst's labels into a store that training reads: the label project's done boxes.

A label project (GeoPackage) holds the ``proposals`` layer (see :mod:`.propose`) and a
``labels`` layer of polygons with a ``class`` field (the model card's class values). For
every proposal marked ``labeled``, the scene's window under the box and the labels
rasterized on the scene's grid (pixels under no polygon are clear: the analyst said the
box is done) become one stored scene, through the same ingestion as any dataset, so
the Zarr + STAC store, its checks and its report are those of ``cloudseg ingest``.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..callbacks import CancelCallback
from ..choices import DEFAULT_CONTEXT_SHARE
from ..errors import InputError
from ..raster.vectorize import ogr_srs, ogr_transaction
from ..store.ingest import IngestResult, ingest
from .propose import PROPOSALS_LAYER, Box, read_proposals

#: The label project's layer of class polygons.
LABELS_LAYER = "labels"


def _proposals(project: Path, transform: Any) -> list[tuple[Box, dict[str, Any]]]:
    """The project's proposals (see ``read_proposals``); an error when there are none."""
    found = read_proposals(project, transform)
    if found is None:
        raise InputError(f"{project} has no {PROPOSALS_LAYER} layer; propose areas first")
    return found


def labeled_boxes(project: Path, transform: Any) -> list[tuple[Box, dict[str, Any]]]:
    """The project's proposals marked labeled, as boxes on the scene's grid, with their fields."""
    return [(b, f) for b, f in _proposals(project, transform) if f["status"] == "labeled"]


def stored_box_id(scene: str, box: Box) -> str:
    """The id a labeled box is stored under: ``<scene>-r<row>-c<col>-<size>``."""
    return f"{scene}-r{box.row}-c{box.col}-{box.size}"


def label_shapes(
    project: Path, layer_name: str = LABELS_LAYER, where: str | None = None
) -> list[tuple[dict[str, Any], int]] | None:
    """A layer's polygons as ``(GeoJSON geometry, class value)``, in order.

    Args:
        project: The GeoPackage.
        layer_name: The layer (default the label project's ``labels``).
        where: An OGR attribute filter (e.g. one scene's window); all polygons when None.

    Returns:
        The polygons; None when the GeoPackage has no such layer.

    Raises:
        InputError: If the layer has no ``class`` field.
    """
    from osgeo import ogr

    dataset = ogr.Open(str(project))
    layer = dataset.GetLayerByName(layer_name) if dataset else None
    if layer is None:
        return None
    if layer.GetLayerDefn().GetFieldIndex("class") < 0:
        raise InputError(f"the {layer_name} layer of {project} has no 'class' field")
    layer.SetAttributeFilter(where)
    return [
        (json.loads(f.GetGeometryRef().ExportToJson()), int(f.GetField("class")))
        for f in layer
        if f.GetGeometryRef() is not None and f.GetField("class") is not None
    ]


def add_class_polygons(
    dataset: Any,
    layer: Any,
    data: np.ndarray,
    keep: np.ndarray,
    transform: Any,
    names: dict[int, str],
    fields: dict[str, str] | None = None,
) -> int:
    """Add the areas of ``data`` where ``keep`` as class polygons (class, name, ``fields``).

    One polygon per connected area of one class (8-connected), in one transaction: a
    failure adds nothing. Returns how many were added.
    """
    from osgeo import ogr
    from rasterio.features import shapes

    added = 0
    with ogr_transaction(dataset):
        for geometry, value in shapes(data, mask=keep, transform=transform, connectivity=8):
            feature = ogr.Feature(layer.GetLayerDefn())
            polygon = ogr.CreateGeometryFromJson(json.dumps(geometry))
            feature.SetGeometry(ogr.ForceToMultiPolygon(polygon))
            feature.SetField("class", int(value))
            feature.SetField("name", names.get(int(value), str(int(value))))
            for key, text in (fields or {}).items():
                feature.SetField(key, text)
            layer.CreateFeature(feature)
            added += 1
    return added


def rasterize_box(
    shapes: list[tuple[dict[str, Any], int]], box: Box, transform: Any, clear: int = 0
) -> np.ndarray:
    """The labels of one box on the scene's grid: later polygons over earlier ones."""
    from rasterio.features import rasterize
    from rasterio.transform import Affine

    window_transform = transform * Affine.translation(box.col, box.row)
    if not shapes:
        return np.full((box.size, box.size), clear, np.uint8)
    return rasterize(
        shapes,
        out_shape=(box.size, box.size),
        transform=window_transform,
        fill=clear,
        dtype="uint8",
    )


def context_window(box: Box, context: int, rows: int, cols: int) -> tuple[int, int, int]:
    """The window around a box with ``context`` px on each side, shifted to stay inside.

    Every box of one size gets a window of one size (``size + 2 * context``, at most the
    scene's), so training windows need no padding; the box may sit off-centre at edges.

    Returns:
        ``(row, col, size)`` of the square window.
    """
    size = min(box.size + 2 * context, rows, cols)
    row = min(max(box.row - context, 0), rows - size)
    col = min(max(box.col - context, 0), cols - size)
    return row, col, size


def window_labels(box: Box, window: tuple[int, int, int], box_labels: np.ndarray) -> np.ndarray:
    """The labels of a context window: the box's inside, 255 (unlabeled, ignored) around.

    Args:
        box: The labeled box.
        window: ``(row, col, size)`` from :func:`context_window`.
        box_labels: ``(box.size, box.size)`` class values.
    """
    row, col, size = window
    labels = np.full((size, size), 255, np.uint8)
    r, c = box.row - row, box.col - col
    labels[r : r + box.size, c : c + box.size] = box_labels
    return labels


def labels_to_store(
    project: str | Path,
    scene: str | Path,
    store: str | Path,
    model: str | None = None,
    endpoint_url: str | None = None,
    cancelled: CancelCallback | None = None,
    context: int | None = None,
) -> IngestResult:
    """Add the project's labeled boxes of ``scene`` to a store (created if missing).

    Each stored box's STAC Item records the project, the scene, the box, the model that
    proposed it, who marked it done and when.

    Args:
        project: The label project's GeoPackage.
        scene: The scene the boxes were proposed on (any input ``cloudseg segment`` reads).
        store: A store folder or ``s3://bucket/prefix``.
        model: The model whose bands and classes the labels use; default the proposals'.
        endpoint_url: S3 endpoint for an ``s3://`` store.
        cancelled: Polled between boxes; True stops (stored boxes stay complete).
        context: Pixels of image stored around each box (its labels there are 255,
            ignored in training), so the network sees what surrounds what was labeled;
            None: a quarter of the box edge (:data:`DEFAULT_CONTEXT_SHARE`).

    Returns:
        The ingestion's result (scene ids ``<scene>-r<row>-c<col>-<size>``).

    Raises:
        InputError: Without labeled boxes, or for boxes outside the scene.
    """
    from rasterio.transform import Affine

    from ..models.registry import load_model
    from ..raster.reader import open_scene

    project = Path(project).expanduser()
    with open_scene(scene) as reader:
        boxes = labeled_boxes(project, reader.transform)
        if not boxes:
            raise InputError(
                f"{project.name} has no labeled boxes yet; label a proposal and mark it done"
            )
        card = load_model(model or boxes[0][1]["model"]).card
        shapes = label_shapes(project) or []  # no labels layer: every done box is clear
        name = Path(str(scene)).stem
        windows = []
        for box, fields in boxes:
            if (
                box.row < 0
                or box.col < 0
                or box.row + box.size > reader.height
                or (box.col + box.size > reader.width)
            ):
                raise InputError(f"a labeled box ({box}) lies outside {name}")
            around = round(box.size * DEFAULT_CONTEXT_SHARE) if context is None else context
            row, col, size = context_window(box, around, reader.height, reader.width)
            labels = window_labels(
                box, (row, col, size), rasterize_box(shapes, box, reader.transform)
            )
            windows.append(
                LabeledWindow(
                    stored_box_id(name, box),
                    reader.read(list(card.bands), row, col, size, size),
                    labels,
                    reader.transform * Affine.translation(col, row),
                    reader.crs,
                    {
                        "cloudseg:label_window": [row, col, size],
                        "cloudseg:label_project": project.name,
                        "cloudseg:label_scene": name,
                        "cloudseg:label_box": [box.row, box.col, box.size],
                        "cloudseg:label_model": fields.get("model"),
                        "cloudseg:labeled_by": fields.get("labeled_by"),
                        "cloudseg:labeled_at": fields.get("labeled_at"),
                    },
                )
            )
        classes = [c.name for c in card.classes]
        return windows_to_store(
            windows, list(card.bands), classes, store, endpoint_url, cancelled=cancelled
        )


@dataclass
class LabeledWindow:
    """An image window and its labels, to be stored as one scene.

    Attributes:
        stem: The stored scene's id.
        reflectance: ``(bands, rows, cols)`` float, NaN where there is no data.
        labels: ``(rows, cols)`` class values.
        transform: The window's geotransform (None: not georeferenced).
        crs: Its CRS (None: not georeferenced).
        properties: Recorded in the stored scene's STAC Item (who labeled it, when, where).
    """

    stem: str
    reflectance: np.ndarray
    labels: np.ndarray
    transform: Any = None
    crs: Any = None
    properties: dict[str, Any] = field(default_factory=dict)


def windows_to_store(
    windows: list[LabeledWindow],
    bands: list[str],
    classes: list[str],
    store: str | Path,
    endpoint_url: str | None = None,
    env_file: str | Path | None = ".env",
    cancelled: CancelCallback | None = None,
    name: str = "cloudseg-labels",
) -> IngestResult:
    """Store labeled windows as scenes, through the ingestion (``pairs`` layout).

    Reflectance is stored as digital numbers x 10000; pixels without data are 255
    (ignored in training). Each window's ``properties`` go into its STAC Item; ``name``
    is the store's STAC collection id.
    """
    import rasterio

    with tempfile.TemporaryDirectory(prefix="cloudseg-labels-") as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        (root / "masks").mkdir()
        (root / "metadata").mkdir()
        scheme = {"bands": list(bands), "classes": list(classes)}
        (root / "data.json").write_text(json.dumps(scheme), encoding="utf-8")
        for window in windows:
            image = window.reflectance
            dn = np.rint(np.clip(np.nan_to_num(image, nan=0.0) * 1e4, 0, 65535))
            labels = window.labels.astype(np.uint8)  # a copy: the window stays as given
            labels[np.isnan(image).any(axis=0)] = 255  # no data: ignored in training
            if window.properties:
                (root / "metadata" / f"{window.stem}.json").write_text(
                    json.dumps(window.properties), encoding="utf-8"
                )
            rows, cols = labels.shape
            profile = {
                "driver": "GTiff", "width": cols, "height": rows,
                "crs": window.crs, "transform": window.transform,
            }  # fmt: skip
            with rasterio.open(
                root / "images" / f"{window.stem}.tif",
                "w",
                **profile,
                count=len(bands),
                dtype="uint16",
            ) as dst:
                dst.write(dn.astype(np.uint16))
                dst.descriptions = tuple(bands)
            with rasterio.open(
                root / "masks" / f"{window.stem}.tif", "w", **profile, count=1, dtype="uint8"
            ) as dst:
                dst.write(labels[None])
        return ingest(
            root,
            store,
            layout="pairs",
            name=name,
            endpoint_url=endpoint_url,
            env_file=env_file,
            report=False,
            cancelled=cancelled,
        )


def _labels_layer(dataset: Any, srs: Any) -> Any:
    """The project's ``labels`` layer, created (class, name) when missing."""
    from osgeo import ogr

    layer = dataset.GetLayerByName(LABELS_LAYER)
    if layer is None:
        layer = dataset.CreateLayer(LABELS_LAYER, srs, ogr.wkbMultiPolygon)
        layer.CreateField(ogr.FieldDefn("class", ogr.OFTInteger))
        layer.CreateField(ogr.FieldDefn("name", ogr.OFTString))
    return layer


def ensure_labels_layer(project: str | Path, crs: Any) -> None:
    """Create the project's empty ``labels`` layer in ``crs`` if it has none yet.

    The label dock calls it once proposals exist, so the analyst can digitize at once.
    """
    from osgeo import ogr

    dataset = ogr.Open(str(Path(project).expanduser()), 1)
    if dataset is None:
        raise InputError(f"cannot open the label project {project} for writing")
    _labels_layer(dataset, ogr_srs(crs))
    dataset = None


def start_from_model(project: str | Path, mask: str | Path, rank: int) -> int:
    """Fill a proposed box's labels with the model's mask, as polygons to correct.

    The mask's classes other than clear inside the box become polygons of the project's
    ``labels`` layer (class value and name), so the analyst only fixes what is wrong.
    One transaction: a failure adds nothing.

    Args:
        project: The label project's GeoPackage.
        mask: A class raster written by ``cloudseg segment`` on the box's scene.
        rank: The proposal's rank.

    Returns:
        How many polygons were added.

    Raises:
        InputError: For an unknown rank, or a mask that is not a cloudseg class raster.
    """
    import rasterio
    from osgeo import ogr
    from rasterio.windows import Window

    project = Path(project).expanduser()
    with rasterio.open(mask) as ds:
        tag = ds.tags().get("CLOUDSEG_CLASSES")
        if not tag:
            raise InputError(f"{mask} is not a cloudseg class raster")
        names = {int(c["value"]): c["name"] for c in json.loads(tag)}
        box = _proposal_box(project, ds.transform, rank)
        window = Window(box.col, box.row, box.size, box.size)
        data = ds.read(1, window=window)
        transform, crs = ds.window_transform(window), ds.crs
    keep = np.isin(data, [v for v, n in names.items() if n != "clear"])
    dataset = ogr.Open(str(project), 1)
    try:
        layer = _labels_layer(dataset, ogr_srs(crs))
        return add_class_polygons(dataset, layer, data, keep, transform, names)
    finally:
        dataset = None


def _proposal_box(project: Path, transform: Any, rank: int) -> Box:
    """The box of the proposal with ``rank`` still to label, on the grid of ``transform``."""
    for box, fields in _proposals(project, transform):
        if fields["rank"] == rank and fields["status"] == "todo":
            return box
    raise InputError(f"{project.name} has no proposal of rank {rank} still to label")


def set_status(project: str | Path, fid: int, status: str, who: str | None = None) -> None:
    """Set a proposal's status: labeled (Done), skipped (Skip), or todo again (Back).

    Done records who labeled the box and when (UTC); Back clears both.

    Args:
        project: The label project's GeoPackage.
        fid: The proposal's feature id (ranks repeat across rounds; ids do not).
        status: One of ``todo``, ``labeled``, ``skipped``.
        who: The analyst; default the login name.

    Raises:
        InputError: For an unknown status or feature.
    """
    from osgeo import ogr

    from .propose import STATUSES, add_label_fields

    if status not in STATUSES:
        raise InputError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    project = Path(project).expanduser()
    dataset = ogr.Open(str(project), 1) if project.is_file() else None
    layer = dataset.GetLayerByName(PROPOSALS_LAYER) if dataset else None
    if layer is None:
        raise InputError(f"{project} has no {PROPOSALS_LAYER} layer; propose areas first")
    add_label_fields(layer)
    feature = layer.GetFeature(int(fid))
    if feature is None:
        raise InputError(f"{project.name} has no proposal {fid}")
    feature.SetField("status", status)
    if status == "labeled":
        when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        feature.SetField("labeled_by", who or login_name())
        feature.SetField("labeled_at", when)
    else:
        feature.SetFieldNull("labeled_by")
        feature.SetFieldNull("labeled_at")
    layer.SetFeature(feature)
    dataset = None


def login_name() -> str:
    """The analyst's login name, or ``unknown`` where the system has none."""
    try:
        return getpass.getuser()
    except Exception:  # no login name (containers, some services)
        return "unknown"


def proposal_rows(project: str | Path) -> list[dict[str, Any]]:
    """A label project's proposals as rows: id (``fid``), rank, score, status, scene, model.

    Raises:
        InputError: If the project has no proposals.
    """
    from osgeo import ogr

    project = Path(project).expanduser()
    dataset = ogr.Open(str(project)) if project.is_file() else None
    layer = dataset.GetLayerByName(PROPOSALS_LAYER) if dataset else None
    if layer is None:
        raise InputError(f"{project} has no {PROPOSALS_LAYER} layer; propose areas first")
    keys = ("rank", "score", "status", "scene", "model", "labeled_by", "labeled_at")
    rows = []
    for feature in layer:
        values = feature.items()
        rows.append({"fid": feature.GetFID()} | {k: values.get(k) for k in keys})
    return rows


def _proposal(project: Path, fid: int) -> tuple[Any, Any, dict[str, Any]]:
    """A proposal's polygon (OGR geometry, cloned), its layer's CRS, and its fields."""
    from osgeo import ogr

    dataset = ogr.Open(str(project)) if project.is_file() else None
    layer = dataset.GetLayerByName(PROPOSALS_LAYER) if dataset else None
    if layer is None:
        raise InputError(f"{project} has no {PROPOSALS_LAYER} layer; propose areas first")
    feature = layer.GetFeature(int(fid))
    if feature is None:
        raise InputError(f"{project.name} has no proposal {fid} (see cloudseg labels boxes)")
    srs = layer.GetSpatialRef()
    return feature.GetGeometryRef().Clone(), srs.Clone() if srs else None, feature.items()


def _box_grid(geometry: Any, pixel: float) -> tuple[Any, int]:
    """A proposal's square as a grid of ``pixel`` (CRS units): its transform and edge."""
    from rasterio.transform import from_origin

    xmin, xmax, _, ymax = geometry.GetEnvelope()
    edge = max(round((xmax - xmin) / pixel), 1)
    step = (xmax - xmin) / edge
    return from_origin(xmin, ymax, step, step), edge


def raster_labels(
    source: str | Path, geometry: Any, srs: Any, classes: list[int]
) -> tuple[np.ndarray, Any]:
    """A class raster's values under a proposal's box, at the raster's own pixel size.

    The raster may be on another grid or in another CRS: it is warped (nearest
    neighbour) onto a grid of the box in the project's CRS.

    Returns:
        The class values and the grid's transform.

    Raises:
        InputError: If the raster is not georeferenced, does not cover the whole box, or
            holds values that are not the model's classes.
    """
    import rasterio
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.warp import calculate_default_transform

    path = Path(source).expanduser()
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    with rasterio.open(path) as ds:
        if ds.crs is None or srs is None:
            raise InputError(
                f"{path.name} or the label project has no CRS; the box cannot be found in it"
            )
        crs = CRS.from_wkt(srs.ExportToWkt())
        if ds.crs == crs:
            pixel = abs(ds.transform.a)
        else:
            moved, _, _ = calculate_default_transform(ds.crs, crs, ds.width, ds.height, *ds.bounds)
            pixel = abs(moved.a)
        transform, edge = _box_grid(geometry, pixel)
        nodata = ds.nodata if ds.nodata is not None else 255
        with WarpedVRT(
            ds,
            crs=crs,
            transform=transform,
            width=edge,
            height=edge,
            resampling=Resampling.nearest,
            nodata=nodata,
        ) as vrt:
            data = vrt.read(1)
    missing = int((data == nodata).sum())
    if missing:
        raise InputError(
            f"{path.name} has no class at {missing} of the box's {edge * edge} pixels "
            "(nodata or outside it); label the whole box"
        )
    unknown = sorted(set(np.unique(data).tolist()) - set(classes))
    if unknown:
        raise InputError(
            f"{path.name} holds value(s) {unknown[:5]} that are not the model's classes "
            f"({', '.join(map(str, classes))})"
        )
    return data.astype(np.uint8), transform


def polygon_labels(
    source: str | Path, geometry: Any, srs: Any, classes: list[int]
) -> list[tuple[Any, int]]:
    """Polygons with a ``class`` field inside a proposal's box, in the project's CRS.

    Each polygon is reprojected where its CRS differs and clipped to the box.

    Raises:
        InputError: For a file without a layer or a ``class`` field, or unknown classes.
    """
    from osgeo import ogr, osr

    path = Path(source).expanduser()
    dataset = ogr.Open(str(path)) if path.exists() else None
    if dataset is None or dataset.GetLayerCount() == 0:
        raise InputError(f"{path} is not a raster or a vector file with polygons")
    layer = dataset.GetLayer(0)
    if layer.GetLayerDefn().GetFieldIndex("class") < 0:
        raise InputError(f"{path.name} has no 'class' field (the model's class values)")
    source_srs = layer.GetSpatialRef()
    transform_to = None
    if source_srs is not None and srs is not None and not source_srs.IsSame(srs):
        source_srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        transform_to = osr.CoordinateTransformation(source_srs, srs)
    found = []
    for feature in layer:
        shape = feature.GetGeometryRef()
        if shape is None or feature.GetField("class") is None:
            continue
        value = int(feature.GetField("class"))
        if value not in classes:
            raise InputError(
                f"{path.name}: class {value} is not one of the model's "
                f"({', '.join(map(str, classes))})"
            )
        shape = shape.Clone()
        if transform_to is not None:
            shape.Transform(transform_to)
        inside = shape.Intersection(geometry)
        if inside is not None and not inside.IsEmpty() and inside.GetArea() > 0:
            found.append((inside, value))
    return found


RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".img", ".jp2")


def label_box(
    project: str | Path,
    fid: int,
    source: str | Path,
    classes: dict[int, str] | None = None,
    done: bool = True,
    who: str | None = None,
) -> int:
    """Label a proposal's box from a class raster or polygons, and mark it done.

    The box's labels become polygons of the project's ``labels`` layer (from a raster:
    one per connected area of each class, clear included; from polygons: a clear square
    of the box, then each polygon clipped to it), so they replace whatever was drawn
    there before (later polygons win inside a box). The polygons are added in one
    transaction, then the status is set: a failure adds nothing.

    Args:
        project: The label project's GeoPackage.
        fid: The proposal's feature id (``cloudseg labels boxes`` lists them).
        source: A class raster (GeoTIFF: the model's class values, any grid or CRS) or
            a vector file with a ``class`` field (GeoPackage, GeoJSON; any CRS).
        classes: The model's classes, value -> name; default those of the model that
            proposed the box.
        done: Mark the box labeled (Done); False leaves its status as it is.
        who: The analyst; default the login name.

    Returns:
        How many polygons were added.

    Raises:
        InputError: For an unknown proposal, a box already skipped, or a source that
            does not cover the box or holds other classes.
    """
    from osgeo import ogr

    project = Path(project).expanduser()
    geometry, srs, fields = _proposal(project, fid)
    if fields.get("status") == "skipped":
        raise InputError(f"proposal {fid} was skipped; mark it todo again to label it")
    if classes is None:
        from ..models.registry import load_model

        card = load_model(fields.get("model") or "").card
        classes = {c.value: c.name for c in card.classes}
    values = sorted(classes)
    clear = next((v for v, n in classes.items() if n == "clear"), values[0])
    if Path(str(source)).suffix.lower() in RASTER_SUFFIXES:
        data, transform = raster_labels(source, geometry, srs, values)
        polygons = None
    else:
        polygons = [(geometry.Clone(), clear), *polygon_labels(source, geometry, srs, values)]
    dataset = ogr.Open(str(project), 1)
    try:
        layer = _labels_layer(dataset, srs)
        if polygons is None:
            added = add_class_polygons(
                dataset, layer, data, np.ones(data.shape, bool), transform, classes
            )
        else:
            with ogr_transaction(dataset):
                for shape, value in polygons:
                    feature = ogr.Feature(layer.GetLayerDefn())
                    feature.SetGeometry(ogr.ForceToMultiPolygon(shape))
                    feature.SetField("class", value)
                    feature.SetField("name", classes.get(value, str(value)))
                    layer.CreateFeature(feature)
            added = len(polygons)
    finally:
        dataset = None
    if done:
        set_status(project, fid, "labeled", who)
    return added
