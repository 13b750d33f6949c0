"""An analyst's labels into a store that training reads: the label project's done boxes.

A label project (GeoPackage) holds the ``proposals`` layer (see :mod:`.propose`) and a
``labels`` layer of polygons with a ``class`` field (the model card's class values). For
every proposal marked ``labeled``, the scene's window under the box and the labels
rasterized on the scene's grid (pixels under no polygon are clear: the analyst said the
box is done) become one stored scene, through the same ingestion as any dataset, so
the Zarr + STAC store, its checks and its report are those of ``cloudseg ingest``.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import temporary_folder
from ..callbacks import CancelCallback
from ..choices import DEFAULT_CONTEXT_SHARE
from ..errors import InputError
from ..raster.reader import scene_key
from ..raster.vectorize import ogr_srs
from ..store.ingest import IngestResult, ingest
from .geometry import (
    Box,
    box_grid,
    context_window,
    layer_transform,
    moved,
    polygonal,
    quiet_gdal,
    rasterize_box,
    rectangles_touch,
    valid_area,
)
from .project import LabelProject, ProjectContents, StoredProposal, class_value


def stored_box_id(scene: str, box: Box) -> str:
    """The id a labeled box is stored under: ``<scene>-r<row>-c<col>-<size>``."""
    return f"{scene}-r{box.row}-c{box.col}-{box.size}"


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
    project: str | Path | LabelProject,
    scene: str | Path,
    store: str | Path,
    model: str | None = None,
    endpoint_url: str | None = None,
    cancelled: CancelCallback | None = None,
    context: int | None = None,
    contents: ProjectContents | None = None,
    reader: Any = None,
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
        contents: The project as already read for this scene with its labels
            (``project.read(scene, labels=True)``); None: read here.
        reader: The scene, already open (:func:`~cloudseg.backend.raster.reader.open_scene`);
            None: opened here.

    Returns:
        The ingestion's result (scene ids ``<scene>-r<row>-c<col>-<size>``).

    Raises:
        InputError: Without labeled boxes, or for boxes outside the scene.
    """
    from rasterio.transform import Affine

    from ..models.registry import load_model
    from ..raster.reader import open_scene

    project = project if isinstance(project, LabelProject) else LabelProject(project)
    name = scene_key(scene)
    with contextlib.ExitStack() as stack:
        if contents is None:
            project.read(scene=name)  # a project that cannot be read: before the scene
        if reader is None:
            reader = stack.enter_context(open_scene(scene))
        if contents is None or contents.crs != reader.crs or contents.read_for is not None:
            contents = project.read(labels=True, crs=reader.crs)
        done = [p for p in contents.with_status("labeled") if p.scene == name]
        if not done:
            raise InputError(
                f"{project.path.name} has no labeled boxes of {name} yet; label a proposal "
                "and mark it done"
            )
        card = load_model(model or done[0].model).card
        boxes = [(proposal, proposal.box(reader.transform)) for proposal in done]
        refuse_unstorable_labels(project, contents, name, reader, boxes, card)
        windows = []
        for proposal, box in boxes:
            around = round(box.size * DEFAULT_CONTEXT_SHARE) if context is None else context
            row, col, size = context_window(box, around, reader.height, reader.width)
            labels = window_labels(
                box, (row, col, size), rasterize_box(contents.labels, box, reader.transform)
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
                        "cloudseg:label_project": project.path.name,
                        "cloudseg:label_scene": name,
                        "cloudseg:label_box": [box.row, box.col, box.size],
                        "cloudseg:label_model": proposal.model,
                        "cloudseg:labeled_by": proposal.labeled_by,
                        "cloudseg:labeled_at": proposal.labeled_at,
                    },
                )
            )
        classes = [c.name for c in card.classes]
        return windows_to_store(
            windows, list(card.bands), classes, store, endpoint_url, cancelled=cancelled
        )


def refuse_unstorable_labels(
    project: LabelProject,
    contents: ProjectContents,
    scene: str,
    reader: Any,
    boxes: list[tuple[StoredProposal, Box]],
    card: Any,
) -> None:
    """Refuse labels that cannot be stored as they are, before anything is stored.

    ``contents`` is the whole project read in the scene's CRS. Refused, with one line:

    - a done box that lies outside the scene (proposals moved, or of another grid);
    - a label polygon that lies outside the scene and outside every box of the project
      (a layer whose CRS is wrong, or polygons moved): they would label nothing, and
      the boxes they were drawn for would be stored clear;
    - a label polygon in a done box without a class, or with one the model does not
      have.

    Not to be confused with the label-quality check of a store (``cloudseg labels
    check``, ``training/label_check.py``'s ``check_labels``), which ranks stored labels
    against a model.

    Raises:
        InputError: As above.
    """
    from rasterio.features import bounds as shape_bounds
    from rasterio.transform import array_bounds

    for proposal, box in boxes:
        if (
            box.row < 0
            or box.col < 0
            or box.row + box.size > reader.height
            or box.col + box.size > reader.width
        ):
            raise InputError(f"labeled box {proposal.fid} ({box}) lies outside {scene}")
    west, south, east, north = array_bounds(reader.height, reader.width, reader.transform)
    extent = (min(west, east), min(south, north), max(west, east), max(south, north))
    places = [extent, *(p.bounds for p in contents.proposals)]
    where = [shape_bounds(shape) for shape, _ in contents.labels]
    astray = [
        fid
        for fid, b in zip(contents.label_ids, where, strict=True)
        if not any(rectangles_touch(b, place) for place in places)
    ]
    if astray:
        raise InputError(
            f"{len(astray)} label polygon(s) of {project.path.name} lie outside {scene} and "
            f"outside every box of the project (polygon {astray[0]}, in "
            f"{reader.crs or 'pixel units'}); is the labels layer's CRS right? Move or "
            "delete them"
        )
    known = {c.value: c.name for c in card.classes}
    for proposal, _ in boxes:
        for fid, b in contents.unclassed:
            if rectangles_touch(b, proposal.bounds):
                raise InputError(
                    f"label polygon {fid} in box {proposal.fid} of {project.path.name} has no "
                    "class; give it one or delete it, nothing was stored"
                )
        for fid, b, (_, value) in zip(contents.label_ids, where, contents.labels, strict=True):
            if value not in known and rectangles_touch(b, proposal.bounds):
                raise InputError(
                    f"label polygon {fid} in box {proposal.fid} of {project.path.name} has "
                    f"class {value}, which {card.name} does not have ("
                    + ", ".join(f"{v} {n}" for v, n in sorted(known.items()))
                    + "); correct it, nothing was stored"
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

    with temporary_folder("cloudseg-labels") as root:  # a killed run's is removed later
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


def start_from_model(project: str | Path | LabelProject, mask: str | Path, fid: int) -> int:
    """Fill a proposed box's labels with the model's mask, as polygons to correct.

    The mask's classes other than clear inside the box become polygons of the project's
    ``labels`` layer (class value and name), so the analyst only fixes what is wrong.
    One transaction: a failure adds nothing.

    Args:
        project: The label project.
        mask: A class raster written by ``cloudseg segment`` on the box's scene.
        fid: The proposal's feature id.

    Returns:
        How many polygons were added.

    Raises:
        InputError: For an unknown proposal or one already done or skipped, or a mask
            that is not a cloudseg class raster.
    """
    import rasterio
    from rasterio.windows import Window

    project = project if isinstance(project, LabelProject) else LabelProject(project)
    _, _, proposal = project.proposal(fid)
    if proposal.status != "todo":
        raise InputError(f"proposal {fid} is {proposal.status}; mark it todo (Back) to label it")
    with rasterio.open(mask) as ds:
        tag = ds.tags().get("CLOUDSEG_CLASSES")
        if not tag:
            raise InputError(f"{mask} is not a cloudseg class raster")
        names = {int(c["value"]): c["name"] for c in json.loads(tag)}
        _, _, proposal = project.proposal(fid, crs=ds.crs)  # on the mask's grid
        box = proposal.box(ds.transform)
        if (
            box.row < 0
            or box.col < 0
            or box.row + box.size > ds.height
            or (box.col + box.size > ds.width)
        ):
            raise InputError(f"proposal {fid} ({box}) lies outside {Path(mask).name}")
        window = Window(box.col, box.row, box.size, box.size)
        data = ds.read(1, window=window)
        transform, crs = ds.window_transform(window), ds.crs
    keep = np.isin(data, [v for v, n in names.items() if n != "clear"])
    return project.add_label_areas(data, keep, transform, names, ogr_srs(crs))


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

    path = Path(source).expanduser()
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    try:
        return _warped_labels(path, geometry, srs, classes)
    except rasterio.errors.RasterioIOError as exc:
        detail = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        raise InputError(f"cannot read {path.name} as a class raster ({detail})") from None


def _warped_labels(
    path: Path, geometry: Any, srs: Any, classes: list[int]
) -> tuple[np.ndarray, Any]:
    """:func:`raster_labels` of a file that exists."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.warp import calculate_default_transform

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
        transform, edge = box_grid(geometry, pixel)
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

    Each polygon is moved into the project's CRS by the project's one CRS rule
    (:func:`.geometry.layer_transform`) and clipped to the box.

    Raises:
        InputError: For a file without a layer or a ``class`` field, geometries that are
            not polygons, a file without a CRS (the project has one), unknown classes, or
            polygons none of which lies in the box (a file in the wrong place: to mark
            a box all clear, use ``cloudseg labels done``).
    """
    from osgeo import gdal, ogr

    path = Path(source).expanduser()
    if not path.exists():
        raise InputError(f"{path} does not exist")
    with quiet_gdal():
        dataset = ogr.Open(str(path)) if path.is_file() else None
    if dataset is None or dataset.GetLayerCount() == 0:
        raise InputError(f"{path} is not a raster or a vector file with polygons")
    layer = dataset.GetLayer(0)
    if layer.GetLayerDefn().GetFieldIndex("class") < 0:
        raise InputError(f"{path.name} has no 'class' field (the model's class values)")
    transform_to = layer_transform(layer.GetSpatialRef(), srs, path.name)
    found, count = [], 0
    for feature in layer:
        what = f"{path.name}: feature {feature.GetFID()}"
        value = class_value(feature.GetField("class"), what)
        shape = polygonal(feature.GetGeometryRef(), what)
        if shape is None or value is None:
            continue
        if value not in classes:
            raise InputError(
                f"{path.name}: class {value} is not one of the model's "
                f"({', '.join(map(str, classes))})"
            )
        count += 1
        shape = valid_area(moved(shape, transform_to, what), what)  # a bow-tie: its lobes
        with quiet_gdal():
            gdal.ErrorReset()
            inside = shape.Intersection(geometry)
            reason = gdal.GetLastErrorMsg().strip()
        if inside is None:  # GEOS refused it: never blamed on the CRS
            raise InputError(f"{what} cannot be clipped to the box ({reason or 'GEOS failed'})")
        if not inside.IsEmpty() and inside.GetArea() > 0:
            found.append((inside, value))
    if count and not found:
        raise InputError(
            f"none of the {count} polygon(s) of {path.name} lies in the box; is its CRS "
            "right? (to mark the box all clear, use cloudseg labels done)"
        )
    return found


RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".img", ".jp2")


def label_box(
    project: str | Path | LabelProject,
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
    there before (later polygons win inside a box). The polygons and the status are
    written in one transaction: a failure adds nothing.

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
    project = project if isinstance(project, LabelProject) else LabelProject(project)
    geometry, srs, proposal = project.proposal(fid)
    if proposal.status == "skipped":
        raise InputError(f"proposal {fid} was skipped; mark it todo again to label it")
    if classes is None:
        from ..models.registry import load_model

        card = load_model(proposal.model).card
        classes = {c.value: c.name for c in card.classes}
    values = sorted(classes)
    clear = next((v for v, n in classes.items() if n == "clear"), values[0])
    status = (fid, "labeled", who) if done else None
    if Path(str(source)).suffix.lower() in RASTER_SUFFIXES:
        data, transform = raster_labels(source, geometry, srs, values)
        keep = np.ones(data.shape, bool)
        return project.add_label_areas(data, keep, transform, classes, srs, status)
    polygons = [(geometry.Clone(), clear), *polygon_labels(source, geometry, srs, values)]
    return project.add_labels(polygons, classes, srs, status)
