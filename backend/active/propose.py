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
from ..inference.decision import NODATA
from ..raster.reader import scene_key
from .geometry import Box
from .judge import held_out_target
from .project import LabelProject

#: Boxes with more nodata than this share are not proposed.
MAX_NODATA_SHARE = 0.5


@dataclass(frozen=True)
class Proposal:
    """A box to label, ranked by the model's mean doubt in it (0-100)."""

    rank: int
    score: float
    box: Box


def rank_boxes(
    doubt: np.ndarray,
    box: int,
    count: int,
    avoid: list[Box] | None = None,
    classes: np.ndarray | None = None,
    done: int = 0,
) -> list[Proposal]:
    """The ``count`` most doubtful boxes of ``box`` px: non-overlapping, none over ``avoid``.

    With the model's class raster, the boxes that will be held out to judge a round
    (the ranks :func:`~.judge.held_out_target` holds out, counting ``done`` boxes
    labeled before) are chosen for coverage first: the most doubtful box that holds
    :data:`~.judge.MIN_CLASS_PIXELS` (at most a tenth of the box) of the most classes
    the held-out boxes lack so far. So after 8 boxes every class the model finds in the
    scene can be judged, and an analyst shown only cloud edges still protects clear
    ground. Every other rank is the most doubtful box.

    Args:
        doubt: ``(rows, cols)`` uncertainty in percent, NaN where there is no data.
        box: Box edge in pixels.
        count: How many boxes at most.
        avoid: Boxes already labeled or skipped.
        classes: The same run's class raster on the same grid (None: doubt alone).
        done: Boxes labeled before these (where the held-out ranks continue).

    Returns:
        Proposals in the order to label them (rank 1 first); ``score`` is the mean doubt.
    """
    rows, cols = doubt.shape
    if rows < box or cols < box:
        raise InputError(f"the scene ({cols} x {rows} px) is smaller than one {box} px box")
    step = max(box // 2, 1)
    valid = np.isfinite(doubt)
    filled = np.where(valid, doubt, 0.0)
    # Sums over every box by an integral image: O(pixels), exact for any grid.
    total = _integral(filled)
    count_valid = _integral(valid.astype(np.int64))
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
    # Per box and class: whether it holds enough of the class to judge it.
    holds = None
    if classes is not None:
        from .judge import MIN_CLASS_PIXELS

        enough = min(MIN_CLASS_PIXELS, box * box // 10)
        found = classes[classes != NODATA]
        kinds = int(found.max()) + 1 if found.size else 0
        holds = np.stack(
            [box_sum(_integral((classes == k).astype(np.int64))) >= enough for k in range(kinds)]
        )
    chosen: list[Proposal] = []
    blocked = list(avoid or [])
    missing = set(range(holds.shape[0])) if holds is not None else set()
    if holds is not None:  # only classes some box can show
        missing = {k for k in missing if (holds[k] & (score >= 0)).any()}
    while len(chosen) < count:
        rank = len(chosen) + 1
        held = held_out_target(done + rank) > held_out_target(done + rank - 1)
        pick = _next_box(order, score, starts_r, starts_c, box, blocked,
                         holds if held and missing else None, missing)  # fmt: skip
        if pick is None:
            break
        value, candidate, covered = pick
        chosen.append(Proposal(rank, round(value, 3), candidate))
        blocked.append(candidate)
        if held:
            missing -= covered
    return chosen


def _integral(values: np.ndarray) -> np.ndarray:
    """The integral image of ``values``, a zero row and column first (box sums in O(1))."""
    return np.pad(values, ((1, 0), (1, 0))).cumsum(0).cumsum(1)


def _next_box(
    order: np.ndarray,
    score: np.ndarray,
    starts_r: list[int],
    starts_c: list[int],
    box: int,
    blocked: list[Box],
    holds: np.ndarray | None,
    missing: set[int],
) -> tuple[float, Box, set[int]] | None:
    """The most doubtful free box; with ``holds``, the one covering most ``missing`` classes."""
    best: tuple[int, float, Box, set[int]] | None = None
    for flat in order:
        value = float(score.flat[flat])
        if value < 0:
            break
        i, j = divmod(int(flat), score.shape[1])
        candidate = Box(int(starts_r[i]), int(starts_c[j]), box)
        if any(candidate.overlaps(other) for other in blocked):
            continue
        covered = {k for k in missing if holds is not None and holds[k, i, j]}
        if holds is None:
            return value, candidate, covered
        if best is None or len(covered) > best[0]:
            best = (len(covered), value, candidate, covered)
            if len(covered) == len(missing):
                break
    return None if best is None else (best[1], best[2], best[3])


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
    mask: str | Path | None = None,
) -> list[Proposal]:
    """Propose the most doubtful boxes of a scene into a label project.

    Args:
        uncertainty: The scene's uncertainty raster (``cloudseg segment --uncertainty``).
        project: The label project (its GeoPackage is created if missing).
        box: Box edge in pixels (a box an analyst labels in a minute or two).
        count: How many boxes.
        scene: The scene (its path, or its key); default the scene the raster records
            (``CLOUDSEG_SCENE``).
        mask: The same run's class raster: the boxes held out to judge a round are then
            chosen to cover every class (see :func:`rank_boxes`); None: doubt alone.

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
    labeled = sum(p.status == "labeled" for p in held)
    classes = None
    if mask is not None:
        with rasterio.open(Path(mask).expanduser()) as ds:
            if ds.shape != doubt.shape:
                raise InputError(f"{Path(mask).name} is not on the uncertainty raster's grid")
            classes = ds.read(1)
    proposals = rank_boxes(doubt, box, count, done, classes, labeled)
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
