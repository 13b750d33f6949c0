"""What the segmentation dock says about a model and the device, as text and HTML."""

from __future__ import annotations

import html
from typing import Any


def device_line(report: Any) -> str:
    """One plain line on what runs the models, e.g. "CPU (no GPU found) - openvino, bf16"."""
    if report.device == "cuda" and report.gpus:
        where = f"GPU: {report.gpus[0].name}"
    else:
        where = "CPU (no GPU found)" if "no usable GPU" in report.device_reason else "CPU"
    runner = report.builtin_runner.split(" on the ")[0]
    precision = "bf16" if "bf16" in report.builtin_runner else "float32"
    return f"{where} - {runner}, {precision} (details: hover)"


def preview_tooltip() -> str:
    """The Preview checkbox's tooltip, with the accuracy it costs as measured."""
    from ..backend.models.registry import preview_cost

    cost = preview_cost()
    return (
        "Run at the model's own resolution (30 m for the built-in models) instead of the "
        "layer's: about 9x faster on 10 m imagery, but small clouds and thin shadows are "
        "lost" + (f". {cost[0].upper()}{cost[1:]}." if cost else ".")
    )


def _ious(iou: dict[str, Any]) -> str:
    return ", ".join(
        f"{name} {value:.3f}" for name, value in iou.items() if isinstance(value, float)
    )


def accuracy_html(card: Any) -> str:
    """The card's measured accuracy: IoU of the default run per dataset, and TTA's gain.

    A fine-tuned version shows its IoU on the round's held-out boxes, beside the IoU
    the model it started from had on the same boxes.
    """
    entries = card.default_metrics()
    if not entries:
        return "Accuracy: not measured"
    before = {
        m.get("dataset"): m for m in card.metrics if str(m.get("config", "")).startswith("before")
    }
    lines = []
    for entry in entries:
        values = _ious(card.metric_iou(entry))
        reference = entry.get("reference", {}).get("iou", {})
        versus = " / ".join(f"{v:.3f}" for v in reference.values() if isinstance(v, float))
        mismatch = " (level mismatch)" if entry.get("level_mismatch") else ""
        line = (
            f"{html.escape(str(entry.get('dataset', entry.get('data', ''))))}{mismatch}: "
            f"{values}" + (f" (ukis-csmask {versus})" if versus else "")
        )
        earlier = before.get(entry.get("dataset")) if entry.get("config") == "after" else None
        if earlier is not None:
            line = (
                f"{html.escape(str(entry.get('data', entry.get('dataset', ''))))}: {values}"
                f"<br>{html.escape(str(earlier['config']))}: {_ious(card.metric_iou(earlier))}"
            )
        lines.append(line)
    gains = {(m.get("dataset"), m.get("config")): m.get("iou", {}) for m in card.metrics}
    for (dataset, config), iou in gains.items():
        base = gains.get((dataset, "default-fp32"))
        if config == "tta" and base:
            delta = ", ".join(
                f"{name} {iou[name] - base[name]:+.3f}"
                for name in list(iou)[1:]
                if isinstance(iou[name], float) and isinstance(base.get(name), float)
            )
            lines.append(f"TTA on {html.escape(str(dataset))}: {delta} (4x the time)")
            break
    held_out = any(entry.get("config") == "after" for entry in entries)
    title = "Measured IoU on held-out boxes:" if held_out else "Measured IoU, default run:"
    return f"{title}<br>" + "<br>".join(lines)


def card_html(card: Any) -> str:
    """The model card as the dock shows it: name, bands, level, classes, accuracy."""
    swatches = "".join(
        f'<span style="background:{c.color[:7]}">&nbsp;&nbsp;&nbsp;</span> '
        f"{c.value} {html.escape(c.name)}<br>"
        for c in card.classes
    )
    headline = card.headline()
    return (
        f"<b>{html.escape(card.name)}</b> {html.escape(card.version)}<br>"
        + (f"<i>Measured: {html.escape(headline)}</i><br>" if headline else "")
        + f"Bands: {', '.join(card.bands)}<br>Level: {card.product_level}, "
        f"trained at {card.resolution_m:g} m, tiles {card.tile_size} px<br>"
        f"Classes:<br>{swatches}License: {html.escape(card.license)}<br>"
        f"{html.escape(card.description)}<br>{accuracy_html(card)}"
    )
