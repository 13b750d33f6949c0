#!/usr/bin/env python3
"""Batch segmentation: the serial loop, and ``cloudseg segment-batch`` with 1 and 2 workers.

N scenes are made from the real On Cloud N L2A chips of the shared data (each chip in
its 4 rotations, 512 x 512 px, 4 bands, written as GeoTIFFs). They are segmented with
the same model and settings:

- **serial**: one process, ``segment()`` per scene, the model loaded once (the best a
  hand-written loop does);
- **dask, W workers**: ``segment_batch`` on a fresh LocalCluster of W worker processes
  (cluster start, model loading per worker, records and manifest included).

Reported: wall seconds, scenes per second, and the overhead per scene against the
serial loop ((batch seconds x workers - serial seconds) / scenes: what Dask and the
records cost a worker per scene, when W workers share the cores).

Usage: benchmark_batch.py --data ../shared/data/real --out dev/results/batch.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchmark_common import CHIP_BANDS, oncloudn_chips, write_results

MODEL = "ukis-csmask-4b-l2a"


def main() -> int:
    """Make the scenes, run the three ways, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("dev/results/batch.json"))
    parser.add_argument("--rotations", type=int, default=4, help="scenes per chip (1-4)")
    args = parser.parse_args()
    import rasterio

    from cloudseg.backend.batch import machine_workers, segment_batch
    from cloudseg.backend.inference.segment import SegmentOptions, segment

    chips, crs, transform = oncloudn_chips(args.data)
    options = {"model": MODEL, "product_level": "L2A"}
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "scenes"
        folder.mkdir()
        for i, chip in enumerate(chips):
            for turn in range(args.rotations):
                profile = {"driver": "GTiff", "count": 4, "dtype": "uint16", "width": 512,
                           "height": 512, "crs": crs, "transform": transform}  # fmt: skip
                with rasterio.open(folder / f"chip{i}-rot{turn}.tif", "w", **profile) as ds:
                    ds.write(np.ascontiguousarray(np.rot90(chip, turn, axes=(1, 2))))
                    ds.descriptions = tuple(CHIP_BANDS)
        scenes = sorted(folder.glob("*.tif"))
        # Serial: one process, one loaded model, one scene after another.
        out = Path(tmp) / "serial"
        out.mkdir()
        run = SegmentOptions(**options, keep_runner=True)
        segment(scenes[0], out / "warm.tif", run)  # load the model before timing
        started = time.perf_counter()
        for scene in scenes:
            segment(scene, out / scene.name, run)
        serial = time.perf_counter() - started
        runs.append({"mode": "serial loop", "workers": 1, "seconds": round(serial, 2)})
        for workers in (1, 2):
            started = time.perf_counter()
            result = segment_batch([str(folder)], str(Path(tmp) / f"dask{workers}"), options,
                                   workers=workers)  # fmt: skip
            seconds = time.perf_counter() - started
            assert result.counts() == {"done": len(scenes)}, result.counts()
            runs.append({"mode": "segment-batch (Dask LocalCluster)", "workers": workers,
                         "threads_per_worker": machine_workers(workers)[1],
                         "seconds": round(seconds, 2)})  # fmt: skip
        for entry in runs:
            entry["scenes_per_second"] = round(len(scenes) / entry["seconds"], 3)
            entry["overhead_s_per_scene"] = round(
                (entry["seconds"] * entry["workers"] - serial) / len(scenes), 3
            )
    report = {
        "benchmark": f"{len(scenes)} scenes of 512 x 512 px (the {len(chips)} real On Cloud N "
        f"L2A chips in {args.rotations} rotations), {MODEL}, on this machine",
        "scenes": len(scenes),
        "megapixels_per_scene": 0.262,
        "runs": runs,
        "note": "overhead per scene = (seconds x workers - serial seconds) / scenes; the "
        "batch figures include starting the cluster and loading the model in each worker",
    }
    write_results(report, ("cloudseg", "dask", "distributed", "onnxruntime"), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
