"""What every benchmark's JSON records besides its figures: the machine and versions."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any


def write_results(report: dict[str, Any], packages: tuple[str, ...], out: Path) -> None:
    """Add the machine and package versions to ``report``, write it as JSON and print it."""
    from cloudseg.backend.accounting import machine_info

    report = report | {
        "machine": machine_info(),
        "versions": {p: metadata.version(p) for p in packages},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


def oncloudn_chips(
    data: Path, rows: int | None = None, names: list[str] | None = None
) -> tuple[list[Any], Any, Any]:
    """The real On Cloud N L2A chips as (4, rows, cols) uint16 arrays, with a CRS and transform.

    Bands B02, B03, B04, B08; ``rows`` keeps only the first rows of each chip; ``names``
    only these chips, in this order (default: all, by name).
    """
    import numpy as np
    import rasterio

    chips = []
    folders = (
        [data / "oncloudn_l2a" / n for n in names]
        if names
        else sorted((data / "oncloudn_l2a").iterdir())
    )
    for folder in folders:
        if folder.is_dir():
            stack = []
            for band in CHIP_BANDS:
                with rasterio.open(folder / f"{band}.tif") as ds:
                    stack.append(ds.read(1)[:rows])
                    crs, transform = ds.crs, ds.transform
            chips.append(np.stack(stack))
    return chips, crs, transform


#: The bands of the On Cloud N chips.
CHIP_BANDS = ["B02", "B03", "B04", "B08"]
