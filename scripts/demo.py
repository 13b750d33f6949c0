#!/usr/bin/env python3
"""The demo behind ``make demo``: segment a real Sentinel-2 L2A chip into clouds and shadows.

Writes into ``--out``: the class COG, class probabilities, statistics (JSON) and a
quick-look PNG (true colour | mask) to look at.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from cloudseg.backend.environment import environment_report
from cloudseg.backend.errors import CloudsegError
from cloudseg.backend.inference.segment import SegmentOptions, segment

CHIP = Path("oncloudn_l2a/adwp")  # On Cloud N challenge chip, Sentinel-2 L2A, 10 m


def quicklook(chip: Path, mask_path: Path, target: Path) -> None:
    """Save true colour beside the mask (clear green, cloud cyan, shadow purple)."""
    import rasterio
    from PIL import Image

    rgb = np.stack([rasterio.open(chip / f"{b}.tif").read(1) for b in ("B04", "B03", "B02")], -1)
    rgb = np.clip(rgb / 3000 * 255, 0, 255).astype(np.uint8)
    with rasterio.open(mask_path) as ds:
        mask, colormap = ds.read(1), ds.colormap(1)
    palette = np.array([colormap.get(v, (0, 0, 0, 0))[:3] for v in range(256)], np.uint8)
    Image.fromarray(np.concatenate([rgb, palette[mask]], axis=1)).save(target)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the shared real-data folder")
    parser.add_argument("--out", type=Path, default=Path("demo_output"))
    args = parser.parse_args(argv)

    print(environment_report().summary())
    chip = args.data / CHIP
    if not chip.is_dir():
        print(
            f"demo: the real data folder {args.data} is absent; put the project's shared "
            "folder beside the checkout (../shared/data/real) or set CLOUDSEG_REAL_DATA",
            file=sys.stderr,
        )
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    mask = args.out / "adwp_mask.tif"
    options = SegmentOptions(
        product_level="L2A",
        probabilities=args.out / "adwp_probabilities.tif",
        stats=args.out / "adwp_stats.json",
        overwrite=True,
    )
    try:
        result = segment(chip, mask, options)
    except CloudsegError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    quicklook(chip, mask, args.out / "adwp_quicklook.png")
    shares = ", ".join(f"{name} {pct:.1f} %" for name, pct in result.class_percent.items())
    print(f"\n{result.model_reason}\nran on {result.runner} in {result.seconds:.2f} s")
    print(f"{chip.name}: {shares}")
    print(
        f"wrote {mask}, {options.probabilities}, {options.stats}, {args.out / 'adwp_quicklook.png'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
