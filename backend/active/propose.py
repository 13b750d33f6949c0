"""Propose the boxes an analyst should label next: where the model is least sure.

The scene's uncertainty raster (``cloudseg segment --uncertainty``) is averaged over
candidate boxes on a half-box grid (read shrunk by GDAL, so memory follows the grid,
not the scene); boxes are ranked by their mean doubt and chosen greedily so that no two
overlap and none overlaps a box already labeled or skipped. The proposals go into the
label project (:class:`.project.LabelProject`) in one transaction: an earlier round's
unlabeled proposals of the scene are replaced, labeled and skipped ones are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..raster.reader import scene_key
from .project import Box, LabelProject

#: Boxes with more nodata than this share are not proposed.
MAX_NODATA_SHARE = 0.5


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


def is_uncertainty_raster(path: str | Path) -> bool:
    """Whether ``path`` is an uncertainty raster written by ``cloudseg segment``."""
    import rasterio

    path = Path(path).expanduser()
    if not path.is_file():
        return False
    try:
        with rasterio.open(path) as ds:
            return "CLOUDSEG_UNCERTAINTY" in ds.tags()
    except rasterio.errors.RasterioIOError:
        return False


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


def propose(
    uncertainty: str | Path,
    project: str | Path | LabelProject,
    box: int = 128,
    count: int = 20,
    scene: str | Path | None = None,
) -> list[Proposal]:
    """Propose the most doubtful boxes of a scene into a label project.

    Args:
        uncertainty: The scene's uncertainty raster (``cloudseg segment --uncertainty``).
        project: The label project (its GeoPackage is created if missing).
        box: Box edge in pixels (a box an analyst labels in a minute or two).
        count: How many boxes.
        scene: The scene (its path, or its key); default the scene the raster records
            (``CLOUDSEG_SCENE``).

    Returns:
        The new proposals, highest doubt first.

    Raises:
        InputError: For a raster that is not an uncertainty raster, a box too large, or
            a raster that does not say its scene when none is given.
    """
    import rasterio

    path = Path(uncertainty).expanduser()
    project = project if isinstance(project, LabelProject) else LabelProject(project)
    if box < 8 or count < 1:
        raise InputError("the box must be at least 8 px and the count at least 1")
    doubt, transform, crs = read_doubt(path)
    with rasterio.open(path) as ds:
        tags = ds.tags()
    key = scene_key(scene) if scene else tags.get("CLOUDSEG_SCENE")
    if not key:
        raise InputError(
            f"{path.name} does not record its scene (made by an earlier cloudseg); give the "
            "scene (--scene)"
        )
    held = project.read(scene=key, crs=crs).proposals  # on the raster's grid
    done = [p.box(transform) for p in held if p.status != "todo"]
    proposals = rank_boxes(doubt, box, count, done)
    project.replace_proposals(
        [(p.box, p.rank, p.score) for p in proposals],
        transform,
        crs,
        key,
        tags.get("CLOUDSEG_MODEL", ""),
    )
    return proposals


__all__ = [
    "MAX_NODATA_SHARE",
    "Box",
    "Proposal",
    "is_uncertainty_raster",
    "propose",
    "rank_boxes",
    "read_doubt",
]
