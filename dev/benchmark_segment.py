#!/usr/bin/env python3
"""Benchmark the engine against ukis-csmask's own CSmask on the same ONNX model.

(a) the accuracy of each timed configuration (IoU per class) on the labeled real 30 m
scenes: the Sentinel-2 L1C scene and the Landsat chips of ukis-csmask; (b) throughput in megapixels
per second and (c) peak memory (VmHWM of the run's own process) on a 4096 x 4096,
6-band scene, each run in its own process, whole process included (read GeoTIFF,
segment, write GeoTIFF). Ours runs twice: with the defaults (bf16 where the CPU has
it) and in float32, which is what the defaults run on CPUs without native bf16. Each
tool runs ``--repeat`` times, interleaved, and the median is reported with every
run's seconds.

The 4096 x 4096 scene is built from the real ``landsat5.npz`` chip mirrored 8 x 8, at
30 m in UTM, so both tools run at the model's own resolution. Writes JSON with the
figures, the machine and the versions.

``--full-tile`` instead times one full Sentinel-2 tile (10980 x 10980 px at 10 m, 4
bands of uint16 L2A digital numbers mosaicked from the real On Cloud N chips, as a tiled
GeoTIFF), end to end to the mask COG, on ``--device``.

Usage: benchmark_segment.py --data ../shared/data/real --out dev/results/segment_cpu.json
       benchmark_segment.py --data ../shared/data/real --full-tile --device cuda \
           --out dev/results/segment_10980_cuda.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchmark_common import CHIP_BANDS, oncloudn_chips, write_results

from cloudseg.backend.choices import DEVICES, PRECISIONS

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


def run_ours(src: Path, dst: Path, args: argparse.Namespace) -> dict:
    """Segment with cloudseg (the whole run: read, infer, write COG)."""
    from cloudseg.backend.inference.segment import SegmentOptions, segment

    result = segment(
        src,
        dst,
        SegmentOptions(
            model=args.model or None,
            scale=args.scale,
            product_level=args.product_level,
            overwrite=True,
            batch_size=args.batch_size or None,
            precision=args.precision,
            device=args.device,
            resolution=args.resolution,
            runtime=args.runtime,
        ),
    )
    return {"runner": result.runner, "model": result.model}


#: ukis-csmask's band names for the Sentinel-2 band names of a scene's descriptions.
UKIS_NAMES = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir"}


def run_ukis(src: Path, dst: Path, product_level: str = "l1c") -> dict:
    """Segment with ukis-csmask as its README shows: read all, CSmask, write.

    The bands are named by the file's band descriptions (ukis-csmask's or Sentinel-2's
    names); uint16 digital numbers are scaled to reflectance first, as CSmask expects.
    """
    import rasterio
    from ukis_csmask.mask import CSmask

    with rasterio.open(src) as ds:
        img = np.moveaxis(ds.read(), 0, -1)
        scale = 1e-4 if img.dtype == np.uint16 else 1.0
        img = img.astype(np.float32)
        if scale != 1.0:
            img *= scale
        profile = ds.profile
        bands = [UKIS_NAMES.get(d, d) for d in ds.descriptions]
    csm = CSmask(img, band_order=bands, product_level=product_level.lower()).csm
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


def timed_runs(variants: dict[str, list[str]], repeat: int, megapixels: float) -> dict:
    """Run each variant ``repeat`` times, interleaved; summarise each by its median."""
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, child_args in variants.items():
            runs[name].append(timed_child(child_args))
    summary = {}
    for name, results in runs.items():
        seconds = [r["seconds"] for r in results]
        median = statistics.median(seconds)
        summary[name] = {k: v for k, v in results[0].items() if k != "seconds"} | {
            "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
            "seconds": median,
            "seconds_each_run": seconds,
            "megapixels_per_second": round(megapixels / median, 3),
        }
    return summary


def labeled_accuracy(data: Path, workdir: Path) -> dict[str, dict]:
    """IoU per class of each timed configuration, and of CSmask, on the labeled scenes.

    The same settings as the timed runs: our default, ours in float32 (what the default
    runs on CPUs without native bf16), and ukis-csmask's own CSmask.
    """
    import rasterio
    from reference_scenes import LabeledScene, csmask_classes, labeled_scenes, score

    from cloudseg.backend.inference.segment import SegmentOptions, segment

    def iou(scene: LabeledScene, prediction: np.ndarray) -> dict:
        return {k: round(v["iou"], 4) for k, v in score(scene, prediction)["per_class"].items()}

    table: dict[str, dict] = {"ours": {}, "ours_fp32": {}, "ukis": {}}
    for scene in labeled_scenes(data, workdir / "labeled"):
        if len(scene.bands) != 6 or not scene.true_resolution:
            continue  # the timed runs use the 6-band model on 30 m data
        for name, precision in (("ours", "auto"), ("ours_fp32", "fp32")):
            out = workdir / f"{scene.name}.{name}.tif"
            options = SegmentOptions(model="ukis-csmask-6b-l1c", precision=precision)
            segment(scene.image, out, options)
            with rasterio.open(out) as ds:
                table[name][scene.name] = iou(scene, ds.read(1))
        table["ukis"][scene.name] = iou(scene, csmask_classes(scene, 6))
    return table


def mirrored_mosaic(chips: list[np.ndarray], size: int) -> np.ndarray:
    """Cover ``size`` x ``size`` with the chips, every other one rotated by 180 degrees."""
    rows, cols = chips[0].shape[-2:]
    reps = -(-size // rows), -(-size // cols)
    out = np.empty((*chips[0].shape[:-2], reps[0] * rows, reps[1] * cols), chips[0].dtype)
    for i in range(reps[0]):
        for j in range(reps[1]):
            chip = chips[(i * reps[1] + j) % len(chips)]
            out[..., i * rows : (i + 1) * rows, j * cols : (j + 1) * cols] = (
                chip if (i + j) % 2 == 0 else chip[..., ::-1, ::-1]
            )
    return out[..., :size, :size]


def compare_with_ukis(args: argparse.Namespace, workdir: Path) -> dict:
    """The 4096 x 4096 comparison: agreement, throughput and peak memory."""
    accuracy = labeled_accuracy(args.data, workdir)
    chip = np.load(args.data / "ukis_landsat" / "landsat5.npz")["img"].astype(np.float32)
    tiled = np.moveaxis(mirrored_mosaic([np.moveaxis(chip, -1, 0)], args.size), 0, -1)
    scene = workdir / "scene.tif"
    write_scene(tiled, scene, georeferenced=True)
    del tiled
    common = ["--src", str(scene), "--batch-size", str(args.batch_size)]
    ours = [*common, "--run", "ours", "--model", "ukis-csmask-6b-l1c", "--scale", "1"]
    variants = {
        "ours": [*ours, "--dst", str(workdir / "ours.tif"), "--precision", "auto"],
        "ours_fp32": [*ours, "--dst", str(workdir / "ours_fp32.tif"), "--precision", "fp32"],
        "ukis": [*common, "--run", "ukis", "--dst", str(workdir / "ukis.tif")],
    }
    runs = timed_runs(variants, args.repeat, args.size**2 / 1e6)
    for name, run in runs.items():
        run["iou_on_labeled_scenes"] = accuracy[name]
    ukis = runs["ukis"]
    return {
        "benchmark": "cloudseg segment vs ukis-csmask CSmask, same ONNX model (6b-l1c)",
        "scene": f"{args.size} x {args.size} px, 6 bands, float32, from real landsat5.npz "
        "mirrored; 30 m so both run at the model's resolution",
        "runs": runs,
        "accuracy_note": "iou_on_labeled_scenes: each configuration's IoU per class on the "
        "labeled real 30 m scenes (dev/reference_scenes.py), next to CSmask's",
        "repeat": args.repeat,
        "speedup": round(ukis["seconds"] / runs["ours"]["seconds"], 2),
        "speedup_fp32": round(ukis["seconds"] / runs["ours_fp32"]["seconds"], 2),
        "peak_memory_ratio": round(runs["ours"]["peak_rss_mib"] / ukis["peak_rss_mib"], 3),
        "peak_memory_ratio_fp32": round(
            runs["ours_fp32"]["peak_rss_mib"] / ukis["peak_rss_mib"], 3
        ),
        "batch_size": args.batch_size or "engine default",
        "gdal_cachemax": os.environ.get("GDAL_CACHEMAX", "engine default (256 MiB)"),
    }


def write_full_tile(
    data: Path, tile: Path, size: int = 10980, names: list[str] | None = None
) -> None:
    """Write a ``size``-square, 4-band uint16 L2A tile at 10 m from the On Cloud N chips.

    ``names``: mirror only these chips (default: all five).
    """
    import rasterio

    bands = CHIP_BANDS
    chips, crs, transform = oncloudn_chips(data, names=names)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": len(bands),
        "dtype": "uint16",
        "nodata": 0,
        "crs": crs,
        "transform": transform,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
    }
    with rasterio.open(tile, "w", **profile) as dst:
        dst.write(mirrored_mosaic(chips, size))
        for i, band in enumerate(bands, start=1):
            dst.set_band_description(i, band)


def full_tile(args: argparse.Namespace, workdir: Path) -> dict:
    """A full 10980 x 10980 Sentinel-2 tile at 10 m, GeoTIFF to mask COG."""
    size = 10980
    tile = workdir / "tile.tif"
    write_full_tile(args.data, tile, size)
    child = ["--run", "ours", "--src", str(tile), "--dst", str(workdir / "tile_mask.tif")]
    child += ["--batch-size", str(args.batch_size), "--precision", args.precision]
    child += ["--device", args.device, "--product-level", "L2A"]
    variants = {
        "default": [*child, "--resolution", "native"],
        "preview": [*child, "--resolution", "preview"],
    }
    runs = timed_runs(variants, args.repeat, size**2 / 1e6)
    return {
        "benchmark": "cloudseg segment on one full Sentinel-2 tile, GeoTIFF to mask COG",
        "scene": f"{size} x {size} px at 10 m, 4 bands (B02, B03, B04, B08) uint16 L2A DN, "
        "tiled deflate GeoTIFF mosaicked from the real On Cloud N chips; the mask is "
        "written at 10 m. default: the model runs on the 10 m grid; preview: at its 30 m, "
        "probabilities interpolated back (see docs/accuracy.md for what that costs)",
        "device_asked": args.device,
        "runs": runs,
        "repeat": args.repeat,
        "goal_seconds_on_a_gpu": 5.0,
    }


def main() -> int:
    """Run the benchmark (or, with --run, one timed child)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path)
    parser.add_argument("--out", type=Path, default=Path("dev/results/segment_cpu.json"))
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each tool (median)")
    parser.add_argument("--batch-size", type=int, default=0, help="0: the engine's default")
    parser.add_argument("--full-tile", action="store_true", help="time a 10980 x 10980 tile")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument("--run", choices=["ours", "ukis"], help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dst", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--scale", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--product-level", help=argparse.SUPPRESS)
    parser.add_argument("--resolution", default="native", help=argparse.SUPPRESS)
    parser.add_argument("--runtime", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--memory-cap-gib", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        if args.memory_cap_gib:
            import resource

            cap = int(args.memory_cap_gib * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        info = (
            run_ours(args.src, args.dst, args)
            if args.run == "ours"
            else run_ukis(args.src, args.dst, args.product_level or "l1c")
        )
        print(json.dumps(info | {"peak_rss_mib": peak_rss_mib()}))
        return 0
    if args.data is None:
        parser.error("--data is required (the folder of real data, e.g. ../shared/data/real)")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        report = full_tile(args, workdir) if args.full_tile else compare_with_ukis(args, workdir)
    packages = ("cloudseg", "onnxruntime", "openvino", "numpy")
    write_results(report, packages if args.full_tile else (*packages, "ukis-csmask"), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
