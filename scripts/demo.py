#!/usr/bin/env python3
"""The demo behind ``make demo``: runs cloudseg on a real Sentinel-2 chip."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cloudseg.backend.environment import environment_report

CHIP = Path("cloudsen12_figures/ROI_1746/high/cloudy/S2L1C.tif")


def main(argv: list[str] | None = None) -> int:
    """Print the environment, then describe a real chip."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="the shared real-data folder")
    parser.add_argument("--out", type=Path, default=Path("demo_output"))
    args = parser.parse_args(argv)

    print(environment_report().summary())
    chip = args.data / CHIP
    if not chip.is_file():
        print(
            f"demo: the real data folder {args.data} is absent; put the project's shared "
            "folder beside the checkout (../shared/data/real) or pass CLOUDSEG_REAL_DATA=...",
            file=sys.stderr,
        )
        return 1
    import rasterio

    with rasterio.open(chip) as src:
        print(
            f"{chip}: {src.width} x {src.height} px, {src.count} bands, {src.crs}, {src.res[0]:g} m"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
