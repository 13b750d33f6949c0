#!/usr/bin/env python3
"""Accuracy of the built-in models on the labeled real data, per run configuration.

Every labeled real scene in ``--data`` that a built-in model can run on (see
``dev/reference_scenes.py``) is segmented through the engine, as ``cloudseg
segment`` does, in each configuration that changes what a mask looks like: resolution
(native / preview), tile size and overlap, TTA, precision and runtime, and the 4- or
6-band model. Each row gives per-class IoU, F1, precision and recall, the seconds of
the run (model loading included; throughput is measured by benchmark_segment.py), and
the difference to ukis-csmask's own ``CSmask`` on the same reflectance, which is a row
of every table. A second study repeats the tiling choices over 9 shifted crops of each
scene, because one tile grid alone moves IoU by up to 0.01.

Writes ``--out`` (JSON with the machine and versions), ``--docs`` (the Markdown page of
tables) and, with ``--update-cards``, the ``metrics`` of the built-in model cards in
``resources/models``.

Usage: benchmark_accuracy.py --data ../shared/data/real [--update-cards]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from benchmark_common import write_results
from reference_scenes import (
    CLASSES,
    LabeledScene,
    csmask_classes,
    labeled_scenes,
    score,
    scored_only,
)

from cloudseg.backend._version import __version__
from cloudseg.backend.inference.options import RunOptions
from cloudseg.backend.inference.runners import openvino_bf16_problem
from cloudseg.backend.models.cards import metric_entry
from cloudseg.backend.models.registry import CARDS_DIR, builtin_models, load_model
from cloudseg.training.evaluate import evaluate_rasters

#: Per-class IoU may fall short of ukis-csmask's by this much and still count as equal.
TOLERANCE = 0.005


@dataclass(frozen=True)
class Config:
    """A run configuration: a label, what it is, and the SegmentOptions fields it sets."""

    label: str
    what: str
    options: dict[str, Any] = field(default_factory=dict)
    #: Only for scenes whose pixels are finer than the model's resolution.
    finer_only: bool = False
    #: Needs a CPU with native bf16.
    bf16: bool = False
    #: Also run where the scene is written at another pixel size than its own, or the
    #: model is for another product level (there only the resolution and the default
    #: matter; the rest would repeat the scene's own rows).
    everywhere: bool = False


CONFIGS = (
    Config(
        "default-fp32",
        "the default: input grid, the card's tiles (256 px, 52 overlap), float32 "
        "(onnxruntime; the default on CPUs without native bf16)",
        {"precision": "fp32"},
        everywhere=True,
    ),
    Config(
        "default-bf16",
        "the default on CPUs with AVX512-BF16/AMX: as above in bf16 (OpenVINO)",
        {"precision": "bf16"},
        bf16=True,
        everywhere=True,
    ),
    Config(
        "preview",
        "--resolution preview: the model's 30 m grid, probabilities interpolated back",
        {"precision": "fp32", "resolution": "preview"},
        finer_only=True,
        everywhere=True,
    ),
    Config(
        "tta",
        "--tta: mean of 4 views (flips, rotation), float32",
        {"precision": "fp32", "tta": True},
    ),
    Config(
        "preview-tta",
        "--resolution preview --tta",
        {"precision": "fp32", "resolution": "preview", "tta": True},
        finer_only=True,
        everywhere=True,
    ),
    Config(
        "shadow-geometry",
        "--shadow-geometry: shadow kept only where a cloud of the scene can cast it (no scene "
        "here records its sun: the direction is estimated from the scene), float32",
        {"precision": "fp32", "shadow_geometry": True},
        everywhere=True,
    ),
    Config("overlap-32", "--overlap 32 (19 % fewer tiles)", {"precision": "fp32", "overlap": 32}),
    Config("overlap-0", "--overlap 0 (35 % fewer tiles)", {"precision": "fp32", "overlap": 0}),
    Config("tile-512", "--tile-size 512 (52 overlap)", {"precision": "fp32", "tile_size": 512}),
    Config(
        "torch-fp32",
        "--runtime torch --device cpu: the network a GPU runs, imported from ONNX, float32",
        {"precision": "fp32", "runtime": "torch", "device": "cpu"},
    ),
    Config(
        "torch-bf16",
        "--runtime torch --precision bf16 on the CPU: the GPU's bf16 autocast numerics",
        {"precision": "bf16", "runtime": "torch", "device": "cpu"},
    ),
)
#: An int8 copy of each L1C model (onnxruntime static quantization, QDQ, per-channel
#: weights), calibrated on 9 tiles of this scene; run with onnxruntime like any model file.
INT8 = Config(
    "int8",
    "int8 (onnxruntime static quantization, calibrated on 9 tiles of ukis-landsat5)",
    {"precision": "fp32", "runtime": "onnxruntime"},
)
INT8_CALIBRATION = "ukis-landsat5"
#: Tiling choices repeated over shifted crops (the tile grid alone moves IoU).
OFFSET_CONFIGS = (
    ("overlap 52 (card)", {}),
    ("overlap 32", {"overlap": 32}),
    ("overlap 16", {"overlap": 16}),
    ("overlap 0", {"overlap": 0}),
    ("tile 384", {"tile_size": 384}),
)


def fits(model: Any, scene: LabeledScene) -> str | None:
    """Why ``model`` cannot run on ``scene``, or None."""
    missing = [b for b in model.card.bands if b not in scene.bands]
    if missing:
        return f"needs {', '.join(missing)}"
    return None


def csmask_row(scene: LabeledScene, bands: int, level: str) -> dict[str, Any]:
    """ukis-csmask's own CSmask on the scene's reflectance."""
    from importlib import metadata

    started = time.perf_counter()
    mask = csmask_classes(scene, bands, level.lower())
    seconds = time.perf_counter() - started
    metrics = score(scene, mask)
    tool = f"ukis-csmask {metadata.version('ukis-csmask')} CSmask"
    return metric_entry(scene.name, scene.description, f"CSmask ({bands}-band model)", metrics) | {
        "tool": tool,
        "seconds": round(seconds, 2),
    }


def engine_row(model: str, scene: LabeledScene, config: Config) -> dict[str, Any]:
    """One configuration of the engine on one scene."""
    options = RunOptions(**({"product_level": scene.product_level} | config.options))
    evaluation = evaluate_rasters(
        model, [scene.image], [scene.labels], label_classes=list(CLASSES), options=options
    )
    metrics = scored_only(evaluation.metrics, scene.scored)
    return metric_entry(scene.name, scene.description, config.label, metrics) | {
        "runner": evaluation.runner,
        "seconds": evaluation.seconds,
        "options": config.options,
    }


def compare(row: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Add the IoU differences to ukis-csmask and whether each is within the tolerance."""
    delta = {
        name: round(row["iou"][name] - reference["iou"][name], 4)
        for name in row["iou"]
        if row["iou"][name] is not None and reference["iou"].get(name) is not None
    }
    return row | {
        "iou_minus_csmask": delta,
        "at_least_csmask": all(d >= -TOLERANCE for d in delta.values()),
    }


def offset_study(
    scenes: list[LabeledScene],
    models: list[str],
    work: Path,
    configs: tuple[tuple[str, dict[str, Any]], ...] | list = OFFSET_CONFIGS,
) -> list[dict]:
    """Tiling choices (``configs``) over 9 crops (448 px, shifted 0/24/48 px) of 30 m scenes."""
    import rasterio

    rows = []
    chosen = [s for s in scenes if s.true_resolution and s.scored == CLASSES]
    for model in models:
        for label, options in configs:
            summary = {"model": model, "config": label, "options": options, "scenes": {}}
            for scene in chosen:
                with rasterio.open(scene.image) as src, rasterio.open(scene.labels) as lab:
                    image, labels, profile = src.read(), lab.read(1), src.profile
                    names = src.descriptions
                ious = []
                for dy in (0, 24, 48):
                    for dx in (0, 24, 48):
                        crop = work / "crop.tif"
                        window = (slice(dy, dy + 448), slice(dx, dx + 448))
                        with rasterio.open(
                            crop, "w", **(profile | {"width": 448, "height": 448})
                        ) as dst:
                            dst.write(image[:, window[0], window[1]])
                            dst.descriptions = names
                        crop_labels = work / "crop.labels.tif"
                        with rasterio.open(
                            crop_labels,
                            "w",
                            driver="GTiff",
                            width=448,
                            height=448,
                            count=1,
                            dtype="uint8",
                            nodata=255,
                        ) as dst:
                            dst.write(labels[window], 1)
                        evaluation = evaluate_rasters(
                            model,
                            [crop],
                            [crop_labels],
                            label_classes=list(CLASSES),
                            options=RunOptions(precision="fp32", **options),
                        )
                        ious.append([evaluation.metrics["per_class"][c]["iou"] for c in CLASSES])
                values = np.array(ious)
                summary["scenes"][scene.name] = {
                    "iou_mean": dict(zip(CLASSES, values.mean(0).round(4).tolist(), strict=True)),
                    "iou_std": dict(zip(CLASSES, values.std(0).round(4).tolist(), strict=True)),
                }
            rows.append(summary)
            print(json.dumps(summary), file=sys.stderr)
    return rows


def quantized_model(model: Any, calibration: LabeledScene, work: Path) -> Path:
    """An int8 copy of an ONNX model, calibrated on 9 tiles of ``calibration``."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    from cloudseg.backend.inference.onnxgraph import prepared_onnx
    from cloudseg.backend.models.registry import embed_onnx_card

    card = model.card
    mean = np.asarray(card.normalization["mean"], np.float32)[:, None, None]
    std = np.asarray(card.normalization["std"], np.float32)[:, None, None]
    index = [calibration.bands.index(b) for b in card.bands]
    image = (np.moveaxis(calibration.reflectance[..., index], -1, 0) - mean) / std
    tiles = [
        np.ascontiguousarray(image[None, :, y : y + 256, x : x + 256])
        for y in (0, 128, 256)
        for x in (0, 128, 256)
    ]

    class Tiles(CalibrationDataReader):
        def __init__(self) -> None:
            self.tiles = iter(tiles)

        def get_next(self) -> dict | None:
            tile = next(self.tiles, None)
            return None if tile is None else {"input": tile}

    graph = onnx.load(str(prepared_onnx(model)))
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = card.tile_size
    fixed, pre, out = (work / f"{card.name}.{s}.onnx" for s in ("fixed", "pre", "int8"))
    onnx.save(graph, str(fixed))
    quant_pre_process(str(fixed), str(pre), skip_symbolic_shape=True)
    quantize_static(
        str(pre),
        str(out),
        Tiles(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    embed_onnx_card(out, card)
    return out


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every scene x model x configuration, and the CSmask rows."""
    scenes = list(labeled_scenes(args.data, work / "scenes"))
    bf16_problem = openvino_bf16_problem()
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    models = [m for m in builtin_models() if not args.models or m.card.name in args.models]
    int8: dict[str, Path] | None = {} if not args.configs or "int8" in args.configs else None
    for scene in scenes:
        for model in models:
            card = model.card
            reason = fits(model, scene)
            if reason:
                skipped.append({"dataset": scene.name, "model": card.name, "why": reason})
                continue
            bands = len(card.bands)
            reference = csmask_row(scene, bands, card.product_level)
            mismatch = card.product_level != scene.product_level
            base = {"model": card.name, "level_mismatch": mismatch, "scored": list(scene.scored)}
            rows.append(base | reference)
            for config in CONFIGS:
                if args.configs and config.label not in args.configs:
                    continue
                finer = scene.resolution_m is not None and scene.resolution_m < card.resolution_m
                if config.finer_only and not finer:
                    continue
                if not config.everywhere and (mismatch or not scene.true_resolution):
                    continue
                if config.bf16 and bf16_problem:
                    skipped.append(
                        {"dataset": scene.name, "model": card.name, "config": config.label}
                        | {"why": bf16_problem}
                    )
                    continue
                rows.append(compare(base | engine_row(card.name, scene, config), reference))
                _show(rows[-1])
            if int8 is not None and not mismatch and scene.true_resolution:
                if card.name not in int8:
                    calibration = next(s for s in scenes if s.name == INT8_CALIBRATION)
                    int8[card.name] = quantized_model(model, calibration, work)
                row = engine_row(str(int8[card.name]), scene, INT8) | {"model": card.name}
                rows.append(compare(base | row, reference))
                _show(rows[-1])
    offsets = []
    if not args.no_offsets:
        offsets = offset_study(
            scenes, [m.card.name for m in models if m.card.product_level == "L1C"], work
        )
    return {
        "benchmark": "accuracy of the built-in models on the labeled real data, per configuration",
        "tolerance": TOLERANCE,
        "measured": dt.date.today().isoformat(),
        "cloudseg": __version__,
        "datasets": {s.name: s.description for s in scenes},
        "configs": {c.label: c.what for c in (*CONFIGS, INT8)},
        "rows": rows,
        "skipped": skipped,
        "tiling_over_shifted_crops": offsets,
    }


def _show(row: dict[str, Any]) -> None:
    ious = " ".join(f"{k} {v:.4f}" for k, v in row["iou"].items() if v is not None)
    print(f"{row['dataset']:22s} {row['model']:20s} {row['config']:13s} {ious}", file=sys.stderr)


# -- outputs ---------------------------------------------------------------------------------
def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(report: dict[str, Any]) -> str:
    """The docs page: one table per scene, and the shifted-crop study."""
    lines = [
        "# Accuracy of the built-in models on labeled real data",
        "",
        "Generated by `dev/benchmark_accuracy.py --data ../shared/data/real` "
        f"(cloudseg {report['cloudseg']}, {report['measured']}); the figures are in "
        "`dev/results/accuracy.json` and in the model cards (`cloudseg models --json`). "
        "Do not edit by hand.",
        "",
        "Every scene is written as a user would have it (uint16 reflectance x 10000, named "
        "bands) and segmented through the engine exactly as `cloudseg segment` runs it. "
        "*CSmask* is ukis-csmask's own tool on the same reflectance: the reference every "
        f"configuration is held to (per-class IoU at most {report['tolerance']} below it; "
        "a cross marks a class that falls further). The scenes are small, so the figures are "
        "indicative: one tile grid alone moves IoU by up to 0.01 (see the last table). "
        "Seconds are whole runs on 512 px scenes, model loading included; throughput is "
        "in `dev/results/segment_cpu_4096.json`.",
        "",
        "Configurations:",
        "",
    ]
    lines += [f"- `{label}`: {what}" for label, what in report["configs"].items()]
    lines += ["", "Scenes (see `dev/reference_scenes.py` and the data's PROVENANCE.md):", ""]
    lines += [f"- `{name}`: {what}" for name, what in report["datasets"].items()]
    for scene in report["datasets"]:
        rows = [r for r in report["rows"] if r["dataset"] == scene]
        if not rows:
            continue
        scored = rows[0]["scored"]
        lines += ["", f"## {scene}", ""]
        if any(r["level_mismatch"] for r in rows):
            lines += [
                "L2A models on this top-of-atmosphere (L1C) scene are a level mismatch: their "
                "rows show how they behave on the wrong level, not their accuracy on L2A.",
                "",
            ]
        shown = [c for c in scored if c != "clear"]
        header = ["model", "configuration", *(f"IoU {c}" for c in scored)]
        header += [f"F1 / precision / recall {c}" for c in shown] + ["s", "runner"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|---|---|" + "---:|" * (len(scored) + len(shown) + 1) + "---|")
        for row in rows:
            marks = []
            for c in scored:
                cell = _fmt(row["iou"].get(c))
                delta = row.get("iou_minus_csmask", {}).get(c)
                if delta is not None and delta < -report["tolerance"]:
                    cell += " ✗"
                marks.append(cell)
            prf = [
                f"{_fmt(row['f1'].get(c))} / {_fmt(row['precision'].get(c))} / "
                f"{_fmt(row['recall'].get(c))}"
                for c in shown
            ]
            config = row["config"] if row["config"].startswith("CSmask") else f"`{row['config']}`"
            lines.append(
                f"| {row['model']} | {config} | {' | '.join(marks)} | {' | '.join(prf)} | "
                f"{row['seconds']:.1f} | {row.get('runner', row.get('tool', ''))} |"
            )
    if report["tiling_over_shifted_crops"]:
        lines += [
            "",
            "## Tiling over shifted tile grids",
            "",
            "Each tiling choice on 9 crops of 448 px (shifted by 0, 24, 48 px each way) of "
            "the 30 m scenes, float32: mean IoU (standard deviation) per class. A choice that "
            "saves tiles is worth it only if it holds up on average, not on one grid.",
            "",
            "| model | tiling | scene | IoU clear | IoU cloud | IoU cloud shadow |",
            "|---|---|---|---:|---:|---:|",
        ]
        for study in report["tiling_over_shifted_crops"]:
            for scene, values in study["scenes"].items():
                cells = [
                    f"{values['iou_mean'][c]:.3f} ({values['iou_std'][c]:.3f})" for c in CLASSES
                ]
                lines.append(
                    f"| {study['model']} | {study['config']} | {scene} | {' | '.join(cells)} |"
                )
    if report["skipped"]:
        lines += ["", "Not run:", ""]
        lines += [
            f"- {s['model']} on {s['dataset']}"
            + (f" ({s['config']})" if "config" in s else "")
            + f": {s['why']}"
            for s in report["skipped"]
        ]
    return "\n".join(lines) + "\n"


CARD_CONFIGS = ("default-fp32", "default-bf16", "preview", "tta")


def update_cards(report: dict[str, Any]) -> list[Path]:
    """Write each built-in card's ``metrics``: its default, preview and TTA rows."""
    written = []
    for path in sorted(CARDS_DIR.glob("*.json")):
        card = json.loads(path.read_text(encoding="utf-8"))
        references = {
            r["dataset"]: r
            for r in report["rows"]
            if r["model"] == card["name"] and r["config"].startswith("CSmask")
        }
        entries = []
        for row in report["rows"]:
            if row["model"] != card["name"] or row["config"] not in CARD_CONFIGS:
                continue
            reference = references[row["dataset"]]
            keep = ("dataset", "data", "config", "pixels", "mean_iou", "iou", "f1", "precision")
            entry = {k: row[k] for k in (*keep, "recall")}
            entry |= {
                "scored": row["scored"],
                "level_mismatch": row["level_mismatch"],
                "runner": row["runner"],
                "reference": {"tool": reference["tool"], "iou": reference["iou"]},
                "measured": report["measured"],
                "source": "dev/benchmark_accuracy.py (dev/results/accuracy.json)",
            }
            entries.append(entry)
        card["metrics"] = entries
        path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        load_model(card["name"])  # still a valid card
        written.append(path)
    return written


def main() -> int:
    """Run the benchmark and write its outputs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="../shared/data/real")
    parser.add_argument("--out", type=Path, default=Path("dev/results/accuracy.json"))
    parser.add_argument("--docs", type=Path, default=Path("docs/accuracy.md"))
    parser.add_argument("--update-cards", action="store_true", help="write the cards' metrics")
    parser.add_argument("--models", nargs="*", help="only these built-in models")
    parser.add_argument("--configs", nargs="*", help="only these configurations")
    parser.add_argument("--no-offsets", action="store_true", help="skip the shifted-crop study")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cloudseg-accuracy-") as tmp:
        report = run(args, Path(tmp))
    packages = ("cloudseg", "onnxruntime", "openvino", "torch", "ukis-csmask", "numpy")
    write_results(report, packages, args.out)
    args.docs.parent.mkdir(parents=True, exist_ok=True)
    args.docs.write_text(markdown(report), encoding="utf-8")
    if args.update_cards:
        for path in update_cards(report):
            print(f"updated {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
