"""Write results safely: temporary names, renamed only when complete, as COGs."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import OutputExistsError


def check_target(path: Path, overwrite: bool) -> None:
    """Refuse to replace an existing output unless asked.

    Raises:
        OutputExistsError: If ``path`` exists and ``overwrite`` is False.
    """
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise OutputExistsError(f"the folder of {path} does not exist; create it first")


def temporary_sibling(path: Path, tag: str = "part") -> Path:
    """A hidden name beside ``path`` that no one mistakes for a result."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.{tag}")


@contextlib.contextmanager
def cleanup_on_failure(*paths: Path) -> Iterator[None]:
    """Remove ``paths`` (and GDAL side files) if the block raises, then re-raise."""
    try:
        yield
    except BaseException:
        for path in paths:
            for candidate in (
                path,
                path.with_name(path.name + ".aux.xml"),
                path.with_name(path.name + ".ovr"),
            ):
                with contextlib.suppress(FileNotFoundError):
                    candidate.unlink()
        raise


def block_profile(
    profile: dict[str, Any], count: int, dtype: str, nodata: float | None
) -> dict[str, Any]:
    """Profile of a tiled, compressed GeoTIFF written block row by block row."""
    return {
        "driver": "GTiff", "width": profile["width"], "height": profile["height"],
        "crs": profile["crs"], "transform": profile["transform"], "count": count,
        "dtype": dtype, "nodata": nodata, "tiled": True, "blockxsize": 512,
        "blockysize": 512, "compress": "deflate", "predictor": 2 if dtype != "uint8" else 1,
        "BIGTIFF": "IF_SAFER", "sparse_ok": False,
    }  # fmt: skip


def publish_cog(source: Path, target: Path, overview_resampling: str) -> None:
    """Copy a finished GeoTIFF into a Cloud-Optimized GeoTIFF and rename it to ``target``.

    The rename is atomic; ``source`` is removed afterwards.

    Args:
        source: The finished temporary GeoTIFF.
        target: The final path (replaced if it exists).
        overview_resampling: ``"NEAREST"`` for classes, ``"AVERAGE"`` for probabilities.
    """
    import rasterio.shutil

    staged = temporary_sibling(target, "cog")
    with cleanup_on_failure(staged):
        rasterio.shutil.copy(
            str(source),
            str(staged),
            driver="COG",
            COMPRESS="DEFLATE",
            BLOCKSIZE=512,
            OVERVIEW_RESAMPLING=overview_resampling,
            BIGTIFF="IF_SAFER",
            NUM_THREADS="ALL_CPUS",
        )
        staged.replace(target)
    for leftover in (source, source.with_name(source.name + ".aux.xml")):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
