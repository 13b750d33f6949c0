#!/usr/bin/env python3
"""Accuracy-controlled int8 of the built-in L1C models, judged leave-one-scene-out.

For each L1C built-in model and each labeled real scene it fits at its own resolution
(``dev/reference_scenes.py``), an int8 copy (ONNX QDQ, so the engine runs it like
any model file) is made from tiles of the *other* scenes only. NNCF quantizes it
(asymmetric activations, depthwise convolutions left in float: see START_IGNORED), with
the other scenes' tiles as calibration data; then, as accuracy control, every activation
quantizer is ranked by its sensitivity (the validation agreement gained by leaving it
in float) and the fewest most sensitive ones are left in float that bring the
validation metric within ``--max-drop`` of float32. The validation metric, on the same
other-scene tiles, needs no labels: the smallest per-class IoU between the int8 and
the float32 model's masks (float32 scores 1). NNCF's own
``quantize_with_accuracy_control`` was tried first: it re-ranks all ~170 quantizers
(2 min on 2 cores) after most reverts, too slow for the folds here.

The held-out scene is then segmented through the engine, as ``cloudseg segment`` runs
a model file, with onnxruntime and with OpenVINO, and every class's IoU on the labels is
set next to the native float32 run (the accuracy harness's ``default-fp32`` row); a
class-scene more than ``BAR`` away is marked. The scene written as 10 m input is judged
with the model that held out its 30 m twin.

Optionally (``--offsets``) the card's tiling is repeated over 9 shifted crops of each
held-out scene (benchmark_accuracy.offset_study) for int8 and float32, and
(``--speed``) the seconds of a whole ``segment`` run on a mirrored 30 m scene are timed
for ukis-csmask, onnxruntime float32, OpenVINO float32 / bf16 / int8 and onnxruntime int8.

Needs ``pip install nncf`` (not a cloudseg dependency). Writes ``--out`` (JSON with the
machine and versions).

Usage: study_int8.py --data ../shared/data/real --out dev/results/int8_study.json \
           [--offsets] [--speed 2048]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from benchmark_accuracy import CONFIGS, OFFSET_CONFIGS, Config, engine_row, fits, offset_study
from benchmark_common import write_results
from reference_scenes import CLASSES, LabeledScene, labeled_scenes

from cloudseg.backend._version import __version__
from cloudseg.backend.inference.runners import openvino_bf16_problem
from cloudseg.backend.models.registry import builtin_models

#: Every class on every labeled scene must stay this close to native float32 (IoU).
BAR = 0.005
#: Tiles of the other scenes for calibration and validation: 256 px every 128 px.
STRIDE = 128
#: Tiles of the validation set that rank the quantizers (all of them validate each step).
RANKING_TILES = 8
#: Where accuracy control starts from (found on the ukis-s2-l1c-held-out fold of the
#: 6-band model, validation agreement of the whole int8 model: NNCF's defaults 0.909,
#: asymmetric activations (MIXED) 0.949, and the depthwise convolutions, memory-bound
#: and so of little int8 gain, in float 0.975; SE blocks, stem, head or decoder in float
#: changed little).
START_IGNORED = [".*_depthwise_conv.*"]
FP32 = next(c for c in CONFIGS if c.label == "default-fp32")
INT8_ORT = Config(
    "int8-onnxruntime",
    "the int8 QDQ model file run by onnxruntime",
    {"precision": "fp32", "runtime": "onnxruntime"},
)
INT8_OV = Config(
    "int8-openvino",
    "the int8 QDQ model file run by OpenVINO (int8 kernels, float32 elsewhere)",
    {"precision": "fp32", "runtime": "openvino"},
)


def tiles_of(
    model: Any, scenes: list[LabeledScene]
) -> tuple[list[np.ndarray], list[str], list[np.ndarray]]:
    """Normalised (1, bands, 256, 256) tiles of ``scenes`` for ``model``, every STRIDE px.

    Returns:
        The tiles, the name of each one's scene, and each one's labels (255 unlabeled).
    """
    card = model.card
    mean = np.asarray(card.normalization["mean"], np.float32)[:, None, None]
    std = np.asarray(card.normalization["std"], np.float32)[:, None, None]
    size = card.tile_size
    tiles, owners, labels = [], [], []
    for scene in scenes:
        index = [scene.bands.index(b) for b in card.bands]
        image = (np.moveaxis(scene.reflectance[..., index], -1, 0) - mean) / std
        image = np.nan_to_num(image.astype(np.float32))
        truth = scene.reference()
        rows, cols = image.shape[1:]
        for y in range(0, rows - size + 1, STRIDE):
            for x in range(0, cols - size + 1, STRIDE):
                tiles.append(np.ascontiguousarray(image[None, :, y : y + size, x : x + size]))
                owners.append(scene.name)
                labels.append(truth[y : y + size, x : x + size])
    return tiles, owners, labels


def session(proto: Any) -> Any:
    """An onnxruntime CPU session of an ONNX ModelProto."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        proto.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )


def masks(proto: Any, tiles: list[np.ndarray]) -> list[np.ndarray]:
    """The class index of every pixel of every tile."""
    sess = session(proto)
    name = sess.get_inputs()[0].name
    return [sess.run(None, {name: t})[0].argmax(1)[0] for t in tiles]


def agreement(ours: list[np.ndarray], reference: list[np.ndarray], classes: int) -> float:
    """The smallest per-class IoU between two sets of masks (classes present in either)."""
    a, b = np.stack(ours), np.stack(reference)
    ious = []
    for c in range(classes):
        union = np.count_nonzero((a == c) | (b == c))
        if union:
            ious.append(np.count_nonzero((a == c) & (b == c)) / union)
    return float(min(ious))


def float_graph(model: Any, work: Path) -> Any:
    """The model's float32 graph with the tile size fixed (what NNCF quantizes)."""
    import onnx

    from cloudseg.backend.inference.onnxgraph import prepared_onnx

    graph = prepared_onnx(model)
    proto = onnx.load_from_string(graph) if isinstance(graph, bytes) else onnx.load(str(graph))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_value = 1
    dims[2].dim_value = dims[3].dim_value = model.card.tile_size
    return without_float_casts(proto)


def without_float_casts(proto: Any) -> Any:
    """Drop the Casts to float32 of tensors that already are float32.

    The float16 weights' conversion to float32 (:mod:`.onnxgraph`) leaves them, one of
    them making the graph's output, which NNCF's own clean-up of such Casts trips on.
    """
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    types |= {v.name: v.type.tensor_type.elem_type for v in inferred.graph.input}
    outputs = {o.name for o in proto.graph.output}
    float32 = onnx.TensorProto.FLOAT
    for cast in [n for n in proto.graph.node if n.op_type == "Cast"]:
        to = next(a.i for a in cast.attribute if a.name == "to")
        if to != float32 or types.get(cast.input[0]) != float32:
            continue
        source, target = cast.input[0], cast.output[0]
        proto.graph.node.remove(cast)
        if target in outputs:  # the producer writes the graph output itself
            for node in proto.graph.node:
                node.output[:] = [target if o == source else o for o in node.output]
                node.input[:] = [target if i == source else i for i in node.input]
        else:
            for node in proto.graph.node:
                node.input[:] = [source if i == target else i for i in node.input]
    onnx.checker.check_model(proto)
    return proto


def activation_quantizers(proto: Any) -> list[str]:
    """The outputs of the DequantizeLinear nodes of activations (not of weights)."""
    made = {o: n for n in proto.graph.node for o in n.output}
    return [
        n.output[0]
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in made
        and made[n.input[0]].op_type == "QuantizeLinear"
    ]


def in_float(proto: Any, quantizers: list[str]) -> Any:
    """A copy of ``proto`` whose consumers of ``quantizers`` read the float tensor instead."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    made = {o: n for n in copy.graph.node for o in n.output}
    source = {dq: made[made[dq].input[0]].input[0] for dq in quantizers}
    for node in copy.graph.node:
        node.input[:] = [source.get(i, i) for i in node.input]
    while True:  # drop the Q/DQ nodes nothing reads any more
        used = {i for n in copy.graph.node for i in n.input} | {o.name for o in copy.graph.output}
        dead = [
            n
            for n in copy.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear")
            and not any(o in used for o in n.output)
        ]
        if not dead:
            return copy
        for node in dead:
            copy.graph.node.remove(node)


def nncf_start(proto: Any, tiles: list[np.ndarray]) -> Any:
    """NNCF's int8 graph of ``proto`` calibrated on ``tiles``: where accuracy control starts."""
    import nncf

    name = proto.graph.input[0].name
    calibration = nncf.Dataset(list(range(len(tiles))), lambda i: {name: tiles[i]})
    return nncf.quantize(
        proto,
        calibration,
        preset=nncf.QuantizationPreset.MIXED,
        ignored_scope=nncf.IgnoredScope(patterns=START_IGNORED, validate=False),
        subset_size=len(tiles),
    )


def start_int8(model: Any, others: list[LabeledScene], work: Path, tag: str) -> Path:
    """The NNCF start (every quantizer of START_IGNORED's scope in int8) as a model file."""
    import onnx

    from cloudseg.backend.models.registry import embed_onnx_card

    tiles, _, _ = tiles_of(model, others)
    out = work / f"{model.card.name}.{tag}.start.int8.onnx"
    onnx.save(nncf_start(float_graph(model, work), tiles), str(out))
    embed_onnx_card(out, model.card)
    return out


def quantize(
    model: Any, others: list[LabeledScene], max_drop: float, work: Path, tag: str
) -> tuple[Path, dict[str, Any]]:
    """An int8 copy of ``model`` calibrated and accuracy-controlled on ``others`` only.

    NNCF quantizes (calibration on the other scenes' tiles); each activation quantizer's
    sensitivity is the validation agreement gained by leaving it alone in float, on
    RANKING_TILES tiles; the fewest most sensitive quantizers are put back into float
    (bisection over the ranking) that bring the agreement on all tiles to ``1 - max_drop``.
    """
    import onnx

    from cloudseg.backend.models.registry import embed_onnx_card

    card = model.card
    proto = float_graph(model, work)
    name = proto.graph.input[0].name
    tiles, owners, labels = tiles_of(model, others)
    scored = {s.name: s.scored for s in others}
    reference = masks(proto, tiles)
    classes = len(card.classes)

    def predict(candidate: Any, chosen: list[int]) -> list[np.ndarray]:
        sess = session(candidate)
        return [sess.run(None, {name: tiles[i]})[0].argmax(1)[0] for i in chosen]

    def label_ious(predicted: list[np.ndarray]) -> dict[str, float]:
        """IoU on the labels per scene and scored class, over all tiles."""
        out = {}
        for scene, names in scored.items():
            mine = [i for i, o in enumerate(owners) if o == scene]
            pred = np.stack([predicted[i] for i in mine])
            truth = np.stack([labels[i] for i in mine])
            valid = truth < classes
            for c in names:
                k = CLASSES.index(c)
                union = np.count_nonzero(valid & ((pred == k) | (truth == k)))
                inter = np.count_nonzero(valid & (pred == k) & (truth == k))
                out[f"{scene}/{c}"] = inter / union if union else 1.0
        return out

    float_ious = label_ious(reference)
    everything = list(range(len(tiles)))

    def drop(candidate: Any) -> float:
        """The largest IoU change of a scored class on an other scene, vs float32."""
        ious = label_ious(predict(candidate, everything))
        return max(abs(ious[k] - float_ious[k]) for k in float_ious)

    def agreeing(candidate: Any, chosen: list[int]) -> float:
        """The share of pixels of ``chosen`` tiles where the masks equal float32's."""
        ours = predict(candidate, chosen)
        return float(
            np.mean([np.mean(o == reference[i]) for o, i in zip(ours, chosen, strict=True)])
        )

    started = time.perf_counter()
    quantized = nncf_start(proto, tiles)
    plain_drop = drop(quantized)
    units = activation_quantizers(quantized)
    ranking = everything[:: max(1, len(tiles) // RANKING_TILES)][:RANKING_TILES]
    base = agreeing(quantized, ranking)
    gain = {u: agreeing(in_float(quantized, [u]), ranking) - base for u in units}
    ranked = sorted(units, key=lambda u: -gain[u])
    tried: dict[int, float] = {0: plain_drop}
    low, high = 0, len(ranked)  # the drop is taken to shrink as k grows
    if plain_drop > max_drop:
        while high - low > 1:
            k = (low + high) // 2
            tried[k] = drop(in_float(quantized, ranked[:k]))
            low, high = (low, k) if tried[k] <= max_drop else (k, high)
        kept_float = high
    else:
        kept_float = 0
    result = in_float(quantized, ranked[:kept_float])
    final = tried[kept_float] if kept_float in tried else drop(result)
    metric = agreement(predict(result, everything), reference, classes)
    seconds = time.perf_counter() - started
    out = work / f"{card.name}.{tag}.int8.onnx"
    onnx.save(result, str(out))
    embed_onnx_card(out, card)
    made = {o: n for n in result.graph.node for o in n.output}
    convs = [n for n in result.graph.node if n.op_type == "Conv"]
    int8_convs = sum(
        1
        for n in convs
        if all(i in made and made[i].op_type == "DequantizeLinear" for i in n.input[:2])
    )
    return out, {
        "calibrated_on": [s.name for s in others],
        "tiles": len(tiles),
        "validation_drop_all_int8": round(plain_drop, 4),
        "validation_drop": round(final, 4),
        "meets_validation_target": final <= max_drop,
        "validation_float32_iou": {k: round(v, 4) for k, v in float_ious.items()},
        "mask_agreement_min_class_iou": round(metric, 4),
        "activation_quantizers": len(units),
        "kept_float": kept_float,
        "kept_float_names": ranked[:kept_float],
        "bisection": {str(k): round(v, 4) for k, v in sorted(tried.items())},
        "convolutions": len(convs),
        "int8_convolutions": int8_convs,
        "seconds": round(seconds, 1),
    }


def judged(row: dict[str, Any], fp32: dict[str, Any]) -> dict[str, Any]:
    """Add the IoU difference to float32 per class, and which classes break the bar."""
    delta = {
        c: round(row["iou"][c] - fp32["iou"][c], 4)
        for c in row["iou"]
        if row["iou"][c] is not None and fp32["iou"].get(c) is not None
    }
    return row | {
        "iou_minus_fp32": delta,
        "beyond_bar": [c for c, d in delta.items() if abs(d) > BAR],
    }


def study_model(
    model: Any, scenes: list[LabeledScene], args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """One L1C model x every held-out scene: quantize on the others, judge on it."""
    card = model.card
    own = [s for s in scenes if not fits(model, s) and s.product_level == card.product_level]
    held_out = [s for s in own if s.true_resolution]
    entry: dict[str, Any] = {"folds": {}, "rows": [], "offsets": [], "int8_files": {}}
    for scene in held_out:
        others = [s for s in held_out if s is not scene]
        path, info = quantize(model, others, args.max_drop, work, scene.name)
        entry["folds"][scene.name] = info
        entry["int8_files"][scene.name] = path
        print(card.name, scene.name, json.dumps(info), file=sys.stderr)
        # The scene itself, and its twin written as 10 m input (same pixels).
        judged_on = [scene] + [
            s for s in own if not s.true_resolution and s.name.startswith(scene.name)
        ]
        for target in judged_on:
            fp32 = engine_row(card.name, target, FP32) | {"model": card.name}
            entry["rows"].append(fp32 | {"held_out": scene.name})
            for config in (INT8_ORT, INT8_OV):
                row = engine_row(str(path), target, config) | {"model": card.name}
                entry["rows"].append(judged(row, fp32) | {"held_out": scene.name})
                print(
                    f"{target.name:20s} {config.label:17s}",
                    entry["rows"][-1]["iou_minus_fp32"],
                    file=sys.stderr,
                )
        if args.offsets and scene.scored == CLASSES:
            pair = ((f"int8 ({scene.name} held out)", str(path)), ("fp32", card.name))
            for label, ref in pair:
                (row,) = offset_study([scene], [ref], work, configs=OFFSET_CONFIGS[:1])
                entry["offsets"].append(row | {"model": card.name, "which": label})
    for config, key in ((INT8_ORT, "ships_onnxruntime"), (INT8_OV, "ships_openvino")):
        rows = [r for r in entry["rows"] if r["config"] == config.label]
        entry[key] = all(not r["beyond_bar"] for r in rows)
        entry[key.replace("ships", "beyond_bar")] = [
            {"dataset": r["dataset"], "class": c, "iou_minus_fp32": r["iou_minus_fp32"][c]}
            for r in rows
            for c in r["beyond_bar"]
        ]
    return entry


def speed(args: argparse.Namespace, int8: Path, work: Path) -> dict[str, Any]:
    """Seconds of a whole segment run on a mirrored 30 m scene, per runtime and precision."""
    from benchmark_segment import mirrored_mosaic, run_ukis, write_scene

    from cloudseg.backend.inference.segment import SegmentOptions, segment

    chip = np.load(args.data / "ukis_landsat" / "landsat5.npz")["img"].astype(np.float32)
    tiled = np.moveaxis(mirrored_mosaic([np.moveaxis(chip, -1, 0)], args.speed), 0, -1)
    src = work / "speed.tif"
    write_scene(tiled, src, georeferenced=True)
    variants: dict[str, Any] = {
        "ukis-csmask": lambda dst: run_ukis(src, dst),
        "fp32-onnxruntime": (None, "fp32", "onnxruntime"),
        "fp32-openvino": (None, "fp32", "openvino"),
        "int8-onnxruntime": (int8, "fp32", "onnxruntime"),
        "int8-openvino": (int8, "fp32", "openvino"),
    }
    if openvino_bf16_problem() is None:
        variants["bf16-openvino"] = (None, "bf16", "openvino")
    seconds: dict[str, list[float]] = {k: [] for k in variants}
    runners: dict[str, str] = {}
    for _ in range(args.repeat):
        for label, how in variants.items():
            dst = work / f"speed.{label}.tif"
            started = time.perf_counter()
            if callable(how):
                runners[label] = how(dst)["runner"]
            else:
                model, precision, runtime = how
                result = segment(
                    src,
                    dst,
                    SegmentOptions(
                        model=str(model) if model else "ukis-csmask-6b-l1c",
                        product_level="L1C",
                        overwrite=True,
                        precision=precision,
                        runtime=runtime,
                    ),
                )
                runners[label] = result.runner
            seconds[label].append(round(time.perf_counter() - started, 2))
            print(label, seconds[label][-1], file=sys.stderr)
    median = {k: statistics.median(v) for k, v in seconds.items()}
    return {
        "scene": f"{args.speed} x {args.speed} px, 6 bands, float32, real landsat5.npz "
        "mirrored, 30 m; whole segment run (read, infer, write COG), in this process",
        "int8_model": str(int8.name),
        "seconds_each_run": seconds,
        "seconds_median": median,
        "runners": runners,
        "speedup_vs_ukis": {k: round(median["ukis-csmask"] / v, 2) for k, v in median.items()},
    }


def cpu_flags() -> dict[str, bool]:
    """The CPU features that decide bf16 and int8 speed."""
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return {f: f in flags for f in wanted}


def main() -> int:
    """Run the study, writing the JSON after each model (so a partial run keeps its figures)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("dev/results/int8_study.json"))
    parser.add_argument("--models", nargs="*", help="built-in L1C model names, in this order")
    parser.add_argument("--max-drop", type=float, default=BAR)
    parser.add_argument("--offsets", action="store_true", help="also over 9 shifted crops")
    parser.add_argument("--speed", type=int, default=0, help="time a N x N scene (0: skip)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    report: dict[str, Any] = {
        "benchmark": "accuracy-controlled int8 (NNCF QDQ + sensitive quantizers kept in float), "
        "leave-one-scene-out, "
        "per class IoU next to native float32",
        "bar": BAR,
        "max_drop": args.max_drop,
        "validation_metric": "largest |IoU change vs float32| of a scored class on an other "
        "scene's labels, over its 256 px tiles (every 128 px); the ranking of quantizers: "
        "share of pixels equal to float32's mask on RANKING_TILES of those tiles",
        "start": {"preset": "MIXED", "ignored_scope_patterns": START_IGNORED},
        "ranking_tiles": RANKING_TILES,
        "measured": dt.date.today().isoformat(),
        "cloudseg": __version__,
        "cpu_flags": cpu_flags(),
        "note": "2 CPU cores, shared with another engineer's work: timings are indicative",
        "complete": False,
        "models": {},
        "speed": None,
    }
    packages = ("onnxruntime", "openvino", "nncf", "onnx", "numpy")
    builtin = {m.card.name: m for m in builtin_models() if m.card.product_level == "L1C"}
    names = args.models or sorted(builtin, reverse=True)  # the 6-band default first
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        scenes = list(labeled_scenes(args.data, work / "scenes"))
        for name in names:
            entry = study_model(builtin[name], scenes, args, work)
            files = entry.pop("int8_files")
            entry["int8_files"] = {k: v.name for k, v in files.items()}
            report["models"][name] = entry
            write_results(report, packages, args.out)
            if args.speed and report["speed"] is None:
                report["speed"] = speed(args, next(iter(files.values())), work)
                write_results(report, packages, args.out)
    report["complete"] = True
    write_results(report, packages, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
