#!/usr/bin/env python3
"""Benchmark the engine against ukis-csmask's own CSmask on the same ONNX model.

(a) pixel agreement on the labeled real Landsat scenes of ``ukis_landsat`` (same model,
same resolution), and each one's agreement with the labels; (b) throughput in megapixels
per second and (c) peak memory (VmHWM of the run's own process) on a 4096 x 4096,
6-band scene, each run in its own process, whole process included (read GeoTIFF,
segment, write GeoTIFF).

The 4096 x 4096 scene is built from the real ``landsat5.npz`` chip mirrored 8 x 8, at
30 m in UTM, so both tools run at the model's own resolution. Writes JSON with the
figures, the machine and the versions.

Usage: benchmark_segment.py --data ../shared/data/real --out benchmarks/segment_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchmark_common import write_results

UKIS_BANDS = ["blue", "green", "red", "nir", "swir16", "swir22"]


def write_scene(img: np.ndarray, path: Path, georeferenced: bool) -> None:
    """Write an (rows, cols, 6) reflectance array as a band-named GeoTIFF."""
    import rasterio
    from rasterio.transform import from_origin

    extra = (
        {"crs": "EPSG:32633", "transform": from_origin(500000, 5000000, 30, 30)}
        if georeferenced
        else {}
    )
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=img.shape[1],
        height=img.shape[0],
        count=6,
        dtype="float32",
        tiled=True,
        compress="deflate",
        **extra,
    ) as dst:
        dst.write(np.moveaxis(img, -1, 0))
        for i, name in enumerate(UKIS_BANDS, start=1):
            dst.set_band_description(i, name)


def run_ours(src: Path, dst: Path, batch_size: int) -> dict:
    """Segment with cloudseg (the whole run: read, infer, write COG)."""
    from cloudseg.backend.segment import SegmentOptions, segment

    result = segment(
        src,
        dst,
        SegmentOptions(
            model="ukis-csmask-6b-l1c",
            scale=1.0,
            overwrite=True,
            batch_size=batch_size or None,
        ),
    )
    return {"runner": result.runner, "factor_note": "model grid = input grid (30 m)"}


def run_ukis(src: Path, dst: Path) -> dict:
    """Segment with ukis-csmask as its README shows: read all, CSmask, write."""
    import rasterio
    from ukis_csmask.mask import CSmask

    with rasterio.open(src) as ds:
        img = np.moveaxis(ds.read(), 0, -1).astype(np.float32)
        profile = ds.profile
    csm = CSmask(img, band_order=UKIS_BANDS, product_level="l1c").csm
    profile.update(count=1, dtype="uint8")
    with rasterio.open(dst, "w", **profile) as out:
        out.write(csm[..., 0], 1)
    return {"runner": "ukis-csmask CSmask (onnxruntime default providers, batch 1)"}


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM), in MiB.

    Not ``ru_maxrss``: Linux carries the parent's peak into a child's ``ru_maxrss``
    across fork and exec, so a child would report at least the parent's memory.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM in /proc/self/status")


def timed_child(args: list[str]) -> dict:
    """Run this script in a child process; return its JSON (with peak RSS) and wall time."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE, check=True
    ).stdout
    seconds = time.perf_counter() - start
    return json.loads(out) | {"seconds": round(seconds, 2)}


def agreement(data: Path, workdir: Path) -> list[dict]:
    """Pixel agreement of both tools on the labeled real scenes."""
    import rasterio
    from ukis_csmask.mask import CSmask

    from cloudseg.backend.segment import SegmentOptions, segment

    rows = []
    for scene in ("landsat5", "landsat7"):
        npz = np.load(data / "ukis_landsat" / f"{scene}.npz")
        img = npz["img"].astype(np.float32)
        src = workdir / f"{scene}.tif"
        write_scene(img, src, georeferenced=False)
        segment(
            src,
            workdir / f"{scene}_ours.tif",
            SegmentOptions(
                model="ukis-csmask-6b-l1c", resolution="native", scale=1.0, overwrite=True
            ),
        )
        with rasterio.open(workdir / f"{scene}_ours.tif") as ds:
            ours = ds.read(1)
        theirs = CSmask(img.copy(), band_order=UKIS_BANDS, product_level="l1c").csm[..., 0]
        labels = npz["msk"][..., 0]
        truth = np.select([labels == 4, labels == 0], [1, 2], default=0)
        rows.append(
            {
                "scene": f"ukis_landsat/{scene}.npz (512 x 512, 6 bands, labeled)",
                "agreement_percent": round(100 * float((ours == theirs).mean()), 3),
                "ours_vs_labels_accuracy_percent": round(100 * float((ours == truth).mean()), 2),
                "ukis_vs_labels_accuracy_percent": round(100 * float((theirs == truth).mean()), 2),
            }
        )
    return rows


def main() -> int:
    """Run the benchmark (or, with --run, one timed child)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/segment_cpu.json"))
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=0, help="0: the engine's default")
    parser.add_argument("--run", choices=["ours", "ukis"], help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dst", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        info = (
            run_ours(args.src, args.dst, args.batch_size)
            if args.run == "ours"
            else run_ukis(args.src, args.dst)
        )
        print(json.dumps(info | {"peak_rss_mib": peak_rss_mib()}))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        rows = agreement(args.data, workdir)
        chip = np.load(args.data / "ukis_landsat" / "landsat5.npz")["img"].astype(np.float32)
        reps = -(-args.size // chip.shape[0])
        tiled = np.concatenate(
            [
                np.concatenate(
                    [chip if (i + j) % 2 == 0 else chip[::-1, ::-1] for j in range(reps)], axis=1
                )
                for i in range(reps)
            ],
            axis=0,
        )[: args.size, : args.size]
        scene = workdir / "scene.tif"
        write_scene(tiled, scene, georeferenced=True)
        del tiled
        runs = {}
        for name in ("ours", "ukis"):
            runs[name] = timed_child(
                [
                    "--run",
                    name,
                    "--src",
                    str(scene),
                    "--dst",
                    str(workdir / f"{name}.tif"),
                    "--batch-size",
                    str(args.batch_size),
                ]
            )
            runs[name]["megapixels_per_second"] = round(
                args.size**2 / 1e6 / runs[name]["seconds"], 3
            )
        import rasterio

        with rasterio.open(workdir / "ours.tif") as a, rasterio.open(workdir / "ukis.tif") as b:
            big_agreement = float((a.read(1) == b.read(1)).mean())

    report = {
        "benchmark": "cloudseg segment vs ukis-csmask CSmask, same ONNX model (6b-l1c)",
        "scene": f"{args.size} x {args.size} px, 6 bands, float32, from real landsat5.npz "
        "mirrored; 30 m so both run at the model's resolution",
        "agreement_on_labeled_real_data": rows,
        "agreement_on_benchmark_scene_percent": round(100 * big_agreement, 3),
        "runs": runs,
        "speedup": round(runs["ukis"]["seconds"] / runs["ours"]["seconds"], 2),
        "peak_memory_ratio": round(runs["ours"]["peak_rss_mib"] / runs["ukis"]["peak_rss_mib"], 3),
        "batch_size": args.batch_size or "engine default (1 on the CPU)",
        "gdal_cachemax": os.environ.get("GDAL_CACHEMAX", "engine default (256 MiB)"),
    }
    write_results(report, ("cloudseg", "onnxruntime", "numpy", "ukis-csmask"), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
