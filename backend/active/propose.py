"""Propose the boxes an analyst should label next: where the model is least sure.

The scene's uncertainty raster (``cloudseg segment --uncertainty``) is averaged over
candidate boxes on a half-box grid (read shrunk by GDAL, so memory follows the grid,
not the scene); boxes are ranked by their mean doubt and chosen greedily so that no two
overlap and none overlaps a box already labeled or skipped. The proposals go into the
label project's GeoPackage, layer ``proposals`` (rank, score, status, scene, model),
in one transaction: an earlier round's unlabeled proposals are replaced, labeled and
skipped ones are kept.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..raster.vectorize import ogr_srs, ogr_transaction

#: The layer of a label project that holds the proposals.
PROPOSALS_LAYER = "proposals"
#: Proposal states: to label, labeled (its labels count), skipped (never proposed again).
STATUSES = ("todo", "labeled", "skipped")
#: Boxes with more nodata than this share are not proposed.
MAX_NODATA_SHARE = 0.5


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


@dataclass(frozen=True)
class Proposal:
    """A box to label, ranked by the model's mean doubt in it (0-100)."""

    rank: int
    score: float
    box: Box


def rank_boxes(
    doubt: np.ndarray, box: int, count: int, avoid: list[Box] | None = None
) -> list[Proposal]:
    """The ``count`` most doubtful boxes of ``box`` px: non-overlapping, none over ``avoid``.

    Args:
        doubt: ``(rows, cols)`` uncertainty in percent, NaN where there is no data.
        box: Box edge in pixels.
        count: How many boxes at most.
        avoid: Boxes already labeled or skipped.

    Returns:
        Proposals, highest mean doubt first (rank 1).
    """
    rows, cols = doubt.shape
    if rows < box or cols < box:
        raise InputError(f"the scene ({cols} x {rows} px) is smaller than one {box} px box")
    step = max(box // 2, 1)
    valid = np.isfinite(doubt)
    filled = np.where(valid, doubt, 0.0)
    # Sums over every box by an integral image: O(pixels), exact for any grid.
    total = np.pad(filled, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    count_valid = np.pad(valid.astype(np.int64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    starts_r = list(range(0, rows - box + 1, step))
    starts_c = list(range(0, cols - box + 1, step))
    if starts_r[-1] != rows - box:
        starts_r.append(rows - box)
    if starts_c[-1] != cols - box:
        starts_c.append(cols - box)
    r = np.array(starts_r)[:, None]
    c = np.array(starts_c)[None, :]

    def box_sum(table: np.ndarray) -> np.ndarray:
        return table[r + box, c + box] - table[r, c + box] - table[r + box, c] + table[r, c]

    n = box_sum(count_valid)
    score = np.where(n >= (1 - MAX_NODATA_SHARE) * box * box, box_sum(total) / np.maximum(n, 1), -1)
    order = np.argsort(-score, axis=None, kind="stable")
    chosen: list[Proposal] = []
    blocked = list(avoid or [])
    for flat in order:
        value = float(score.flat[flat])
        if value < 0 or len(chosen) >= count:
            break
        i, j = divmod(int(flat), score.shape[1])
        candidate = Box(int(starts_r[i]), int(starts_c[j]), box)
        if any(candidate.overlaps(other) for other in blocked):
            continue
        chosen.append(Proposal(len(chosen) + 1, round(value, 3), candidate))
        blocked.append(candidate)
    return chosen


def read_doubt(path: Path) -> tuple[np.ndarray, object, object]:
    """An uncertainty raster as percent (NaN where no data), with its transform and CRS."""
    import rasterio

    with rasterio.open(path) as ds:
        if "CLOUDSEG_UNCERTAINTY" not in ds.tags():
            raise InputError(
                f"{path} is not an uncertainty raster; write one with cloudseg segment "
                "--uncertainty"
            )
        data = ds.read(1, masked=True)
        return data.astype(np.float32).filled(np.nan), ds.transform, ds.crs


def box_of(geometry: Any, transform: Any) -> Box:
    """The box a proposal's polygon covers, on the grid of ``transform``."""
    xmin, xmax, ymin, ymax = geometry.GetEnvelope()
    inverse = ~transform
    col0, row0 = inverse * (xmin, ymax)
    col1, _ = inverse * (xmax, ymin)
    return Box(round(row0), round(col0), round(col1 - col0))


def read_proposals(project: Path, transform: Any) -> list[tuple[Box, dict[str, Any]]] | None:
    """A label project's proposals: each box on the scene's grid with its fields.

    Returns:
        ``(box, {"fid", "rank", "status", "model"...})`` per proposal, or None when the
        project has no proposals layer (or does not exist).
    """
    from osgeo import ogr

    dataset = ogr.Open(str(project)) if project.is_file() else None
    layer = dataset.GetLayerByName(PROPOSALS_LAYER) if dataset else None
    if layer is None:
        return None
    return [(box_of(f.GetGeometryRef(), transform), {"fid": f.GetFID()} | f.items()) for f in layer]


#: Who marked a proposal done and when (UTC, ISO 8601): recorded with the stored labels.
LABEL_FIELDS = ("labeled_by", "labeled_at")


def add_label_fields(layer: Any) -> None:
    """Add the ``labeled_by`` and ``labeled_at`` fields to a proposals layer without them."""
    from osgeo import ogr

    definition = layer.GetLayerDefn()
    for name in LABEL_FIELDS:
        if definition.GetFieldIndex(name) < 0:
            layer.CreateField(ogr.FieldDefn(name, ogr.OFTString))


def write_proposals(
    project: Path,
    proposals: list[Proposal],
    transform: object,
    crs: object,
    scene: str,
    model: str,
) -> None:
    """Put proposals into the project's ``proposals`` layer, in one transaction.

    Earlier ``todo`` proposals are replaced; labeled and skipped ones stay.
    """
    from osgeo import ogr

    driver = ogr.GetDriverByName("GPKG")
    dataset = (
        ogr.Open(str(project), 1) if project.is_file() else driver.CreateDataSource(str(project))
    )
    if dataset is None:
        raise InputError(f"cannot open or create the label project {project}")
    layer = dataset.GetLayerByName(PROPOSALS_LAYER)
    if layer is None:
        layer = dataset.CreateLayer(PROPOSALS_LAYER, ogr_srs(crs), ogr.wkbPolygon)
        for name, kind in (
            ("rank", ogr.OFTInteger),
            ("score", ogr.OFTReal),
            ("status", ogr.OFTString),
            ("scene", ogr.OFTString),
            ("model", ogr.OFTString),
            ("proposed", ogr.OFTString),
        ):
            layer.CreateField(ogr.FieldDefn(name, kind))
        add_label_fields(layer)
    try:
        with ogr_transaction(dataset):
            layer.SetAttributeFilter("status = 'todo'")
            stale = [feature.GetFID() for feature in layer]
            layer.SetAttributeFilter(None)
            for fid in stale:
                layer.DeleteFeature(fid)
            when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            for proposal in proposals:
                feature = ogr.Feature(layer.GetLayerDefn())
                b = proposal.box
                corners = [
                    transform * (b.col, b.row),
                    transform * (b.col + b.size, b.row),
                    transform * (b.col + b.size, b.row + b.size),
                    transform * (b.col, b.row + b.size),
                ]
                ring = ogr.Geometry(ogr.wkbLinearRing)
                for x, y in [*corners, corners[0]]:
                    ring.AddPoint_2D(x, y)
                polygon = ogr.Geometry(ogr.wkbPolygon)
                polygon.AddGeometry(ring)
                feature.SetGeometry(polygon)
                for name, value in (
                    ("rank", proposal.rank),
                    ("score", proposal.score),
                    ("status", "todo"),
                    ("scene", scene),
                    ("model", model),
                    ("proposed", when),
                ):
                    feature.SetField(name, value)
                layer.CreateFeature(feature)
    finally:
        dataset = None


def propose(
    uncertainty: str | Path,
    project: str | Path,
    box: int = 128,
    count: int = 20,
    scene: str = "",
) -> list[Proposal]:
    """Propose the most doubtful boxes of a scene into a label project.

    Args:
        uncertainty: The scene's uncertainty raster (``cloudseg segment --uncertainty``).
        project: The label project's GeoPackage (created if missing).
        box: Box edge in pixels (a box an analyst labels in a minute or two).
        count: How many boxes.
        scene: The scene's name, recorded with each proposal.

    Returns:
        The new proposals, highest doubt first.

    Raises:
        InputError: For a raster that is not an uncertainty raster, or a box too large.
    """
    import rasterio

    path, project = Path(uncertainty).expanduser(), Path(project).expanduser()
    if box < 8 or count < 1:
        raise InputError("the box must be at least 8 px and the count at least 1")
    if project.suffix.lower() != ".gpkg":
        raise InputError(f"the label project {project.name} must be a GeoPackage (.gpkg)")
    doubt, transform, crs = read_doubt(path)
    with rasterio.open(path) as ds:
        model = ds.tags().get("CLOUDSEG_MODEL", "")
    done = [b for b, f in read_proposals(project, transform) or [] if f["status"] != "todo"]
    proposals = rank_boxes(doubt, box, count, done)
    write_proposals(project, proposals, transform, crs, scene or path.stem, model)
    return proposals


__all__ = ["Box", "Proposal", "propose", "rank_boxes", "read_proposals"]
