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
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..raster.reader import scene_key
from ..raster.vectorize import ogr_srs, ogr_transaction
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
class Box:
    """A square of the scene's grid: rows ``row..row + size``, columns ``col..col + size``."""

    row: int
    col: int
    size: int

    def overlaps(self, other: Box) -> bool:
        """Whether the two boxes share a pixel."""
        return not (
            self.row + self.size <= other.row
            or other.row + other.size <= self.row
            or self.col + self.size <= other.col
            or other.col + other.size <= self.col
        )

    def polygon(self, transform: Any) -> dict[str, Any]:
        """The box as a GeoJSON polygon in the CRS of ``transform``."""
        corners = [
            transform * (self.col, self.row),
            transform * (self.col + self.size, self.row),
            transform * (self.col + self.size, self.row + self.size),
            transform * (self.col, self.row + self.size),
        ]
        return {"type": "Polygon", "coordinates": [[*map(list, corners), list(corners[0])]]}


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

    def box(self, transform: Any) -> Box:
        """The box on the grid of ``transform`` (the scene's)."""
        xmin, ymin, xmax, ymax = self.bounds
        inverse = ~transform
        col0, row0 = inverse * (xmin, ymax)
        col1, _ = inverse * (xmax, ymin)
        return Box(round(row0), round(col0), round(col1 - col0))

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
    """

    proposals: list[StoredProposal] = field(default_factory=list)
    labels: list[tuple[dict[str, Any], int]] = field(default_factory=list)
    rounds: list[Round] = field(default_factory=list)
    layers: set[str] = field(default_factory=set)

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
        km2 = sum((b[2] - b[0]) * (b[3] - b[1]) for b in (p.bounds for p in done)) / 1e6
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
            InputError: If it does not exist (unless ``create``) or cannot be opened.
        """
        from osgeo import ogr

        if not self.exists():
            if not create:
                raise InputError(f"the label project {self.path} does not exist; propose first")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(self.path))
        else:
            try:
                dataset = ogr.Open(str(self.path), 1 if write else 0)
            except RuntimeError:  # GDAL raising (osgeo.gdal.UseExceptions elsewhere)
                dataset = None
        if dataset is None:
            raise InputError(
                f"cannot open the label project {self.path}"
                + (" for writing" if write else "")
                + "; is it a GeoPackage that another program holds locked?"
            )
        try:
            yield dataset
        finally:
            dataset = None

    def _proposals_layer(self, dataset: Any) -> Any:
        layer = dataset.GetLayerByName(PROPOSALS_LAYER)
        if layer is None:
            raise InputError(f"{self.path.name} has no proposals yet; propose areas first")
        _add_fields(layer, [f for f in PROPOSAL_FIELDS if f[0] in LABEL_FIELDS])
        return layer

    # -- reading --------------------------------------------------------------------------
    def read(self, scene: str | None = None, labels: bool = False) -> ProjectContents:
        """Proposals, rounds and (with ``labels``) label polygons, in one opening.

        Args:
            scene: Only this scene's proposals (a key or a scene path; see
                :func:`scene_key`); None: all.
            labels: Also read the label polygons.

        Returns:
            The contents; empty for a project that does not exist yet.
        """
        contents = ProjectContents()
        if not self.exists():
            return contents
        key = None if scene is None else scene_key(scene)
        with self._open() as dataset:
            contents.layers = {
                dataset.GetLayer(i).GetName() for i in range(dataset.GetLayerCount())
            }
            layer = dataset.GetLayerByName(PROPOSALS_LAYER)
            for feature in layer or []:
                found = _stored_proposal(feature)
                if key is None or found.scene == key:
                    contents.proposals.append(found)
            if labels:
                contents.labels = _read_label_shapes(dataset, self.path)
            contents.rounds = _read_rounds(dataset.GetLayerByName(ROUNDS_LAYER))
        return contents

    def rounds(self) -> list[Round]:
        """The fine-tuning rounds, first first (empty before the first)."""
        return self.read().rounds

    def proposal(self, fid: int) -> tuple[Any, Any, StoredProposal]:
        """A proposal's polygon (OGR geometry), the project's spatial reference, its row.

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
            srs = layer.GetSpatialRef()
            return (
                feature.GetGeometryRef().Clone(),
                srs.Clone() if srs else None,
                _stored_proposal(feature),
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
            srs = ogr_srs(crs)
            layer = dataset.GetLayerByName(PROPOSALS_LAYER)
            if layer is None:
                layer = dataset.CreateLayer(PROPOSALS_LAYER, srs, ogr.wkbPolygon)
            _add_fields(layer, PROPOSAL_FIELDS)
            _labels_layer(dataset, srs)
            when = now()
            with ogr_transaction(dataset):
                quoted = scene.replace("'", "''")
                layer.SetAttributeFilter(f"status = 'todo' AND scene = '{quoted}'")
                stale = [feature.GetFID() for feature in layer]
                layer.SetAttributeFilter(None)
                for fid in stale:
                    layer.DeleteFeature(fid)
                for box, rank, score in boxes:
                    feature = ogr.Feature(layer.GetLayerDefn())
                    shape = ogr.CreateGeometryFromJson(json.dumps(box.polygon(transform)))
                    feature.SetGeometry(shape)
                    values = {"rank": rank, "score": score, "status": "todo", "scene": scene}
                    for name, value in (values | {"model": model, "proposed": when}).items():
                        feature.SetField(name, value)
                    layer.CreateFeature(feature)

    def set_status(self, fid: int, status: str, who: str | None = None) -> None:
        """Set a proposal's status: labeled (Done), skipped (Skip), or todo again (Back).

        Done records who labeled the box and when (UTC); the others clear both.

        Raises:
            InputError: For an unknown status or proposal.
        """
        if status not in STATUSES:
            raise InputError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
        with self._open(write=True) as dataset:
            layer = self._proposals_layer(dataset)
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
            layer.SetFeature(feature)

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
            srs: The layer's spatial reference if it must be created.
            status: ``(fid, status, who)`` to set with them (a box marked Done only with
                its labels).

        Returns:
            How many polygons were added.
        """
        from osgeo import ogr

        with self._open(write=True) as dataset:
            layer = _labels_layer(dataset, srs)
            proposals = self._proposals_layer(dataset) if status else None
            with ogr_transaction(dataset):
                for shape, value in polygons:
                    feature = ogr.Feature(layer.GetLayerDefn())
                    feature.SetGeometry(ogr.ForceToMultiPolygon(shape))
                    feature.SetField("class", int(value))
                    feature.SetField("name", names.get(int(value), str(int(value))))
                    layer.CreateFeature(feature)
                if status and proposals is not None:
                    fid, state, who = status
                    feature = proposals.GetFeature(int(fid))
                    if feature is None:
                        raise InputError(f"{self.path.name} has no proposal {fid}")
                    feature.SetField("status", state)
                    feature.SetField("labeled_by", who or login_name())
                    feature.SetField("labeled_at", now())
                    proposals.SetFeature(feature)
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
            with ogr_transaction(dataset):
                feature = ogr.Feature(layer.GetLayerDefn())
                for name, value in values.items():
                    if name in _ROUND_JSON:
                        value = json.dumps(value)
                    feature.SetField(name, int(value) if isinstance(value, bool) else value)
                layer.CreateFeature(feature)


def class_polygons(
    path: str | Path, layer_name: str, where: str | None = None
) -> list[tuple[dict[str, Any], int]] | None:
    """A GeoPackage layer's class polygons as ``(GeoJSON geometry, class value)``, in order.

    For GeoPackages of class polygons other than a label project's (a review's
    corrections).

    Args:
        path: The GeoPackage.
        layer_name: The layer.
        where: An OGR attribute filter; all polygons when None.

    Returns:
        The polygons; None when there is no such file or layer.

    Raises:
        InputError: If the layer has no ``class`` field.
    """
    from osgeo import ogr

    path = Path(path).expanduser()
    dataset = ogr.Open(str(path)) if path.is_file() else None
    layer = dataset.GetLayerByName(layer_name) if dataset else None
    if layer is None:
        return None
    layer.SetAttributeFilter(where)
    return _class_shapes(layer, path)


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


def _stored_proposal(feature: Any) -> StoredProposal:
    values = feature.items()
    xmin, xmax, ymin, ymax = feature.GetGeometryRef().GetEnvelope()
    return StoredProposal(
        fid=feature.GetFID(),
        rank=int(values.get("rank") or 0),
        score=float(values.get("score") or 0.0),
        status=values.get("status") or "todo",
        scene=values.get("scene") or "",
        model=values.get("model") or "",
        proposed=values.get("proposed"),
        labeled_by=values.get("labeled_by"),
        labeled_at=values.get("labeled_at"),
        bounds=(xmin, ymin, xmax, ymax),
    )


def _read_label_shapes(dataset: Any, path: Path) -> list[tuple[dict[str, Any], int]]:
    layer = dataset.GetLayerByName(LABELS_LAYER)
    return [] if layer is None else _class_shapes(layer, path)


def _class_shapes(layer: Any, path: Path) -> list[tuple[dict[str, Any], int]]:
    if layer.GetLayerDefn().GetFieldIndex("class") < 0:
        raise InputError(f"the {layer.GetName()} layer of {path.name} has no 'class' field")
    return [
        (json.loads(f.GetGeometryRef().ExportToJson()), int(f.GetField("class")))
        for f in layer
        if f.GetGeometryRef() is not None and f.GetField("class") is not None
    ]


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
    "ROUNDS_LAYER",
    "STATUSES",
    "Box",
    "LabelProject",
    "ProjectContents",
    "StoredProposal",
    "add_class_polygons",
    "class_polygons",
    "login_name",
    "scene_key",
]
