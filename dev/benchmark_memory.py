#!/usr/bin/env python3
"""Peak memory of ``cloudseg segment`` on a full tile and on a very wide input.

Each run is the real command (``cloudseg segment`` with every output: the mask, the
probabilities and the polygons; default options and ``--max-memory`` budget) in its
own process; its peak resident memory is read from
/proc (VmHWM) when it ends. Scenes, mosaicked from the real On Cloud N L2A chips (4
bands of uint16 digital numbers at 10 m, tiled deflate GeoTIFF):

- a full Sentinel-2 tile, 10980 x 10980 px;
- a very wide strip, ``--wide`` px (default 100000) x 512 px: one pass over its width
  would need several GiB, so the engine runs it in column blocks (``--one-pass`` also
  runs it with an unlimited budget, for comparison).

Writes JSON with, per scene: the peak, the budget, the engine's own estimate for one
pass, the column blocks it chose, seconds, and the machine and versions.

Usage: benchmark_memory.py --data ../shared/data/real --one-pass --out dev/results/memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmark_common import CHIP_BANDS, oncloudn_chips, write_results
from benchmark_segment import write_full_tile

#: Runs the CLI in a child and writes its exit status and peak memory (VmHWM, MiB).
CHILD = """
import json, sys
from pathlib import Path
from cloudseg.backend.cli import main
rc = main(sys.argv[2:])
peak = next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines()
            if l.startswith("VmHWM:"))
Path(sys.argv[1]).write_text(json.dumps({"rc": rc, "peak_rss_mib": round(peak / 1024, 1)}))
"""


def write_wide(data: Path, path: Path, width: int, height: int = 512) -> None:
    """A ``width`` x ``height`` strip of the real chips side by side, every other mirrored."""
    import rasterio
    from rasterio.windows import Window

    chips, crs, transform = oncloudn_chips(data, rows=height)
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": 4, "dtype": "uint16",
        "nodata": 0, "crs": crs, "transform": transform, "tiled": True, "blockxsize": 512,
        "blockysize": 512, "compress": "deflate", "BIGTIFF": "IF_SAFER",
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        col, i = 0, 0
        while col < width:
            chip = chips[i % len(chips)]
            chip = chip[:, :, ::-1] if (i // len(chips)) % 2 else chip
            n = min(chip.shape[2], width - col)
            dst.write(chip[:, :, :n], window=Window(col, 0, n, chip.shape[1]))
            col, i = col + n, i + 1
        dst.descriptions = tuple(CHIP_BANDS)


def plan_for(scene: Path, budget_mib: float | None = None) -> dict:
    """What the engine plans for ``scene`` with the default options (or this budget)."""
    from cloudseg.backend.inference.engine import memory_plan, resolve_model
    from cloudseg.backend.inference.options import SegmentOptions
    from cloudseg.backend.inference.resample import ModelGrid
    from cloudseg.backend.raster.reader import open_scene

    options = SegmentOptions(
        probabilities=Path("probs.tif"),  # as the timed run: every output
        polygons=Path("clouds.gpkg"),
        **({"max_memory_mib": budget_mib} if budget_mib else {}),
    )
    with open_scene(scene) as reader:
        model, _ = resolve_model(reader.bands, reader.product_level, options)
        grid = ModelGrid.choose(
            reader.height, reader.width, reader.resolution_m, model.card.resolution_m, "native"
        )
        plan = memory_plan(reader.width, model.card, grid, options, options.max_memory_mib)
        return {
            "size": [reader.width, reader.height],
            "budget_mib": plan.budget_mib,
            "one_pass_estimate_mib": round(plan.estimate_mib, 1),
            "column_blocks": len(plan.blocks),
        }


def measure(scene: Path, workdir: Path, *extra: str) -> dict:
    """Run ``cloudseg segment`` on ``scene`` in a child; its peak memory and seconds."""
    report = workdir / "child.json"
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", CHILD, str(report), "segment", str(scene),
         str(workdir / f"{scene.stem}_mask.tif"), "-q", "--overwrite",
         "--probabilities", str(workdir / f"{scene.stem}_probs.tif"),
         "--polygons", str(workdir / f"{scene.stem}_clouds.gpkg"), *extra],
        check=True,
    )  # fmt: skip
    result = json.loads(report.read_text())
    budget = 65536.0 if "64G" in extra else None
    plan = plan_for(scene, budget) | ({"options": " ".join(extra)} if extra else {})
    return plan | result | {"seconds": round(time.perf_counter() - start, 1)}


def main() -> int:
    """Build the scenes, measure each, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("dev/results/memory.json"))
    parser.add_argument("--wide", type=int, default=100_000, help="width of the wide strip")
    parser.add_argument(
        "--one-pass", action="store_true", help="also run the wide strip with no budget"
    )
    args = parser.parse_args()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        tile = workdir / "full_tile.tif"
        write_full_tile(args.data, tile)
        runs["full_tile_10980"] = measure(tile, workdir)
        tile.unlink()
        wide = workdir / f"wide_{args.wide}.tif"
        write_wide(args.data, wide, args.wide)
        runs[f"wide_{args.wide}x512"] = measure(wide, workdir)
        if args.one_pass:  # what the budget saves: the same strip in one pass
            one_pass = measure(wide, workdir, "--max-memory", "64G")
            runs[f"wide_{args.wide}x512_one_pass"] = one_pass
    report = {
        "benchmark": "peak memory of cloudseg segment with mask, probabilities and polygons "
        "(default options and budget)",
        "method": "VmHWM of the child process running the CLI, read when it ends",
        "runs": runs,
        "under_budget": all(r["peak_rss_mib"] <= r["budget_mib"] for r in runs.values()),
    }
    write_results(report, ("cloudseg", "numpy", "onnxruntime", "openvino"), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
