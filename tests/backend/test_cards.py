"""Model cards: what a fine-tuned version says about its accuracy; the classes' colours."""

from __future__ import annotations

from dataclasses import replace

from cloudseg.backend.models.cards import CLASS_COLORS, class_color, metric_entry
from cloudseg.backend.models.registry import load_model


def finetuned_card():
    """A version's card as a fine-tuning round writes it: IoU before and after, held out."""
    base = load_model("ukis-csmask-4b-l2a").card
    data = "coast.gpkg: 1 held-out box(es)"

    def metrics(iou: dict[str, float]) -> dict:
        return {"per_class": {n: {"iou": v} for n, v in iou.items()}, "mean_iou": 0.8}

    before = {"clear": 0.9, "cloud": 0.856, "cloud shadow": 0.7}
    after = {"clear": 0.91, "cloud": 0.871, "cloud shadow": 0.72}
    return replace(
        base,
        name="coast-r1",
        format="torch",
        metrics=[
            metric_entry("coast.gpkg", data, f"before ({base.name})", metrics(before)),
            metric_entry("coast.gpkg", data, "after", metrics(after)),
        ],
    )


def test_a_finetuned_version_reports_its_held_out_iou():
    card = finetuned_card()
    assert [m["config"] for m in card.default_metrics()] == ["after"]
    assert card.headline() == "cloud IoU 0.871, cloud shadow IoU 0.720 on coast.gpkg"
    assert card.summary()["accuracy"] == card.headline()


def test_classes_without_colours_get_the_projects_by_kind():
    assert class_color("cloud") == class_color("thick cloud") == CLASS_COLORS["cloud"]
    assert class_color("cloud shadow") == class_color("shadow") == CLASS_COLORS["shadow"]
    assert class_color("thin cloud") == class_color("cirrus") == CLASS_COLORS["thin cloud"]
    assert class_color("clear") == CLASS_COLORS["clear"]
    assert class_color("snow") == CLASS_COLORS["other"]
    assert class_color("cloud", "#123456") == "#123456"  # a recorded colour wins
    # The built-in masks use the same colours.
    builtin = {c.name: c.color for c in load_model("ukis-csmask-4b-l2a").card.classes}
    assert builtin["cloud"] == CLASS_COLORS["cloud"]
    assert builtin["cloud shadow"] == CLASS_COLORS["shadow"]
