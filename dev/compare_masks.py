#!/usr/bin/env python3
"""Show that the engine's masks are the same as at an earlier commit (e.g. after a refactor).

Segments the demo chip (On Cloud N ``adwp``, a folder of band files) and the 4096 x 4096
benchmark scene (the real ``landsat5.npz`` chip mirrored, as in benchmark_segment.py),
with the defaults and in float32, once with this checkout and once with ``--base`` (a
git worktree of that commit, imported in a child process), and compares the outputs:
the decoded mask and probability pixels byte for byte, the raster profile (size, CRS,
transform, data type, nodata, tiling, compression), the colour table and every
provenance tag except the creation time and the software version. Exits 1 on any
difference and prints each one.

Usage: compare_masks.py --data ../shared/data/real --base <commit>
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Tags that differ between any two runs by design (the accounting holds the run's seconds).
VOLATILE_TAGS = {"CLOUDSEG_CREATED", "CLOUDSEG_VERSION", "CLOUDSEG_ACCOUNTING"}
VARIANTS = {"default": {}, "fp32": {"precision": "fp32"}}

# The child imports whichever cloudseg comes first on its path (the worktree for the
# base) and segments each scene with each variant.
CHILD = """
import json, sys
from pathlib import Path
try:
    from cloudseg.backend import SegmentOptions, segment
except ImportError:  # commits before the public API in cloudseg.backend
    from cloudseg.backend.segment import SegmentOptions, segment
import cloudseg
jobs = json.loads(sys.argv[1])
for job in jobs:
    out = Path(job["out"])
    options = SegmentOptions(probabilities=out.with_suffix(".probs.tif"), **job["options"])
    segment(job["src"], out, options)
print(json.dumps({"cloudseg": cloudseg.__file__}))
"""


def describe(path: Path) -> dict:
    """What must be equal: pixel hashes, profile, colour table, stable tags."""
    import rasterio

    with rasterio.open(path) as ds:
        profile = {
            k: str(v)
            for k, v in ds.profile.items()
            if k in ("width", "height", "count", "dtype", "nodata", "crs", "transform")
            or k in ("blockxsize", "blockysize", "tiled", "compress", "interleave")
        }
        tags = {k: v for k, v in ds.tags().items() if k not in VOLATILE_TAGS}
        colormap = ds.colormap(1) if ds.count == 1 else None
        pixels = hashlib.sha256(ds.read().tobytes()).hexdigest()
        descriptions = list(ds.descriptions)
    return {
        "pixels_sha256": pixels,
        "profile": profile,
        "tags": tags,
        "colormap": {str(k): list(v) for k, v in (colormap or {}).items()},
        "descriptions": descriptions,
    }


def run_side(python_path: Path | None, scenes: dict[str, Path], out: Path) -> dict:
    """Segment every scene with every variant in a child; describe the outputs."""
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        {
            "src": str(src),
            "out": str(out / f"{scene}.{variant}.tif"),
            "options": {**scene_options, **options},
        }
        for scene, (src, scene_options) in scenes.items()
        for variant, options in VARIANTS.items()
    ]
    env = None
    if python_path is not None:
        import os

        env = dict(os.environ, PYTHONPATH=str(python_path))
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(jobs)],
        capture_output=True,
        text=True,
        env=env,
        cwd=out,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"segmenting failed:\n{done.stderr[-3000:]}")
    used = json.loads(done.stdout.strip().splitlines()[-1])["cloudseg"]
    print(f"ran {used}", file=sys.stderr)
    results = {}
    for job in jobs:
        for path in (Path(job["out"]), Path(job["out"]).with_suffix(".probs.tif")):
            results[path.name] = describe(path)
    return results


def scenes_for(data: Path, work: Path, size: int) -> dict[str, tuple[Path, dict]]:
    """The demo chip as it is, and the benchmark scene written as benchmark_segment does."""
    import numpy as np
    from benchmark_segment import mirrored_mosaic, write_scene

    chip = np.load(data / "ukis_landsat" / "landsat5.npz")["img"].astype(np.float32)
    scene = work / "scene.tif"
    tiled = np.moveaxis(mirrored_mosaic([np.moveaxis(chip, -1, 0)], size), 0, -1)
    write_scene(tiled, scene, georeferenced=True)  # float32 TOA reflectance, 0-1
    return {
        "demo-chip": (data / "oncloudn_l2a" / "adwp", {"product_level": "L2A"}),
        "scene4096": (scene, {"product_level": "L1C", "scale": 1.0}),
    }


def main() -> int:
    """Compare this checkout's masks with those of ``--base``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "real")
    parser.add_argument("--base", required=True, help="the commit to compare with")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--out", type=Path, help="also write the comparison as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cloudseg-compare-") as tmp:
        work = Path(tmp)
        scenes = scenes_for(args.data, work, args.size)
        base_root = work / "base"
        base_root.mkdir()
        worktree = base_root / "cloudseg"  # imported as the package `cloudseg`
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.base],
            check=True,
            capture_output=True,
        )
        try:
            base = run_side(base_root, scenes, work / "out-base")
            here = run_side(None, scenes, work / "out-here")
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)],
                check=False,
            )
    differences = [
        f"{name}: {key} differs: {base[name][key]} != {here[name][key]}"
        for name in sorted(base)
        for key in base[name]
        if base[name][key] != here[name][key]
    ]
    report = {
        "base": args.base,
        "outputs": sorted(base),
        "identical": not differences,
        "differences": differences,
        "pixels_sha256": {name: here[name]["pixels_sha256"] for name in sorted(here)},
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for line in differences:
        print(line)
    print(
        f"{len(base)} outputs compared with {args.base}: "
        + ("identical" if not differences else f"{len(differences)} differences")
    )
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
