"""Read Sentinel-2 scenes by window, whatever form they come in.

A :class:`SceneReader` knows which band is which, how digital numbers become
reflectance, where nodata is, and the scene's grid (CRS, transform). It reads windows,
never the whole scene. Inputs: a multi-band raster (GeoTIFF, COG, VRT) whose band
descriptions name the bands, a folder of single-band files (``B02.tif``...), or a
SAFE product (``.SAFE`` folder or ``.zip``, L1C or L2A).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from ..errors import BandError, InputError
from .bands import band_from_filename, canonical_band
from .boundary import check_path, check_raster
from .level import UNKNOWN, Level
from .level import from_names as level_from_names
from .level import from_radiometry as level_from_radiometry
from .level import from_stac as level_from_stac
from .level import from_tags as level_from_tags
from .safe_product import is_safe, open_safe
from .sources import scene_path_from_gdal_source

logger = logging.getLogger(__name__)

#: Files a folder of single-band rasters may hold.
BAND_FILE_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")
S2_DN_SCALE = 1e-4
#: How far band files' corners may differ, as a share of the finest band's pixel.
GRID_TOLERANCE = 0.01
#: Reflectance no pixel's data reaches, whatever its encoding: 16-bit digital numbers
#: read with a scale of 1 stay below 65536. A value beyond it (or +-Inf) is a fill value
#: or a corrupt pixel, and is read as nodata (see :func:`mark_not_data`).
MAX_REFLECTANCE = 1e6


@dataclass(frozen=True)
class BandSource:
    """Where one band's pixels come from, and how its values become reflectance.

    Reflectance = DN * ``scale`` + ``offset``.
    """

    path: str
    index: int
    scale: float
    offset: float


class SceneReader:
    """Windowed, band-aware reading of one scene on one reference grid.

    The reference grid is that of the finest-resolution band file; coarser bands are
    resampled to it on read. Use :func:`open_scene` to create one.
    """

    def __init__(
        self,
        path: Path,
        sources: dict[str, BandSource],
        product_level: str | None,
        description: str,
    ) -> None:
        import rasterio

        self.path = path
        self.sources = sources
        self.product_level = product_level
        #: How the product level was found (see :mod:`.level`); set by :func:`open_scene`.
        self.level = Level(product_level, "given") if product_level else UNKNOWN
        self.description = description
        #: Values read so far that were +-Inf or beyond :data:`MAX_REFLECTANCE` (read as
        #: nodata); a pixel read twice counts twice.
        self.not_data_values = 0
        self._datasets: dict[str, Any] = {}
        try:
            for band_source in sources.values():
                if band_source.path not in self._datasets:
                    check_raster(band_source.path)  # a server job's roots (see .boundary)
                    # Full-resolution pixels only: internal overviews (JPEG 2000 levels,
                    # COG overviews) would make results depend on the file format.
                    self._datasets[band_source.path] = rasterio.open(
                        band_source.path, OVERVIEW_LEVEL="NONE"
                    )
        except rasterio.errors.RasterioIOError as exc:
            self.close()
            raise InputError(f"cannot read {path}: {exc}") from exc
        except BaseException:
            self.close()
            raise
        reference = min(self._datasets.values(), key=lambda ds: abs(ds.res[0]))
        self.crs = reference.crs
        self.transform = reference.transform
        if self.transform.determinant == 0:  # not georeferenced: pixel coordinates
            from affine import Affine

            self.transform = Affine.identity()
        self.width = reference.width
        self.height = reference.height
        self.bounds = reference.bounds
        self._check_grid()
        # The whole scene's grid; a crop (see :meth:`crop`) is a window of it.
        self._scene_transform, self._scene_shape = self.transform, (self.height, self.width)
        self._row0 = self._col0 = 0

    def crop(self, bounds: tuple[float, float, float, float]) -> None:
        """Restrict the scene to ``bounds`` (left, bottom, right, top, in its CRS).

        The crop is widened to whole pixels and clipped to the scene; every grid
        attribute (``transform``, ``width``, ``height``, ``bounds``) then describes it.

        Raises:
            InputError: If ``bounds`` does not overlap the scene.
        """
        from affine import Affine
        from rasterio.coords import BoundingBox
        from rasterio.transform import array_bounds
        from rasterio.windows import from_bounds

        check_extent(bounds)
        window = from_bounds(*bounds, transform=self._scene_transform)
        row0, col0 = (
            max(math.floor(window.row_off + 1e-6), 0),
            max(math.floor(window.col_off + 1e-6), 0),
        )
        row1 = min(math.ceil(window.row_off + window.height - 1e-6), self._scene_shape[0])
        col1 = min(math.ceil(window.col_off + window.width - 1e-6), self._scene_shape[1])
        if row1 <= row0 or col1 <= col0:
            raise InputError(
                f"the extent {tuple(round(v, 2) for v in bounds)} does not overlap "
                f"{self.path.name} ({tuple(round(v, 2) for v in self.bounds)})"
            )
        self._row0, self._col0 = row0, col0
        self.transform = self._scene_transform * Affine.translation(col0, row0)
        self.height, self.width = row1 - row0, col1 - col0
        west, south, east, north = array_bounds(self.height, self.width, self.transform)
        self.bounds = BoundingBox(west, south, east, north)

    # -- grid --------------------------------------------------------------------------
    @property
    def bands(self) -> list[str]:
        """Canonical names of the bands this scene has."""
        return list(self.sources)

    @property
    def resolution_m(self) -> float | None:
        """Pixel size in metres, or None when the scene has no projected CRS."""
        return pixel_size_m(self.crs, self.transform.a)

    def _check_grid(self) -> None:
        if self.crs is not None and self.crs.is_geographic:
            lon = (self.bounds.left + self.bounds.right) / 2
            lat = (self.bounds.bottom + self.bounds.top) / 2
            zone = int((lon + 180) // 6) + 1
            epsg = (32600 if lat >= 0 else 32700) + zone
            raise InputError(
                f"{self.path} is in a geographic CRS ({self.crs.to_string()}, degrees); "
                f"reproject it to a projected CRS first, e.g. gdalwarp -t_srs EPSG:{epsg} "
                "-tr 10 10 IN OUT"
            )
        if (
            abs(abs(self.transform.a) - abs(self.transform.e)) > 1e-6 * abs(self.transform.a)
            or self.transform.b
            or self.transform.d
        ):
            raise InputError(f"{self.path}: pixels must be square and north-up; warp it first")
        for ds in self._datasets.values():
            # Bands of one scene share their corners exactly; a shift of even a fraction
            # of a pixel would misregister the bands the model compares.
            tolerance = GRID_TOLERANCE * abs(self.transform.a)
            if ds.crs != self.crs or not _same_extent(ds.bounds, self.bounds, tolerance):
                shift = max(abs(x - y) for x, y in zip(ds.bounds, self.bounds, strict=True))
                raise InputError(
                    f"{self.path}: band file {Path(ds.name).name} differs from the others in "
                    + ("CRS" if ds.crs != self.crs else f"extent by {shift:.3g} CRS units")
                    + "; bands must share one grid: resample them onto it (gdalwarp -te)"
                )

    # -- reading -----------------------------------------------------------------------
    def read(
        self,
        bands: list[str],
        row_off: int,
        col_off: int,
        height: int,
        width: int,
        out_shape: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """Read reflectance of a window of the reference grid.

        The window may extend past the scene; pixels outside, and nodata pixels, are NaN.
        So are values that are no pixel's data (+-Inf, NaN, beyond :data:`MAX_REFLECTANCE`
        after scaling; see :func:`mark_not_data`): every reader of a scene gets them as
        nodata, here. With ``out_shape`` the window is resampled (area average when shrinking,
        bilinear when enlarging).

        Args:
            bands: Canonical band names, in the order wanted.
            row_off: First row of the window in the reference grid.
            col_off: First column.
            height: Rows in the window.
            width: Columns in the window.
            out_shape: ``(rows, cols)`` of the result; the window's size if None.

        Returns:
            float32 array of shape ``(len(bands), *out_shape)``.
        """
        import rasterio._err
        import rasterio.errors
        from rasterio.enums import Resampling
        from rasterio.windows import Window, from_bounds

        out_h, out_w = out_shape or (height, width)
        # The part of the window inside the (cropped) scene, in whole-scene pixels, and
        # where it lands in `out`.
        row_off, col_off = row_off + self._row0, col_off + self._col0
        r0, c0 = max(row_off, self._row0), max(col_off, self._col0)
        r1 = min(row_off + height, self._row0 + self.height)
        c1 = min(col_off + width, self._col0 + self.width)
        inside = (r0, c0, r1, c1) == (row_off, col_off, row_off + height, col_off + width)
        # Every pixel of a window inside the scene is written below; others start NaN.
        out = (
            np.empty((len(bands), out_h, out_w), dtype=np.float32)
            if inside
            else np.full((len(bands), out_h, out_w), np.nan, dtype=np.float32)
        )
        if r1 <= r0 or c1 <= c0:
            return out
        sy, sx = out_h / height, out_w / width
        o_r0, o_c0 = round((r0 - row_off) * sy), round((c0 - col_off) * sx)
        o_r1, o_c1 = round((r1 - row_off) * sy), round((c1 - col_off) * sx)
        if o_r1 <= o_r0 or o_c1 <= o_c0:
            return out
        part = (o_r1 - o_r0, o_c1 - o_c0)
        shrink = part[0] < (r1 - r0)
        left, top = self._scene_transform * (c0, r0)
        right, bottom = self._scene_transform * (c1, r1)
        # Bands that share a file are read in one call: for a pixel-interleaved file
        # GDAL then decompresses each block once, not once per band.
        by_file: dict[str, list[int]] = {}
        for i, band in enumerate(bands):
            if band not in self.sources:
                raise BandError(f"{self.path} has no band {band}")
            by_file.setdefault(self.sources[band].path, []).append(i)
        for file, positions in by_file.items():
            ds = self._datasets[file]
            if ds.transform == self._scene_transform or ds.transform.determinant == 0:
                window = Window(c0, r0, c1 - c0, r1 - r0)
            else:
                window = from_bounds(left, bottom, right, top, ds.transform)
            same_size = (window.height, window.width) == part
            resampling = (
                Resampling.nearest
                if same_size
                else (Resampling.average if shrink else Resampling.bilinear)
            )
            sources = [self.sources[bands[i]] for i in positions]
            indexes = [source.index for source in sources]
            # Nodata given by a value is found here by comparison; GDAL's masked read
            # would decode every block a second time for its mask (2 s of a full tile).
            by_value = all(_mask_by_value(ds, index) for index in indexes)
            try:
                data = ds.read(
                    indexes,
                    window=window,
                    out_shape=(len(sources), *part),
                    masked=not by_value,
                    resampling=resampling,
                )
            except (
                rasterio.errors.RasterioIOError,
                rasterio.errors.RasterioError,
                rasterio._err.CPLE_BaseError,
            ) as exc:
                detail = " ".join(str(exc).split())
                raise InputError(
                    f"cannot read {file} at rows {r0}-{r1}, columns {c0}-{c1} ({detail}); "
                    "the file is truncated or corrupt: copy or download it again"
                ) from None
            invalid = _invalid(ds, indexes, data) if by_value else np.ma.getmaskarray(data)
            data = np.ma.getdata(data)
            for k, (i, source) in enumerate(zip(positions, sources, strict=True)):
                # The offset is applied in DN units first: integer DNs stay exact, so
                # products with and without the baseline-04.00 offset give identical
                # reflectance.
                # Computed in place in `out`: a strip of a full tile is 8 M pixels a band.
                values = out[i, o_r0:o_r1, o_c0:o_c1]
                with np.errstate(over="ignore", invalid="ignore"):  # Inf is handled below
                    np.add(data[k], np.float32(source.offset / source.scale), out=values)
                    values *= np.float32(source.scale)
                if invalid[k].any():
                    np.copyto(values, np.float32(np.nan), where=invalid[k])
                if _may_hold_not_data(data.dtype, source):
                    self.not_data_values += mark_not_data(values)
        return out

    def sample_reflectance(self, bands: list[str], size: int = 256) -> np.ndarray:
        """Read a sample of the scene's reflectance, cheaply (for plausibility checks).

        Where every file has overviews (COG, JP2) the whole scene is read shrunk to at
        most ``size`` pixels a side, which GDAL serves from the overviews. Otherwise a
        4 x 4 grid of windows of ``size / 4`` pixels is read: shrinking a GeoTIFF
        without overviews would decompress all of it (2.3 s of a 4096^2, 6-band run).

        Returns:
            float32 array of shape ``(len(bands), rows, cols)``.
        """
        files = {self.sources[b].path: self.sources[b].index for b in bands if b in self.sources}
        if all(self._datasets[f].overviews(i) for f, i in files.items()):
            scale = max(self.height, self.width) / size
            shape = (
                max(1, math.ceil(self.height / max(scale, 1))),
                max(1, math.ceil(self.width / max(scale, 1))),
            )
            return self.read(bands, 0, 0, self.height, self.width, out_shape=shape)
        h, w = min(size // 4, self.height), min(size // 4, self.width)
        rows = [round((self.height - h) * k / 3) for k in range(4)]
        cols = [round((self.width - w) * k / 3) for k in range(4)]
        return np.concatenate(
            [np.concatenate([self.read(bands, r, c, h, w) for c in cols], axis=2) for r in rows],
            axis=1,
        )

    def close(self) -> None:
        """Close the band files."""
        for ds in self._datasets.values():
            ds.close()
        self._datasets.clear()

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _mask_by_value(ds: Any, index: int) -> bool:
    """Whether band ``index``'s invalid pixels are those equal to a nodata value (or none)."""
    from rasterio.enums import MaskFlags

    flags = set(ds.mask_flag_enums[index - 1])
    return flags in ({MaskFlags.all_valid}, {MaskFlags.nodata})


def _invalid(ds: Any, indexes: list[int], data: np.ndarray) -> np.ndarray:
    """Per-band nodata masks of ``data`` read from bands ``indexes`` of ``ds``."""
    invalid = np.zeros(data.shape, dtype=bool)
    for k, index in enumerate(indexes):
        nodata = ds.nodatavals[index - 1]
        if nodata is None:
            continue
        if np.isnan(nodata):
            np.isnan(data[k], out=invalid[k])
        else:
            np.equal(data[k], nodata, out=invalid[k])
    return invalid


def mark_not_data(values: np.ndarray) -> int:
    """Make values that are no pixel's data NaN (nodata), in place; return how many.

    The one rule for every scene cloudseg reads (files through :class:`SceneReader`,
    arrays through the engine's ``ArrayScene``): +-Inf, and reflectance beyond
    +-:data:`MAX_REFLECTANCE` (a fill value such as -3.4e38, or an overflow), are
    nodata, as NaN is. The model never sees them: a single Inf would turn its
    neighbours' scores into NaN over the network's whole field of view.

    Args:
        values: float32 reflectance (NaN where no data already).

    Returns:
        The number of values made NaN that were not NaN already.
    """
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(values) <= MAX_REFLECTANCE)  # NaN compares False: counted below
    if not bad.any():
        return 0
    count = int(bad.sum() - np.isnan(values).sum())
    np.copyto(values, np.float32(np.nan), where=bad)
    return count


def _may_hold_not_data(dtype: Any, source: BandSource) -> bool:
    """Whether values of ``dtype`` scaled as ``source`` says may be no pixel's data.

    Floats always may; integers only when their range, scaled, reaches beyond
    :data:`MAX_REFLECTANCE` (never with Sentinel-2's 0.0001): integer scenes are read
    as before, at no cost.
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu":
        return True
    info = np.iinfo(dtype)
    reach = max(abs(info.min), abs(info.max)) * abs(source.scale) + abs(source.offset)
    return not reach < MAX_REFLECTANCE


def check_extent(bounds: tuple[float, float, float, float]) -> None:
    """Refuse an extent that is not a box: a value that is not a number, or sides swapped.

    Raises:
        InputError: One line, naming what is wrong.
    """
    if len(bounds) != 4:
        raise InputError(f"an extent is LEFT BOTTOM RIGHT TOP, four numbers; got {len(bounds)}")
    left, bottom, right, top = (float(v) for v in bounds)
    shown = f"({', '.join(f'{v:g}' for v in (left, bottom, right, top))})"
    if not all(math.isfinite(v) for v in (left, bottom, right, top)):
        raise InputError(f"the extent {shown} holds a value that is not a finite number")
    if not (left < right and bottom < top):
        raise InputError(
            f"the extent {shown} is not a box: it is LEFT BOTTOM RIGHT TOP, with LEFT below "
            "RIGHT and BOTTOM below TOP"
        )


def _same_extent(a: Any, b: Any, tolerance: float) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


def pixel_size_m(crs: Any, pixel_width: float) -> float | None:
    """A grid's pixel size in metres, or None without a projected CRS.

    Args:
        crs: A rasterio CRS, anything ``CRS.from_user_input`` takes, or None.
        pixel_width: The transform's pixel width, in the CRS's units.
    """
    from rasterio.crs import CRS

    if crs is None:
        return None
    crs = CRS.from_user_input(crs)
    if not crs.is_projected:
        return None
    return abs(float(pixel_width)) * crs.linear_units_factor[1]


def guess_scale(dtype: str, sample: np.ndarray | None = None) -> tuple[float, str]:
    """Reflectance per stored value for data that does not declare it, and why.

    Integers are Sentinel-2 digital numbers (reflectance x 10000). Floating-point data
    is reflectance 0-1 when the 99th percentile of ``sample`` (finite values of the
    first band, decimated; values that are no pixel's data left out, see
    :func:`mark_not_data`) is at most 2, else reflectance x 10000.
    """
    if dtype.startswith(("uint", "int")):
        return S2_DN_SCALE, "integer digital numbers, reflectance x 10000"
    values = np.asarray(sample if sample is not None else [], dtype=np.float64).ravel()
    values = values[np.abs(values) <= MAX_REFLECTANCE]  # NaN and +-Inf compare False
    if values.size and float(np.percentile(values, 99)) <= 2.0:
        return 1.0, "floating point reflectance 0-1"
    return S2_DN_SCALE, "floating point reflectance x 10000"


def _default_scale(path: str, dtype: str) -> tuple[float, str]:
    """Guess the DN scale of a raster file that does not declare one."""
    if dtype.startswith(("uint", "int")):
        return guess_scale(dtype)
    import rasterio

    with rasterio.open(path) as ds:
        sample = ds.read(1, out_shape=(min(ds.height, 256), min(ds.width, 256)), masked=True)
    return guess_scale(dtype, sample.compressed())


def _sources_from_multiband(
    path: Path, bands: list[str] | None, scale: float | None, offset: float | None
) -> tuple[dict[str, BandSource], str]:
    import rasterio

    check_raster(path)
    try:
        ds = rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    with ds:
        if ds.count == 0:
            raise InputError(f"{path} holds no raster bands")
        if bands is not None:
            if len(bands) != ds.count:
                raise BandError(
                    f"--bands names {len(bands)} band(s) but {path.name} has "
                    f"{ds.count}; name every band in file order"
                )
            names = bands
        else:
            names = []
            for i, desc in enumerate(ds.descriptions, start=1):
                name = band_from_filename(desc) if desc else None
                if name is None:
                    raise BandError(
                        f"{path.name}: band {i} has no recognisable name (description "
                        f"{desc!r}); name the bands in file order with --bands (e.g. "
                        f"{','.join(['B02', 'B03', 'B04', 'B08', 'B11', 'B12'][: ds.count])})"
                    )
                names.append(name)
        declared = [(s, o) for s, o in zip(ds.scales, ds.offsets, strict=True)]
        dtype = ds.dtypes[0]
    if scale is None and any(d != (1.0, 0.0) for d in declared):
        how = "scale and offset from the file"
        pairs = declared
    else:
        if scale is None:
            scale, how = _default_scale(str(path), dtype)
        else:
            how = "scale given"
        pairs = [(scale, offset or 0.0)] * len(names)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise BandError(f"{path.name}: band(s) {', '.join(repeated)} appear twice")
    sources = {
        n: BandSource(str(path), i, s, o)
        for i, (n, (s, o)) in enumerate(zip(names, pairs, strict=True), start=1)
    }
    return sources, how


def _sources_from_folder(
    path: Path, scale: float | None, offset: float | None
) -> tuple[dict[str, BandSource], str]:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in BAND_FILE_SUFFIXES)
    sources: dict[str, BandSource] = {}
    how = ""
    for file in files:
        band = band_from_filename(file.stem)
        if band is None:
            continue
        if band in sources:
            raise BandError(f"{path}: two files hold band {band} ({file.name}); keep one")
        if scale is None:
            import rasterio

            check_raster(file)
            with rasterio.open(file) as ds:
                band_scale, how = _default_scale(str(file), ds.dtypes[0])
        else:
            band_scale, how = scale, "scale given"
        sources[band] = BandSource(str(file), 1, band_scale, offset or 0.0)
    if not sources:
        raise InputError(
            f"{path}: no band files found (expected names like B02.tif, "
            "T32TQM_20200101T101421_B02_10m.jp2)"
        )
    return sources, how


def open_scene(
    path: str | Path,
    bands: list[str] | None = None,
    product_level: str | None = None,
    scale: float | None = None,
    offset: float | None = None,
) -> SceneReader:
    """Open a scene for windowed reading.

    Args:
        path: A multi-band raster, a folder of single-band files, or a SAFE product.
        bands: Band names in file order, overriding the file's band descriptions.
        product_level: ``"L1C"`` or ``"L2A"``, overriding the product metadata.
        scale: Reflectance per DN, overriding metadata and defaults (0.0001 for S2 DN).
        offset: Reflectance added after scaling (e.g. -0.1 for baseline >= 04.00).

    Returns:
        An open :class:`SceneReader` (use it as a context manager).

    Raises:
        InputError: If the path is missing or unreadable, or the grid is unusable.
        BandError: If bands cannot be identified.
    """
    from ..network import configure_gdal

    configure_gdal()  # every network read (/vsicurl/, /vsis3/) under one timeout policy
    _refuse_url(str(path))
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"input {path} does not exist")
    check_path(path)  # a server job reads under its roots only (see .boundary)
    level = product_level.upper() if product_level else None
    if level not in (None, "L1C", "L2A"):
        raise InputError(f"product level must be L1C or L2A, not {product_level!r}")
    if scale is not None and not (scale > 0 and math.isfinite(scale)):
        raise InputError(f"scale must be a positive number of reflectance per DN, not {scale}")
    if offset is not None and not math.isfinite(offset):
        raise InputError(f"offset must be a finite number of reflectance, not {offset}")
    canonical = [canonical_band(b) for b in bands] if bands else None

    if is_safe(path):
        product = open_safe(path)
        sources = {}
        for band, file in product.band_files.items():
            band_scale = scale if scale is not None else 1.0 / product.quantification
            band_offset = (
                offset
                if offset is not None
                else product.offsets.get(band, 0.0) / product.quantification
            )
            sources[band] = BandSource(file, 1, band_scale, band_offset)
        description = (
            f"SAFE {product.product_level} baseline {product.baseline}, "
            f"reflectance = (DN + offset) / {product.quantification:g}"
        )
        reader = SceneReader(path, sources, level or product.product_level, description)
        if not level:
            reader.level = Level(product.product_level, f"SAFE metadata of {path.name}")
        return reader
    if path.is_dir():
        sources, how = _sources_from_folder(path, scale, offset)
        reader = SceneReader(path, sources, level, f"folder of band files, {how}")
    else:
        sources, how = _sources_from_multiband(path, canonical, scale, offset)
        reader = SceneReader(path, sources, level, f"multi-band raster, {how}")
    if not level:
        try:
            reader.level = detect_level(reader)
        except BaseException:
            reader.close()
            raise
        reader.product_level = reader.level.level
    return reader


def _refuse_url(text: str) -> None:
    """Refuse a URL or a GDAL virtual path as a scene, naming it as given (one line).

    A scene is read from local files: its band files, folders, SAFE metadata and the
    STAC Item beside it are found on disk. A ``Path`` would also fold ``https://`` into
    ``https:/`` and call the input missing.

    Raises:
        InputError: For ``scheme://...`` or ``/vsi...`` input.
    """
    import re

    if not (re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text) or text.startswith("/vsi")):
        return
    from ..network import redact

    raise InputError(
        f"{redact(text)} is not a local file or folder: cloudseg reads a scene from disk; download "
        "it first (e.g. gdal_translate or curl), or give a local .vrt that points at it"
    )


def detect_level(reader: SceneReader) -> Level:
    """The product level of a scene without SAFE metadata, and how it was found.

    STAC Item beside it, GDAL metadata, names, then the radiometry (see :mod:`.level`).
    """
    found = level_from_stac(reader.path)
    if found is None:
        for file in dict.fromkeys(source.path for source in reader.sources.values()):
            found = level_from_tags(reader._datasets[file].tags(), Path(file).name)
            if found is not None:
                break
    found = found or level_from_names(reader.path)
    if found is None and "B02" in reader.sources:
        found = level_from_radiometry(reader.sample_reflectance(["B02"])[0])
    return found or UNKNOWN


#: Reflectance no real surface or cloud reaches (the brightest clouds and fresh snow
#: stay below about 1.3); a share of the sample above it means the scale is wrong.
TOO_BRIGHT = 1.6
#: Reflectance below this (after the offset) is not physical; a small share is noise.
TOO_NEGATIVE = -0.05
#: The share of a sample that may lie beyond those limits (saturated pixels, noise).
IMPLAUSIBLE_SHARE = 0.02
#: Even the darkest real scenes (water, night-dark shade) have a 99th percentile above
#: this: haze and path radiance alone give more.
TOO_DARK_P99 = 0.02


@dataclass(frozen=True)
class ReflectanceCheck:
    """What a sample of the scaled values says about the scale.

    Attributes:
        message: What is wrong, or None when the values look like reflectance.
        certain: True when no real scene looks like this: the run should stop.
    """

    message: str | None
    certain: bool = False


def check_reflectance(reader: SceneReader, bands: list[str]) -> ReflectanceCheck:
    """Whether the scaled values look like reflectance, by robust statistics.

    A sample of the scene (:meth:`SceneReader.sample_reflectance`) is judged by shares
    and percentiles, not by a median: values 10 times too large leave the median of a
    dark scene near 1 but put a third or more of the pixels above :data:`TOO_BRIGHT`.
    On the real labeled scenes (Sentinel-2 L1C and L2A, Landsat) no pixel of the sample
    is above 1.6 or below -0.05; the same scenes scaled by 10 have 28-100 % above 1.6.
    """
    before = reader.not_data_values
    sample = reader.sample_reflectance(bands)
    not_data = (reader.not_data_values - before) / max(sample.size, 1)
    valid = sample[np.isfinite(sample)]
    fix = f"({reader.description}); pass the right --scale (and --offset)"
    if not_data:
        # +-Inf or fill values: nodata pixels (mark_not_data); a share of the scene this
        # large is a broken file or an undeclared nodata value, not a scene with gaps.
        message = (
            f"{reader.path}: {_percent(not_data)} % of the sampled values are not finite "
            f"(+-Inf) or beyond reflectance +-{MAX_REFLECTANCE:g}; their pixels are nodata"
        )
        if not_data > IMPLAUSIBLE_SHARE:
            return ReflectanceCheck(
                f"{message}; if such a value marks nodata, declare it (gdal_edit.py "
                "-a_nodata VALUE), else the file is damaged",
                certain=True,
            )
    found = _judge_sample(reader, valid, fix)
    if not_data and not found.certain:
        return ReflectanceCheck(message)
    return found


def _judge_sample(reader: SceneReader, valid: np.ndarray, fix: str) -> ReflectanceCheck:
    """:func:`check_reflectance`'s verdict on the finite values of the sample."""
    if valid.size == 0:
        # A sample, not the scene: a mostly empty scene may still hold data.
        return ReflectanceCheck(f"{reader.path}: the sample of the scene holds only nodata")
    bright = float(np.mean(valid > TOO_BRIGHT))
    negative = float(np.mean(valid < TOO_NEGATIVE))
    p99 = float(np.percentile(valid, 99))
    if bright > IMPLAUSIBLE_SHARE:
        return ReflectanceCheck(
            f"{reader.path}: {100 * bright:.0f} % of the values are above reflectance "
            f"{TOO_BRIGHT:g} after scaling, which no real scene has; the scale is probably "
            f"wrong {fix}",
            certain=True,
        )
    if negative > IMPLAUSIBLE_SHARE:
        return ReflectanceCheck(
            f"{reader.path}: {100 * negative:.0f} % of the values are below reflectance "
            f"{TOO_NEGATIVE:g} after scaling; the offset is probably wrong {fix}",
            certain=True,
        )
    if p99 < TOO_DARK_P99:
        return ReflectanceCheck(
            f"{reader.path}: 99 % of the values are below reflectance {p99:.3g} after "
            f"scaling, darker than any real scene; the scale is probably too small {fix}",
            certain=True,
        )
    return ReflectanceCheck(None)


def _percent(share: float) -> str:
    """A share as percent, never shown as 0 when it is not."""
    percent = 100 * share
    return f"{percent:.0f}" if percent >= 1 else f"{percent:.2g}"


def describe_bands(path: Path) -> tuple[str, list[str]]:
    """How a scene's bands are known, cheaply (metadata only), for a form to say so.

    Returns:
        ``(case, bands)``: ``"product"`` (a SAFE product), ``"folder"`` (band files of a
        folder), ``"named"`` (a raster whose band descriptions name its bands), or
        ``"unnamed"`` (bands must be given), with the bands found (empty if unnamed).
    """
    import rasterio

    if is_safe(path):
        return "product", []
    if path.is_dir():
        stems = sorted(p.stem for p in path.iterdir() if p.suffix.lower() in BAND_FILE_SUFFIXES)
        return "folder", [b for b in (band_from_filename(s) for s in stems) if b]
    try:
        with rasterio.open(path) as ds:
            descriptions = ds.descriptions
    except rasterio.errors.RasterioIOError:
        return "unnamed", []
    names = [band_from_filename(d) if d else None for d in descriptions]
    if all(names):
        return "named", [n for n in names if n]
    return "unnamed", []


_SCENE_SUFFIXES = (".zip", ".safe")
_RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".img", ".jp2", ".nc", ".h5")


def scene_key(scene: str | Path) -> str:
    """The name a scene is known by: in a label project and in outputs' tags, one rule.

    The stem of the file or folder cloudseg reads for ``scene``: a GDAL Sentinel-2
    subdataset or a ``MTD_MSI*.xml`` gives its SAFE product's name without ``.SAFE``
    (and ``.zip``), a band file beside other band files gives its folder's name.
    """
    text = str(scene)
    try:
        path = scene_path_from_gdal_source(text)
    except InputError:  # not on this machine (a key read back): the text's own name
        path = Path(text.split("|")[0])
    name = path.name
    for suffix in _SCENE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return Path(name).stem if Path(name).suffix.lower() in _RASTER_SUFFIXES else name
