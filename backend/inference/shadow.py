"""Shadows that follow their clouds: geometry-aware refinement of the shadow probability.

A cloud shadow exists only where a cloud's projection along the sun's direction lands.
The step (``--shadow-geometry``) works on the blended probabilities, before the one
class decision (:func:`.decision.decide`):

1. **The sun's direction.** From the product where it is known (:func:`sun_from_source`:
   a SAFE product's ``MTD_TL.xml``, a STAC Item's ``view:sun_azimuth`` and
   ``view:sun_elevation``, or GDAL metadata such as ``SUN_AZIMUTH``); otherwise
   estimated from the scene itself (:func:`estimate_sun`): the direction in which the
   model's clouds, shifted, land on the most shadow, with a confidence (how much more
   shadow that direction finds than the average direction).
2. **Where a cloud can cast a shadow** (:func:`shadow_prior`): every cloud pixel swept
   away from the sun over the distances plausible cloud heights give (height x
   tan(sun zenith), :data:`HEIGHTS_M`; from the shift profile where the zenith is not
   known), on a coarse grid of :data:`CELL`-pixel cells (coarser on scenes so large
   that the grid would pass :data:`MAX_CELLS`). Near the border the sun shines from, a
   cloud outside the scene may cast the shadow: there nothing is lowered. The reach is
   clamped to the scene: a sun so low that shadows reach farther than the scene's
   diagonal (a sun elevation of a few degrees, or a metadata value such as
   ``SUN_ELEVATION=0.001``) lets a cloud outside the scene shade any pixel, so nothing
   is lowered and nothing is swept (the sweep's cost grows with the reach).
3. **The refinement** (:func:`refine`): where no cloud can cast a shadow, the shadow
   probability goes to the clear class (times :data:`OUTSIDE_KEEP`); where one can, and
   the model sees some shadow (at least :data:`INSIDE_FROM`), the shadow class gains
   :data:`INSIDE_GAIN` of the clear probability (faint shadows).

The thresholds were chosen on labeled data (``dev/study_shadow_geometry.py``,
docs/shadow-geometry.md). The geometry is the scene's, computed once on the coarse grid
after the model's pass, so the result does not depend on strip or column-block sizes
(:class:`ShadowGeometry` stores the probabilities on disk for the second pass: memory
stays bounded, and :func:`memory_mib` counts what the step holds in the run's budget,
``--max-memory``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import temporary_folder
from ..callbacks import CancelCallback, ProgressCallback, never_cancelled, no_progress
from ..errors import CancelledError
from ..metadata_files import parse_xml
from ..models.cards import class_kind
from ..raster.reader import SceneReader
from ..raster.safe_product import tile_metadata
from .decision import decide

#: Plausible cloud-top heights, metres: the shadow lies between these heights' projections.
HEIGHTS_M = (0.0, 6000.0)
#: Share of the shadow probability kept where no cloud can cast a shadow.
OUTSIDE_KEEP = 0.0
#: Where a cloud can cast a shadow: the shadow probability from which it gains ...
INSIDE_FROM = 0.3
#: ... this share of the clear probability (0: shadows are only lowered, never raised).
INSIDE_GAIN = 0.0
#: Coarse-grid cell, input pixels (the prior's resolution on large scenes; see cell_for).
CELL = 8
#: A scene whose side is at most this many pixels gets a prior at full resolution.
FINE_SIDE = 2048
#: The most cells of the coarse grid (a 2048 px square at full resolution, a 16384 px
#: square of 8 px cells): larger scenes get larger cells, so the grid's memory and the
#: sweep's time are bounded whatever the scene's size.
MAX_CELLS = FINE_SIDE * FINE_SIDE
#: Bytes per coarse cell while the prior is planned: the cloud, shadow and unseen grids,
#: the prior, its growth and the shifted copies of the sweep.
GRID_BYTES = 24
#: Azimuths searched when the sun's direction is estimated, degrees apart.
AZIMUTH_STEP = 5
#: The sun's direction is estimated on a grid at most this many cells a side.
ESTIMATION_SIDE = 256
#: Cloud probability from which a pixel counts as cloud for the projection.
CLOUD_FROM = 0.5
#: Estimation: the farthest shift searched, metres (12 km cloud tops at a 55 degree sun).
SEARCH_M = 17000.0
#: Estimation: the shadow extends as far as the shift profile stays above this share of
#: its peak (chosen leave-one-scene-out on labeled data: 0.7 in every fold).
PROFILE_SHARE = 0.7
#: Below this confidence the estimated direction is not used, and nothing changes: the
#: lowest that kept out every wrong estimate on the real chips whose sun position is
#: known from their place and time (dev/study_shadow_geometry.py).
MIN_CONFIDENCE = 0.2
#: Rows of each strip of the second pass.
STRIP_ROWS = 256
#: The first pass's probabilities are kept in memory up to this size, MiB, else on disk.
IN_MEMORY_MIB = 64


def memory_mib(height: int, width: int, classes: int) -> float:
    """Memory the step holds beyond the engine's, MiB (counted in the run's budget).

    The first pass in memory (up to :data:`IN_MEMORY_MIB`, else on disk), a strip and
    its classes twice over, and the coarse grids of the prior (:func:`cell_for` bounds
    them to :data:`MAX_CELLS` cells).
    """
    strip = STRIP_ROWS * width * (classes * 4 + 8 * 2) / 2**20
    cell = cell_for(height, width)
    cells = -(-height // cell) * -(-width // cell)
    return IN_MEMORY_MIB + 2 * strip + cells * GRID_BYTES / 2**20 + 8.0


@dataclass(frozen=True)
class SunAngles:
    """Where the sun was, as the step used it.

    Attributes:
        azimuth: Degrees clockwise from north, towards the sun.
        zenith: Degrees from the vertical; None where not known (estimated direction).
        source: Where the angles come from (``MTD_TL.xml``, ``STAC Item``, ``GDAL
            metadata``, ``estimated from the scene``).
        confidence: 0-1 for an estimate (see :func:`estimate_sun`); None for metadata.
    """

    azimuth: float
    zenith: float | None
    source: str
    confidence: float | None = None


def shadow_direction(azimuth: float) -> tuple[float, float]:
    """The unit step ``(rows, cols)`` away from the sun (north up, east right)."""
    away = math.radians(azimuth + 180.0)
    return -math.cos(away), math.sin(away)


# -- the sun from the product ----------------------------------------------------------------
_AZIMUTH_KEYS = ("SUN_AZIMUTH", "SUN_AZIMUTH_ANGLE", "MEAN_SUN_AZIMUTH_ANGLE", "SOLAR_AZIMUTH")
_ZENITH_KEYS = ("SUN_ZENITH", "SUN_ZENITH_ANGLE", "MEAN_SUN_ZENITH_ANGLE", "SOLAR_ZENITH")
_ELEVATION_KEYS = ("SUN_ELEVATION", "SOLAR_ELEVATION", "SUN_ELEVATION_ANGLE")


def _angle(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def sun_from_tags(tags: dict[str, Any], source: str = "GDAL metadata") -> SunAngles | None:
    """Sun angles from metadata keys (GDAL tags, STAC ``view:`` properties); None if absent."""
    upper = {str(k).upper().replace("VIEW:", ""): v for k, v in tags.items()}
    azimuth = next((a for k in _AZIMUTH_KEYS if (a := _angle(upper.get(k))) is not None), None)
    zenith = next((a for k in _ZENITH_KEYS if (a := _angle(upper.get(k))) is not None), None)
    if zenith is None:
        elevation = next(
            (a for k in _ELEVATION_KEYS if (a := _angle(upper.get(k))) is not None), None
        )
        zenith = None if elevation is None else 90.0 - elevation
    if azimuth is None or zenith is None or not 0.0 <= zenith < 90.0:
        return None
    return SunAngles(azimuth % 360.0, zenith, source)


def sun_from_tile_xml(text: str | bytes, shown: str = "MTD_TL.xml") -> SunAngles | None:
    """The mean sun angles of a Sentinel-2 ``MTD_TL.xml``; None if it has none.

    Raises:
        InputError: For text that is not UTF-8 or not XML (naming ``shown``).
    """
    root = parse_xml(text, shown)
    mean = next((e for e in root.iter() if e.tag.split("}")[-1] == "Mean_Sun_Angle"), None)
    if mean is None:
        return None
    values = {child.tag.split("}")[-1]: child.text for child in mean}
    return sun_from_tags(
        {"SUN_ZENITH": values.get("ZENITH_ANGLE"), "SUN_AZIMUTH": values.get("AZIMUTH_ANGLE")},
        "MTD_TL.xml",
    )


def sun_from_source(
    path: Path | None, tags: dict[str, Any] | None = None, item_properties: dict | None = None
) -> SunAngles | None:
    """The sun angles the input records, or None.

    Args:
        path: The input (a SAFE folder or zip: its granule's ``MTD_TL.xml``, found and
            read by :func:`~cloudseg.backend.raster.safe_product.tile_metadata`).
        tags: The input raster's GDAL metadata.
        item_properties: The properties of the STAC Item the input came from.

    Raises:
        InputError: For a tile metadata file that cannot be read (over the size limit,
            not UTF-8, not XML): the product is damaged, and the run says so.
    """
    if item_properties:
        sun = sun_from_tags(item_properties, "STAC Item")
        if sun is not None:
            return sun
    if path is not None and path.exists() and (path.is_dir() or path.suffix.lower() == ".zip"):
        found = tile_metadata(path)
        sun = sun_from_tile_xml(*found) if found else None
        if sun is not None:
            return sun
    return sun_from_tags(tags) if tags else None


# -- geometry on the coarse grid -------------------------------------------------------------
def cell_for(height: int, width: int) -> int:
    """The prior's cell, input pixels: 1 up to :data:`FINE_SIDE`, else :data:`CELL`.

    Larger still where :data:`CELL`-pixel cells would be more than :data:`MAX_CELLS`
    (a scene beyond 16384 px a side): the grid's memory stays bounded.
    """
    if max(height, width) <= FINE_SIDE:
        return 1
    return max(CELL, math.ceil(math.sqrt(height * width / MAX_CELLS)))


def beyond_scene(shape: tuple[int, int]) -> float:
    """The reach, cells, from which a shadow leaves the scene whatever its direction.

    A shift of the scene's diagonal moves every cell out of it (in whole cells: the
    larger part of the shift is at least the scene's side in its direction).
    """
    return math.hypot(*shape)


def coarse(values: np.ndarray, cell: int) -> np.ndarray:
    """Block maxima of a 2-D array over ``cell`` x ``cell`` cells (edge cells partial)."""
    if cell == 1:
        return values
    rows, cols = values.shape
    pad = ((0, -rows % cell), (0, -cols % cell))
    padded = np.pad(values, pad, constant_values=0)
    return padded.reshape(padded.shape[0] // cell, cell, padded.shape[1] // cell, cell).max(
        axis=(1, 3)
    )


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``mask`` moved by ``(dy, dx)`` cells, False where nothing moves in."""
    out = np.zeros_like(mask)
    rows, cols = mask.shape
    if abs(dy) >= rows or abs(dx) >= cols:
        return out
    src_r = slice(max(0, -dy), rows - max(0, dy))
    dst_r = slice(max(0, dy), rows - max(0, -dy))
    src_c = slice(max(0, -dx), cols - max(0, dx))
    dst_c = slice(max(0, dx), cols - max(0, -dx))
    out[dst_r, dst_c] = mask[src_r, src_c]
    return out


def _steps(azimuth: float, near: float, far: float) -> list[tuple[int, int]]:
    """The distinct whole-cell shifts from ``near`` to ``far`` cells away from the sun."""
    dy, dx = shadow_direction(azimuth)
    steps: list[tuple[int, int]] = []
    for d in np.arange(near, far + 0.5, 0.5):
        step = (round(d * dy), round(d * dx))
        if not steps or steps[-1] != step:
            steps.append(step)
    return steps


def shadow_prior(
    cloud: np.ndarray,
    azimuth: float,
    near: float,
    far: float,
    unseen: np.ndarray | None = None,
) -> np.ndarray:
    """Cells where a cloud can cast a shadow (or one the scene does not show could).

    Args:
        cloud: Boolean cloud cells.
        azimuth: The sun's azimuth, degrees.
        near: The nearest projection, cells.
        far: The farthest projection, cells.
        unseen: Boolean cells without data (a swath's edge): a cloud there is not seen,
            so it may cast a shadow like one outside the scene.

    Returns:
        Boolean cells: a cloud (or unseen) cell lies ``near``-``far`` cells towards the
        sun, or the way towards the sun leaves the scene within ``far`` cells.
    """
    # Beyond the scene's diagonal every cell may be shaded from outside: the prior is the
    # whole scene, and the sweep (one shift per step) is not run.
    if not far < beyond_scene(cloud.shape):
        return np.ones_like(cloud)
    casters = cloud if unseen is None else cloud | unseen
    prior = np.zeros_like(cloud)
    for dy, dx in _steps(azimuth, near, far):
        prior |= _shift(casters, dy, dx)
    # Tolerance of one cell: projections are rounded to whole cells.
    grown = prior.copy()
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        grown |= _shift(prior, dy, dx)
    reach = _shift(np.ones_like(cloud), *_steps(azimuth, far, far)[-1])
    return grown | ~reach | cloud


def _profile(cloud: np.ndarray, shadow: np.ndarray, azimuth: float, far: float) -> np.ndarray:
    """Mean shadow probability on the clouds moved 1..far cells away from the sun."""
    values = []
    for dy, dx in _steps(azimuth, 1, far):
        moved = _shift(cloud, dy, dx) & ~cloud
        values.append(float(shadow[moved].mean()) if moved.any() else 0.0)
    return np.asarray(values)


def estimate_sun(
    cloud: np.ndarray, shadow: np.ndarray, far: float
) -> tuple[SunAngles, float] | None:
    """The sun's direction estimated from the scene, and how far its shadows reach.

    Every third :data:`AZIMUTH_STEP` degrees, then every step near the best of those,
    the cloud cells are moved away from the sun over 1..``far`` cells; the largest mean
    shadow probability where they land (over the distances) is that direction's score.
    The best direction wins; confidence is ``1 - mean score / best score``. The reach
    is where the best direction's profile falls below :data:`PROFILE_SHARE` of its peak.

    Returns:
        The angles (zenith None) and the reach in cells; None without cloud to move.
    """
    if not cloud.any() or cloud.all():
        return None
    scores: dict[int, float] = {}

    def search(azimuths: Iterable[int]) -> int:
        for azimuth in azimuths:
            azimuth %= 360
            if azimuth not in scores:
                profile = _profile(cloud, shadow, float(azimuth), far)
                scores[azimuth] = float(profile.max()) if profile.size else 0.0
        return max(scores, key=lambda a: scores[a])

    # Every third direction first, then the steps beside the best of them.
    coarse_best = search(range(0, 360, 3 * AZIMUTH_STEP))
    best = search(
        range(coarse_best - 2 * AZIMUTH_STEP, coarse_best + 3 * AZIMUTH_STEP, AZIMUTH_STEP)
    )
    if scores[best] <= 0.0:
        return None
    confidence = 1.0 - float(np.mean(list(scores.values()))) / scores[best]
    profile = _profile(cloud, shadow, float(best), far)
    peak = int(profile.argmax())
    beyond = np.nonzero(profile[peak:] < PROFILE_SHARE * profile[peak])[0]
    reach = float(peak + (beyond[0] if beyond.size else profile.size - peak) + 1)
    sun = SunAngles(float(best), None, "estimated from the scene", round(confidence, 3))
    return sun, reach


# -- the refinement --------------------------------------------------------------------------
def class_roles(classes: list[Any]) -> tuple[list[int], list[int], int | None]:
    """The indices of the cloud classes, the shadow classes and the clear class."""
    cloud = [i for i, c in enumerate(classes) if class_kind(c.name) == "cloud"]
    shadow = [i for i, c in enumerate(classes) if class_kind(c.name) == "shadow"]
    clear = next((i for i, c in enumerate(classes) if c.name.lower() == "clear"), None)
    if clear is None:
        clear = next((i for i, c in enumerate(classes) if class_kind(c.name) is None), None)
    return cloud, shadow, clear


def refine(
    probs: np.ndarray,
    prior: np.ndarray,
    shadow: list[int],
    clear: int,
    keep: float = OUTSIDE_KEEP,
    gain: float = INSIDE_GAIN,
    gain_from: float = INSIDE_FROM,
) -> None:
    """Move probability between shadow and clear as the prior says (in place).

    Args:
        probs: ``(classes, rows, cols)`` blended probabilities.
        prior: ``(rows, cols)`` booleans: a cloud can cast a shadow here.
        shadow: The shadow classes' indices.
        clear: The clear class's index.
        keep: Share of the shadow probability kept where ``prior`` is False.
        gain: Share of the clear probability the shadow class gains where ``prior`` is
            True and the shadow probability is at least ``gain_from``.
        gain_from: See ``gain``.
    """
    outside = ~prior
    for s in shadow:
        moved = probs[s] * (1.0 - keep) * outside
        probs[s] -= moved
        probs[clear] += moved
    if gain > 0.0 and shadow:
        s = shadow[0]
        raise_here = prior & (probs[shadow].sum(axis=0) >= gain_from)
        moved = probs[clear] * gain * raise_here
        probs[clear] -= moved
        probs[s] += moved


@dataclass
class GeometryReport:
    """What the step did, for the provenance and the statistics.

    Attributes:
        sun: The sun angles used (None: nothing could be projected, nothing changed).
        heights_m: The cloud heights searched (None where the zenith was estimated).
        reach_px: The farthest projection, input pixels.
        cell_px: The prior's cell, input pixels.
        changed_pixels: Pixels whose class the step changed.
        note: Why nothing changed, when nothing did.
    """

    sun: SunAngles | None = None
    heights_m: tuple[float, float] | None = None
    reach_px: float | None = None
    cell_px: int = 1
    changed_pixels: int = 0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (lists, not tuples: what the mask's tag reads back as)."""
        import json

        return json.loads(json.dumps(asdict(self)))


def describe(report: dict[str, Any]) -> str:
    """One line for people: the sun used, where it came from, and what changed."""
    sun = report.get("sun")
    if not sun or report.get("note"):
        return f"shadow geometry: {report.get('note') or 'not applied'}"
    zenith = f", zenith {sun['zenith']:.1f}" if sun.get("zenith") is not None else ""
    confidence = (
        f", confidence {sun['confidence']:.2f}" if sun.get("confidence") is not None else ""
    )
    heights = report.get("heights_m")
    reach = (
        f"cloud heights {heights[0]:g}-{heights[1]:g} m, " if heights else ""
    ) + f"shadows up to {report.get('reach_px') or 0:g} px from their clouds"
    return (
        f"shadow geometry: sun azimuth {sun['azimuth']:.0f}{zenith} ({sun['source']}"
        f"{confidence}); {reach}; {report.get('changed_pixels', 0)} pixels changed class"
    )


def plan_geometry(
    cloud: np.ndarray,
    shadow: np.ndarray,
    cell: int,
    pixel_m: float | None,
    sun: SunAngles | None,
    unseen: np.ndarray | None = None,
) -> tuple[np.ndarray | None, GeometryReport]:
    """The prior on the coarse grid from the scene's cloud cells and shadow probability.

    Args:
        cloud: Boolean cloud cells.
        shadow: Shadow probability per cell (the cell's largest).
        cell: Input pixels per cell.
        pixel_m: The input's pixel size, metres (None: unknown; the reach is estimated).
        sun: Angles from the product, or None (estimated).
        unseen: Boolean cells without data (see :func:`shadow_prior`).
    """
    report = GeometryReport(cell_px=cell)
    cell_m = (pixel_m or 0.0) * cell
    if sun is not None and sun.zenith is not None and cell_m > 0:
        tan = math.tan(math.radians(sun.zenith))
        near, far = (h * tan / cell_m for h in HEIGHTS_M)
        report.heights_m = HEIGHTS_M
        beyond = beyond_scene(cloud.shape)
        if not far < beyond:  # NaN and infinity too
            report.sun, report.reach_px = sun, round(beyond * cell, 1)
            report.note = (
                f"the sun is {90.0 - sun.zenith:.3g} degrees above the horizon: shadows of "
                f"clouds up to {HEIGHTS_M[1]:g} m reach beyond the scene, so a cloud outside "
                "it may shade any pixel: shadows left as the model gave them"
            )
            return None, report
    else:
        k = max(1, -(-max(cloud.shape) // ESTIMATION_SIDE))
        search = SEARCH_M / cell_m if cell_m > 0 else max(cloud.shape) / 4
        search = min(search, max(cloud.shape) / 2) / k
        estimate = estimate_sun(coarse(cloud, k), coarse(shadow, k), search)
        if estimate is None:
            report.note = "no cloud to project: shadows left as the model gave them"
            return None, report
        estimated, far = estimate
        far, near = far * k, 0.0
        if sun is None:
            if estimated.confidence is not None and estimated.confidence < MIN_CONFIDENCE:
                report.sun = estimated
                report.note = (
                    f"the sun's direction could not be told from the scene (confidence "
                    f"{estimated.confidence:.2f}): shadows left as the model gave them"
                )
                return None, report
            sun = estimated
    report.sun = sun
    report.reach_px = round(far * cell, 1)
    return shadow_prior(cloud, sun.azimuth, near, far, unseen), report


class ShadowGeometry:
    """The step over a streamed run: store the rows, plan the geometry, yield refined rows.

    The first pass stores every row's probabilities (on disk beyond :data:`IN_MEMORY_MIB`);
    then the prior is planned once for the scene, and the second pass yields full-width
    strips of :data:`STRIP_ROWS` rows, refined, in row order.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        classes: list[Any],
        pixel_m: float | None,
        sun: SunAngles | None,
        work: Path | None = None,
        thresholds: tuple[float | None, float | None] = (None, None),
    ) -> None:
        self.height, self.width = shape
        self.classes = classes
        self.pixel_m = pixel_m
        self.sun = sun
        self.work = work
        #: The run's cloud and shadow thresholds: the changed pixels are counted by the
        #: class decision the mask is written with.
        self.thresholds = thresholds
        self.report = GeometryReport()

    def rows(
        self,
        rows: Iterable[tuple[int, int, np.ndarray, np.ndarray]],
        progress: ProgressCallback = no_progress,
        cancelled: CancelCallback = never_cancelled,
    ) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        """Refined ``(row, col, probabilities, nodata)`` of the streamed ``rows``."""
        cloud_i, shadow_i, clear = class_roles(self.classes)
        if not cloud_i or not shadow_i or clear is None:
            self.report.note = "the model has no cloud, shadow and clear classes: not applied"
            yield from rows
            return
        n = len(self.classes)
        on_disk = (n * 4 + 1) * self.height * self.width > IN_MEMORY_MIB * 2**20
        # A folder named for this process (backend.atomic): one a killed run left behind
        # is removed by the next run that writes there.
        with temporary_folder("cloudseg-shadow", self.work) as tmp:

            def store(name: str, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
                if on_disk:
                    return np.lib.format.open_memmap(Path(tmp) / name, "w+", dtype, shape)
                return np.zeros(shape, dtype)

            probs = store("probs.npy", np.float32, (n, self.height, self.width))
            nodata = store("nodata.npy", np.bool_, (self.height, self.width))
            for row, col, p, missing in rows:
                h, w = p.shape[1:]
                probs[:, row : row + h, col : col + w] = p
                nodata[row : row + h, col : col + w] = missing
            cell = cell_for(self.height, self.width)
            cloud_cells, shadow_cells, unseen = self._cells(probs, nodata, cloud_i, shadow_i, cell)
            prior_cells, self.report = plan_geometry(
                cloud_cells, shadow_cells, cell, self.pixel_m, self.sun, unseen
            )
            changed = 0
            for r0 in range(0, self.height, STRIP_ROWS):
                if cancelled():
                    raise CancelledError("cancelled; no output was written")
                r1 = min(r0 + STRIP_ROWS, self.height)
                strip = np.array(probs[:, r0:r1])
                if prior_cells is not None:
                    before = decide(strip, self.classes, *self.thresholds)
                    prior = prior_cells[r0 // cell : -(-r1 // cell)]
                    if cell > 1:
                        prior = np.repeat(np.repeat(prior, cell, 0), cell, 1)
                        offset = r0 - (r0 // cell) * cell
                        prior = prior[offset : offset + r1 - r0, : self.width]
                    refine(strip, prior, shadow_i, clear, OUTSIDE_KEEP, INSIDE_GAIN, INSIDE_FROM)
                    after = decide(strip, self.classes, *self.thresholds)
                    changed += int(np.count_nonzero((after != before) & ~nodata[r0:r1]))
                progress(98.0, f"shadow geometry: row {r1} of {self.height}")
                yield r0, 0, strip, nodata[r0:r1]
            self.report.changed_pixels = changed
            del probs, nodata

    def _cells(
        self,
        probs: np.ndarray,
        nodata: np.ndarray,
        cloud_i: list[int],
        shadow_i: list[int],
        cell: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cloud cells, the largest shadow probability and any nodata, per cell."""
        rows = -(-self.height // cell)
        cols = -(-self.width // cell)
        cloud = np.zeros((rows, cols), bool)
        shadow = np.zeros((rows, cols), np.float32)
        unseen = np.zeros((rows, cols), bool)
        step = max(cell, STRIP_ROWS - STRIP_ROWS % cell)
        for r0 in range(0, self.height, step):
            r1 = min(r0 + step, self.height)
            strip = probs[:, r0:r1]
            valid = ~nodata[r0:r1]
            c = (strip[cloud_i].sum(axis=0) >= CLOUD_FROM) & valid
            s = np.where(valid, strip[shadow_i].sum(axis=0), 0.0).astype(np.float32)
            cloud[r0 // cell : -(-r1 // cell)] = coarse(c, cell)
            shadow[r0 // cell : -(-r1 // cell)] = coarse(s, cell)
            unseen[r0 // cell : -(-r1 // cell)] = coarse(~valid, cell)
        return cloud, shadow, unseen


def shadow_geometry(
    scene: Any, card: Any, options: Any, item: Any = None, work: Path | None = None
) -> ShadowGeometry | None:
    """The step for a run, or None when ``options`` leave it off.

    Args:
        scene: The run's :class:`~cloudseg.backend.raster.reader.SceneReader` (its sun
            is looked up), or an array scene (the sun is estimated).
        card: The model's card.
        options: The run's options (``shadow_geometry``).
        item: The :class:`~cloudseg.backend.raster.stac_input.SourceItem` read, if any.
        work: Where the first pass's probabilities may be stored on disk (the output's
            folder; removed when the run ends, however it ends).
    """
    if not options.shadow_geometry:
        return None
    sun = sun_for(scene, item) if isinstance(scene, SceneReader) else None
    shape = (scene.height, scene.width)
    thresholds = (options.cloud_threshold, options.shadow_threshold)
    return ShadowGeometry(shape, card.classes, scene.resolution_m, sun, work, thresholds)


def sun_for(reader: Any, item: Any = None) -> SunAngles | None:
    """The sun angles a scene read from files records (Item, SAFE, GDAL tags), or None."""
    import json

    import rasterio

    properties = None
    if item is not None:
        try:
            properties = json.loads(item.text).get("properties")
        except (ValueError, AttributeError):
            properties = None
    tags: dict[str, Any] = {}
    first = next(iter(reader.sources.values()), None)
    if first is not None:
        try:
            with rasterio.open(first.path) as ds:
                tags = dict(ds.tags())
        except rasterio.errors.RasterioError:
            tags = {}
    return sun_from_source(Path(reader.path), tags, properties)
