"""The label project: one GeoPackage that owns an active-learning project's state.

A label project is a GeoPackage with three layers, and two folders beside it:

- ``proposals`` (polygons): the boxes proposed to label, with ``rank``, ``score`` (mean
  doubt, percent), ``status`` (``todo``, ``labeled``, ``skipped``), ``scene`` (the
  scene's key, :func:`scene_key`), ``model`` (the model that proposed it), ``proposed``,
  ``labeled_by`` and ``labeled_at``;
- ``labels`` (multipolygons): the analyst's class polygons (``class``: the model card's
  class value, ``name``: its name); later polygons win where they overlap;
- ``rounds`` (no geometry): one row per fine-tuning round (:class:`.history.Round`);
- ``<stem>-runs/``: the masks and uncertainty rasters segmented for the project;
- ``<stem>-store/``: the label store its done boxes go to (Zarr + STAC).

:class:`LabelProject` is the only code that opens the GeoPackage. Every operation opens
it once: :meth:`LabelProject.read` returns proposals, labels and rounds together, and
each write is one transaction (a failure writes nothing).

One CRS rule for every geometry read or written (:func:`.geometry.layer_transform`,
with the rest of the loop's pure geometry in :mod:`.geometry`): each layer
keeps its own CRS (a user may reproject one in QGIS or with ogr2ogr); a read for a scene
moves every geometry into the scene's CRS, a write moves the caller's geometries into the
layer's. A layer without a CRS, with a caller that has one (or the reverse), is refused
with one line: its geometries cannot be placed. Layers, fields, class values and
geometry types are checked as they are read; a file that is not a label project is
refused with one line (GDAL's own messages are kept quiet).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..raster.reader import scene_key
from ..raster.vectorize import ogr_checked, ogr_srs, ogr_transaction
from .geometry import (
    Box,
    box_on_grid,
    ground_area_km2,
    layer_transform,
    moved,
    polygonal,
    quiet_gdal,
    spatial_reference,
)
from .history import Round

#: The layer of proposed boxes.
PROPOSALS_LAYER = "proposals"
#: The layer of the analyst's class polygons.
LABELS_LAYER = "labels"
#: The table of fine-tuning rounds.
ROUNDS_LAYER = "rounds"
#: Proposal states: to label, labeled (its labels count), skipped (never proposed again).
STATUSES = ("todo", "labeled", "skipped")
#: Who marked a proposal done and when (UTC, ISO 8601): recorded with the stored labels.
LABEL_FIELDS = ("labeled_by", "labeled_at")
#: The proposals' fields, in the order they are created.
PROPOSAL_FIELDS = (
    ("rank", "int"),
    ("score", "real"),
    ("status", "text"),
    ("scene", "text"),
    ("model", "text"),
    ("proposed", "text"),
    ("labeled_by", "text"),
    ("labeled_at", "text"),
)
_ROUND_JSON = ("iou_before", "iou_after", "held_out", "trained", "scores")
#: The fields every proposals layer has had since the first version: without them a
#: GeoPackage is not a label project (or was damaged), and is refused.
REQUIRED_PROPOSAL_FIELDS = ("rank", "score", "status", "scene", "model")
#: The first bytes of every SQLite file, hence of every GeoPackage.
_SQLITE_HEADER = b"SQLite format 3\x00"


def class_value(raw: Any, what: str) -> int | None:
    """A label's class as a whole number 0-255; None where it has none (not counted).

    Raises:
        InputError: For text that is not a whole number, fractions, or values outside
            0-255 (class values are the model card's; 255 marks unlabeled pixels).
    """
    if raw is None:
        return None
    value: Any = raw
    if isinstance(raw, str):
        try:
            value = int(raw.strip())
        except ValueError:
            value = None
    elif isinstance(raw, float):
        value = int(raw) if raw.is_integer() else None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
        raise InputError(
            f"{what} has class {raw!r}, not a class value (a whole number 0-255: the "
            "model's class values, e.g. 0 clear, 1 cloud, 2 cloud shadow)"
        )
    return value


def login_name() -> str:
    """The analyst's login name, or ``unknown`` where the system has none."""
    try:
        return getpass.getuser()
    except Exception:  # no login name (containers, some services)
        return "unknown"


def now() -> str:
    """The time now, UTC, ISO 8601 to the second (what the project records)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class StoredProposal:
    """A proposal as the project holds it.

    Attributes:
        fid: Its feature id (ranks repeat across rounds; ids do not).
        rank: 1 for the most doubtful box of its round.
        score: Mean doubt in the box, percent.
        status: ``todo``, ``labeled`` or ``skipped``.
        scene: The scene's key (:func:`scene_key`).
        model: The model that proposed it.
        proposed: When it was proposed.
        labeled_by: Who marked it done (None unless labeled).
        labeled_at: When.
        bounds: ``(xmin, ymin, xmax, ymax)`` in the project's CRS.
        area_km2: The box's area on the ground (whatever CRS its layer is in).
    """

    fid: int
    rank: int
    score: float
    status: str
    scene: str
    model: str
    proposed: str | None
    labeled_by: str | None
    labeled_at: str | None
    bounds: tuple[float, float, float, float]
    area_km2: float = 0.0

    def box(self, transform: Any) -> Box:
        """The box on the grid of ``transform`` (the scene's)."""
        return box_on_grid(self.bounds, transform)

    def to_dict(self) -> dict[str, Any]:
        """The proposal as a row (``cloudseg labels boxes --json``)."""
        return {
            "fid": self.fid,
            "rank": self.rank,
            "score": self.score,
            "status": self.status,
            "scene": self.scene,
            "model": self.model,
            "labeled_by": self.labeled_by,
            "labeled_at": self.labeled_at,
        }


@dataclass
class ProjectContents:
    """What a project holds, read in one go (:meth:`LabelProject.read`).

    Attributes:
        proposals: Every proposal (of one scene when read for a scene).
        labels: The label polygons as ``(GeoJSON geometry, class value)``, in order.
        rounds: The fine-tuning rounds, first first.
        layers: The GeoPackage's layer names.
        label_ids: The label polygons' feature ids, in the order of ``labels``.
        unclassed: ``(feature id, (xmin, ymin, xmax, ymax))`` of label polygons without
            a class (not in ``labels``; refused where they lie in a box being stored).
        crs: The CRS the geometries were read in (None: each layer's own).
        read_for: The scene whose proposals were read (None: all).
    """

    proposals: list[StoredProposal] = field(default_factory=list)
    labels: list[tuple[dict[str, Any], int]] = field(default_factory=list)
    rounds: list[Round] = field(default_factory=list)
    layers: set[str] = field(default_factory=set)
    label_ids: list[int] = field(default_factory=list)
    unclassed: list[tuple[int, tuple[float, float, float, float]]] = field(default_factory=list)
    crs: Any = None
    read_for: str | None = None

    def with_status(self, status: str) -> list[StoredProposal]:
        """The proposals with ``status``."""
        return [p for p in self.proposals if p.status == status]

    def next_todo(self, after: int | None = None) -> StoredProposal | None:
        """The box to label next: the best-ranked ``todo`` one after feature ``after``.

        Walking on from the box at hand (ids grow with each round of proposals); from the
        start when none is left after it. None when nothing is left to label.
        """
        todo = self.with_status("todo")
        later = [p for p in todo if after is not None and p.fid > after]
        return min(later or todo, key=lambda p: (p.rank, p.fid), default=None)

    def progress(self) -> str:
        """Done / proposed, skipped, and the area labeled: one line for the analyst."""
        done = self.with_status("labeled")
        skipped = len(self.with_status("skipped"))
        km2 = sum(p.area_km2 for p in done)
        return (
            f"Done {len(done)} / {len(self.proposals) - skipped} proposed"
            + (f", {skipped} skipped" if skipped else "")
            + f"; {km2:.2f} km² labeled."
        )

    def proposal(self, fid: int | None) -> StoredProposal | None:
        """The proposal with feature id ``fid`` (None if there is none)."""
        return next((p for p in self.proposals if p.fid == fid), None)

    @property
    def proposing_model(self) -> str | None:
        """The model of the newest proposal (None before the first)."""
        return max(self.proposals, key=lambda p: p.fid).model if self.proposals else None

    @property
    def scene(self) -> str | None:
        """The scene of the newest proposal (None before the first)."""
        return max(self.proposals, key=lambda p: p.fid).scene if self.proposals else None


class LabelProject:
    """A label project's GeoPackage and its side folders; every read and write.

    Args:
        path: The GeoPackage (``.gpkg``); it need not exist yet: the first proposals
            create it.

    Raises:
        InputError: For a path that is not a ``.gpkg``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if self.path.suffix.lower() != ".gpkg":
            raise InputError(f"the label project {self.path.name} must be a GeoPackage (.gpkg)")

    def __repr__(self) -> str:
        return f"LabelProject({str(self.path)!r})"

    @property
    def name(self) -> str:
        """The project's name (the file's stem)."""
        return self.path.stem

    @property
    def runs_folder(self) -> Path:
        """Where the project's masks and uncertainty rasters are written."""
        return self.path.with_name(f"{self.name}-runs")

    @property
    def store_folder(self) -> Path:
        """The default label store: ``<stem>-store`` beside the project."""
        return self.path.with_name(f"{self.name}-store")

    def exists(self) -> bool:
        """Whether the GeoPackage exists."""
        return self.path.is_file()

    def layer_uri(self, layer: str) -> str:
        """An OGR/QGIS data source for one of the project's layers."""
        return f"{self.path}|layername={layer}"

    # -- opening --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _open(self, write: bool = False, create: bool = False) -> Iterator[Any]:
        """The GeoPackage, open; closed when the block ends.

        Raises:
            InputError: If it does not exist (unless ``create``), is a folder, cannot be
                read or written, or is not a GeoPackage (one line; GDAL prints nothing).
        """
        from osgeo import gdal, ogr

        if self.path.is_dir():
            raise InputError(f"the label project {self.path} is a folder, not a GeoPackage")
        if not self.exists():
            if not create:
                raise InputError(f"the label project {self.path} does not exist; propose first")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with quiet_gdal():
                dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(self.path))
            if dataset is None:
                raise InputError(f"cannot create the label project {self.path}")
        else:
            mode = os.R_OK | (os.W_OK if write else 0)
            if not os.access(self.path, mode):
                raise InputError(
                    f"cannot {'write' if write else 'read'} the label project {self.path} "
                    "(permission denied)"
                )
            with quiet_gdal():
                gdal.ErrorReset()
                try:
                    dataset = ogr.Open(str(self.path), 1 if write else 0)
                except RuntimeError:  # GDAL raising (osgeo.gdal.UseExceptions elsewhere)
                    dataset = None
                reason = gdal.GetLastErrorMsg().strip().splitlines()
            if dataset is None or dataset.GetDriver().GetName() != "GPKG":
                raise InputError(self._not_opened(write, reason[0][:120] if reason else ""))
        try:
            yield dataset
        finally:
            dataset = None

    def _not_opened(self, write: bool, reason: str) -> str:
        """Why the GeoPackage could not be opened, in one line."""
        try:
            with self.path.open("rb") as stream:
                header = stream.read(len(_SQLITE_HEADER))
        except OSError as exc:
            return f"cannot read the label project {self.path} ({exc.strerror or exc})"
        if header != _SQLITE_HEADER:
            return (
                f"the label project {self.path} is not a GeoPackage (not an SQLite file: "
                "damaged, or another format named .gpkg)"
            )
        return (
            f"cannot open the label project {self.path}"
            + (" for writing" if write else "")
            + (f" ({reason})" if reason else "")
            + "; is it a damaged GeoPackage, or one another program holds locked?"
        )

    def _proposals_layer(self, dataset: Any, write: bool = False) -> Any:
        layer = dataset.GetLayerByName(PROPOSALS_LAYER)
        if layer is None:
            raise InputError(f"{self.path.name} has no proposals yet; propose areas first")
        self._check_proposal_fields(layer)
        if write:
            _add_fields(layer, [f for f in PROPOSAL_FIELDS if f[0] in LABEL_FIELDS])
        return layer

    def _check_proposal_fields(self, layer: Any) -> None:
        """Refuse a proposals layer that lacks the fields of every label project."""
        definition = layer.GetLayerDefn()
        missing = [n for n in REQUIRED_PROPOSAL_FIELDS if definition.GetFieldIndex(n) < 0]
        if missing:
            raise InputError(
                f"the proposals layer of {self.path.name} has no {', '.join(missing)} "
                f"field{'s' if len(missing) > 1 else ''}; it is not a cloudseg label project "
                "(or was damaged): propose into a new one"
            )

    def _transform_from(self, layer: Any, crs: Any) -> Any:
        """The layer's geometries into ``crs`` (None: as stored); see :func:`layer_transform`."""
        if crs is None:
            return None
        what = f"the {layer.GetName()} layer of {self.path.name}"
        return layer_transform(layer.GetSpatialRef(), crs, what)

    # -- reading --------------------------------------------------------------------------
    def read(
        self, scene: str | None = None, labels: bool = False, crs: Any = None
    ) -> ProjectContents:
        """Proposals, rounds and (with ``labels``) label polygons, in one opening.

        Args:
            scene: Only this scene's proposals (a key or a scene path; see
                :func:`scene_key`); None: all.
            labels: Also read the label polygons (a project without a ``labels`` layer
                is refused: its boxes would all be read as clear).
            crs: The CRS to read every geometry in (the scene's, rasterio or OGR); each
                layer's own CRS is transformed into it (:func:`layer_transform`). None:
                each layer as stored.

        Returns:
            The contents; empty for a project that does not exist yet.

        Raises:
            InputError: For a file that is not a label project, a layer without a CRS
                (with ``crs``), label geometries that are not polygons, or class values
                that are not whole numbers 0-255.
        """
        key = None if scene is None else scene_key(scene)
        contents = ProjectContents(crs=crs, read_for=key)
        if not self.path.exists():
            return contents
        with self._open() as dataset:
            contents.layers = {
                dataset.GetLayer(i).GetName() for i in range(dataset.GetLayerCount())
            }
            layer = dataset.GetLayerByName(PROPOSALS_LAYER)
            if layer is not None:
                self._check_proposal_fields(layer)
                transformation = self._transform_from(layer, crs)
                for feature in layer:
                    found = _stored_proposal(
                        feature, transformation, self.path, layer.GetSpatialRef()
                    )
                    if key is None or found.scene == key:
                        contents.proposals.append(found)
            if labels:
                shapes = self._label_shapes(dataset, crs, contents.unclassed)
                contents.label_ids = [fid for fid, _, _ in shapes]
                contents.labels = [(shape, value) for _, shape, value in shapes]
            contents.rounds = _read_rounds(dataset.GetLayerByName(ROUNDS_LAYER))
        return contents

    def _label_shapes(
        self, dataset: Any, crs: Any, unclassed: list[Any]
    ) -> list[tuple[int, dict[str, Any], int]]:
        layer = dataset.GetLayerByName(LABELS_LAYER)
        if layer is None:
            if dataset.GetLayerByName(PROPOSALS_LAYER) is None:
                return []
            raise InputError(
                f"{self.path.name} has no labels layer (its boxes would all read as clear); "
                "it was deleted or renamed: restore it, or propose into a new project"
            )
        transformation = self._transform_from(layer, crs)
        return _class_shapes(layer, self.path, transformation, unclassed)

    def rounds(self) -> list[Round]:
        """The fine-tuning rounds, first first (empty before the first)."""
        return self.read().rounds

    def proposal(self, fid: int, crs: Any = None) -> tuple[Any, Any, StoredProposal]:
        """A proposal's polygon (OGR geometry), its spatial reference, its row.

        Args:
            fid: The proposal's feature id.
            crs: The CRS to read it in (see :meth:`read`); None: the layer's own.

        Raises:
            InputError: For an unknown proposal.
        """
        with self._open() as dataset:
            layer = self._proposals_layer(dataset)
            feature = layer.GetFeature(int(fid))
            if feature is None:
                raise InputError(
                    f"{self.path.name} has no proposal {fid} (see cloudseg labels boxes)"
                )
            transformation = self._transform_from(layer, crs)
            srs = spatial_reference(crs) if crs is not None else layer.GetSpatialRef()
            stored = _stored_proposal(feature, transformation, self.path)
            what = f"proposal {fid} of {self.path.name}"
            return (
                moved(feature.GetGeometryRef(), transformation, what),
                srs.Clone() if srs else None,
                stored,
            )

    # -- writing --------------------------------------------------------------------------
    def replace_proposals(
        self,
        boxes: list[tuple[Box, int, float]],
        transform: Any,
        crs: Any,
        scene: str,
        model: str,
    ) -> None:
        """Put a scene's new proposals in; its earlier ``todo`` ones go, the rest stay.

        The ``labels`` layer is created too (in ``crs``) so the analyst can digitize at
        once. One transaction.

        Args:
            boxes: ``(box, rank, score)`` on the grid of ``transform``.
            transform: The scene's (uncertainty raster's) geotransform.
            crs: Its CRS.
            scene: The scene's key.
            model: The model that proposed them.
        """
        from osgeo import ogr

        with self._open(write=True, create=True) as dataset:
            srs = spatial_reference(crs)
            layer = dataset.GetLayerByName(PROPOSALS_LAYER)
            if layer is None:
                layer = dataset.CreateLayer(PROPOSALS_LAYER, srs, ogr.wkbPolygon)
            else:
                self._check_proposal_fields(layer)
            _add_fields(layer, PROPOSAL_FIELDS)
            _labels_layer(dataset, srs)
            into = layer_transform(srs, layer.GetSpatialRef(), "the scene")
            when = now()
            what = f"proposing boxes in {self.path.name}"
            with ogr_transaction(dataset, what):
                quoted = scene.replace("'", "''")
                layer.SetAttributeFilter(f"status = 'todo' AND scene = '{quoted}'")
                stale = [feature.GetFID() for feature in layer]
                layer.SetAttributeFilter(None)
                for fid in stale:
                    ogr_checked(layer.DeleteFeature(fid), what)
                for box, rank, score in boxes:
                    feature = ogr.Feature(layer.GetLayerDefn())
                    shape = ogr.CreateGeometryFromJson(json.dumps(box.polygon(transform)))
                    feature.SetGeometry(moved(shape, into, f"box {rank}"))
                    values = {"rank": rank, "score": score, "status": "todo", "scene": scene}
                    for name, value in (values | {"model": model, "proposed": when}).items():
                        feature.SetField(name, value)
                    ogr_checked(layer.CreateFeature(feature), what)

    def set_status(self, fid: int, status: str, who: str | None = None) -> None:
        """Set a proposal's status: labeled (Done), skipped (Skip), or todo again (Back).

        Done records who labeled the box and when (UTC); the others clear both.

        Raises:
            InputError: For an unknown status or proposal.
        """
        if status not in STATUSES:
            raise InputError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
        with self._open(write=True) as dataset:
            layer = self._proposals_layer(dataset, write=True)
            feature = layer.GetFeature(int(fid))
            if feature is None:
                raise InputError(f"{self.path.name} has no proposal {fid}")
            feature.SetField("status", status)
            if status == "labeled":
                feature.SetField("labeled_by", who or login_name())
                feature.SetField("labeled_at", now())
            else:
                feature.SetFieldNull("labeled_by")
                feature.SetFieldNull("labeled_at")
            with ogr_transaction(dataset, f"marking box {fid} {status} in {self.path.name}"):
                ogr_checked(layer.SetFeature(feature), f"marking box {fid} {status}")

    def ensure_labels_layer(self, crs: Any) -> None:
        """Create the empty ``labels`` layer in ``crs`` if the project has none yet."""
        with self._open(write=True, create=True) as dataset:
            _labels_layer(dataset, ogr_srs(crs))

    def add_labels(
        self,
        polygons: list[tuple[Any, int]],
        names: dict[int, str],
        srs: Any = None,
        status: tuple[int, str, str | None] | None = None,
    ) -> int:
        """Add class polygons to the ``labels`` layer, and set a status, in one transaction.

        Args:
            polygons: ``(OGR geometry, class value)``, in drawing order.
            names: Class value -> name (the ``name`` field).
            srs: The polygons' spatial reference (the ``labels`` layer's when it must be
                created); they are moved into the layer's CRS where it differs.
            status: ``(fid, status, who)`` to set with them (a box marked Done only with
                its labels).

        Returns:
            How many polygons were added.
        """
        from osgeo import ogr

        with self._open(write=True) as dataset:
            layer = _labels_layer(dataset, srs)
            if ogr.GT_Flatten(layer.GetGeomType()) not in (ogr.wkbMultiPolygon, ogr.wkbPolygon):
                raise InputError(
                    f"the labels layer of {self.path.name} holds "
                    f"{ogr.GeometryTypeToName(layer.GetGeomType()).lower()}s, not polygons"
                )
            into = layer_transform(srs, layer.GetSpatialRef(), "the label source")
            proposals = self._proposals_layer(dataset, write=True) if status else None
            what = f"adding labels to {self.path.name}"
            with ogr_transaction(dataset, what):
                for shape, value in polygons:
                    feature = ogr.Feature(layer.GetLayerDefn())
                    polygon = moved(shape, into, "a label polygon")
                    if ogr.GT_Flatten(layer.GetGeomType()) == ogr.wkbMultiPolygon:
                        polygon = ogr.ForceToMultiPolygon(polygon)
                    feature.SetGeometry(polygon)
                    feature.SetField("class", int(value))
                    feature.SetField("name", names.get(int(value), str(int(value))))
                    ogr_checked(layer.CreateFeature(feature), what)
                if status and proposals is not None:
                    fid, state, who = status
                    feature = proposals.GetFeature(int(fid))
                    if feature is None:
                        raise InputError(f"{self.path.name} has no proposal {fid}")
                    feature.SetField("status", state)
                    feature.SetField("labeled_by", who or login_name())
                    feature.SetField("labeled_at", now())
                    ogr_checked(proposals.SetFeature(feature), f"marking box {fid} {state}")
        return len(polygons)

    def add_label_areas(
        self,
        data: np.ndarray,
        keep: np.ndarray,
        transform: Any,
        names: dict[int, str],
        srs: Any = None,
        status: tuple[int, str, str | None] | None = None,
    ) -> int:
        """Add the areas of a class raster where ``keep`` as polygons (8-connected).

        One polygon per connected area of one class; see :meth:`add_labels`.
        """
        from osgeo import ogr
        from rasterio.features import shapes

        polygons = [
            (ogr.CreateGeometryFromJson(json.dumps(geometry)), int(value))
            for geometry, value in shapes(data, mask=keep, transform=transform, connectivity=8)
        ]
        return self.add_labels(polygons, names, srs, status)

    def append_round(self, entry: Round) -> None:
        """Add a round to the history, in one transaction.

        A project of an earlier version gains the fields it lacks.
        """
        from osgeo import ogr

        with self._open(write=True) as dataset:
            layer = dataset.GetLayerByName(ROUNDS_LAYER)
            values = entry.to_dict()
            if layer is None:
                layer = dataset.CreateLayer(ROUNDS_LAYER, None, ogr.wkbNone)
            kinds = {bool: ogr.OFTInteger, int: ogr.OFTInteger, float: ogr.OFTReal}
            definition = layer.GetLayerDefn()
            for name, value in values.items():
                if definition.GetFieldIndex(name) < 0:
                    layer.CreateField(ogr.FieldDefn(name, kinds.get(type(value), ogr.OFTString)))
            what = f"recording the round in {self.path.name}"
            with ogr_transaction(dataset, what):
                feature = ogr.Feature(layer.GetLayerDefn())
                for name, value in values.items():
                    if name in _ROUND_JSON:
                        value = json.dumps(value)
                    feature.SetField(name, int(value) if isinstance(value, bool) else value)
                ogr_checked(layer.CreateFeature(feature), what)


def class_polygons(
    path: str | Path, layer_name: str, where: str | None = None, crs: Any = None
) -> list[tuple[dict[str, Any], int]] | None:
    """A GeoPackage layer's class polygons as ``(GeoJSON geometry, class value)``, in order.

    For GeoPackages of class polygons other than a label project's (a review's
    corrections).

    Args:
        path: The GeoPackage.
        layer_name: The layer.
        where: An OGR attribute filter; all polygons when None.
        crs: The CRS to read them in (see :func:`layer_transform`); None: the layer's.

    Returns:
        The polygons; None when there is no such file or layer.

    Raises:
        InputError: If the layer has no ``class`` field, holds other geometries than
            polygons or class values that are not whole numbers 0-255.
    """
    from osgeo import ogr

    path = Path(path).expanduser()
    with quiet_gdal():
        dataset = ogr.Open(str(path)) if path.is_file() else None
    layer = dataset.GetLayerByName(layer_name) if dataset else None
    if layer is None:
        return None
    layer.SetAttributeFilter(where)
    what = f"the {layer_name} layer of {path.name}"
    transformation = None if crs is None else layer_transform(layer.GetSpatialRef(), crs, what)
    return [(shape, value) for _, shape, value in _class_shapes(layer, path, transformation)]


def add_class_polygons(
    dataset: Any,
    layer: Any,
    data: np.ndarray,
    keep: np.ndarray,
    transform: Any,
    names: dict[int, str],
    fields: dict[str, str] | None = None,
) -> int:
    """Add the areas of ``data`` where ``keep`` to an open layer (class, name, ``fields``).

    One polygon per connected area of one class (8-connected), in one transaction: a
    failure adds nothing. Returns how many were added.
    """
    from osgeo import ogr
    from rasterio.features import shapes

    added = 0
    what = "adding class polygons"
    with ogr_transaction(dataset, what):
        for geometry, value in shapes(data, mask=keep, transform=transform, connectivity=8):
            feature = ogr.Feature(layer.GetLayerDefn())
            polygon = ogr.CreateGeometryFromJson(json.dumps(geometry))
            feature.SetGeometry(ogr.ForceToMultiPolygon(polygon))
            feature.SetField("class", int(value))
            feature.SetField("name", names.get(int(value), str(int(value))))
            for key, text in (fields or {}).items():
                feature.SetField(key, text)
            ogr_checked(layer.CreateFeature(feature), what)
            added += 1
    return added


def _add_fields(layer: Any, fields: Any) -> None:
    """Add the ``(name, kind)`` fields a layer lacks (projects of earlier versions)."""
    from osgeo import ogr

    kinds = {"int": ogr.OFTInteger, "real": ogr.OFTReal, "text": ogr.OFTString}
    definition = layer.GetLayerDefn()
    for name, kind in fields:
        if definition.GetFieldIndex(name) < 0:
            layer.CreateField(ogr.FieldDefn(name, kinds[kind]))


def _labels_layer(dataset: Any, srs: Any) -> Any:
    """The ``labels`` layer, created (class, name) when missing."""
    from osgeo import ogr

    layer = dataset.GetLayerByName(LABELS_LAYER)
    if layer is None:
        layer = dataset.CreateLayer(LABELS_LAYER, srs, ogr.wkbMultiPolygon)
        layer.CreateField(ogr.FieldDefn("class", ogr.OFTInteger))
        layer.CreateField(ogr.FieldDefn("name", ogr.OFTString))
    return layer


def _stored_proposal(
    feature: Any, transformation: Any, path: Path, srs: Any = None
) -> StoredProposal:
    """A proposal's row, its bounds in the CRS ``transformation`` leads to (None: stored).

    ``srs`` is the layer's own CRS, in which the box's ground area is measured.
    """
    values = feature.items()
    fid = feature.GetFID()
    what = f"proposal {fid} of {path.name}"
    if feature.GetGeometryRef() is None or feature.GetGeometryRef().IsEmpty():
        raise InputError(f"{what} has no geometry; delete it or propose again")
    status = values.get("status") or "todo"
    if status not in STATUSES:
        raise InputError(f"{what} has status {status!r}, not one of {', '.join(STATUSES)}")
    xmin, xmax, ymin, ymax = moved(feature.GetGeometryRef(), transformation, what).GetEnvelope()
    return StoredProposal(
        fid=fid,
        rank=int(values.get("rank") or 0),
        score=float(values.get("score") or 0.0),
        status=status,
        scene=values.get("scene") or "",
        model=values.get("model") or "",
        proposed=values.get("proposed"),
        labeled_by=values.get("labeled_by"),
        labeled_at=values.get("labeled_at"),
        bounds=(xmin, ymin, xmax, ymax),
        area_km2=ground_area_km2(feature.GetGeometryRef(), srs),
    )


def _class_shapes(
    layer: Any, path: Path, transformation: Any = None, unclassed: list[Any] | None = None
) -> list[tuple[int, dict[str, Any], int]]:
    """A layer's class polygons as ``(feature id, GeoJSON geometry, class value)``.

    Features without a geometry or a class are not counted (a polygon still being
    drawn; those without a class go to ``unclassed`` as ``(fid, bounds)``); every other
    one is checked: a polygon, a whole class number 0-255, and coordinates that move
    into the target CRS.
    """
    name = layer.GetName()
    if layer.GetLayerDefn().GetFieldIndex("class") < 0:
        raise InputError(f"the {name} layer of {path.name} has no 'class' field")
    found = []
    for feature in layer:
        fid = feature.GetFID()
        what = f"polygon {fid} of the {name} layer of {path.name}"
        value = class_value(feature.GetField("class"), what)
        shape = polygonal(feature.GetGeometryRef(), what)
        if shape is None:
            continue
        shape = moved(shape, transformation, what)
        if value is None:
            if unclassed is not None:
                xmin, xmax, ymin, ymax = shape.GetEnvelope()
                unclassed.append((fid, (xmin, ymin, xmax, ymax)))
            continue
        found.append((fid, json.loads(shape.ExportToJson()), value))
    return found


def _read_rounds(layer: Any) -> list[Round]:
    if layer is None:
        return []
    rounds = []
    for feature in layer:
        values = feature.items()
        for name in _ROUND_JSON:
            values[name] = (
                json.loads(values.get(name) or "null")
                or Round.__dataclass_fields__[name].default_factory()
            )
        if values.get("adopted") is None:  # rounds of before the judge were all adopted
            values["adopted"] = True
        values["adopted"] = bool(values["adopted"])
        values = {k: v for k, v in values.items() if v is not None}
        rounds.append(Round(**{k: v for k, v in values.items() if k in Round.__annotations__}))
    return sorted(rounds, key=lambda r: r.round)


__all__ = [
    "LABELS_LAYER",
    "PROPOSALS_LAYER",
    "REQUIRED_PROPOSAL_FIELDS",
    "ROUNDS_LAYER",
    "STATUSES",
    "LabelProject",
    "ProjectContents",
    "StoredProposal",
    "add_class_polygons",
    "class_polygons",
    "class_value",
    "login_name",
    "scene_key",
]
