"""The review tab of the label dock in the real QGIS, on a store ingested with mask_values."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.real_data, pytest.mark.slow]


def test_reviewing_a_store_with_mask_values_by_hand(run_qgis):
    seen = run_qgis("review_tab", timeout=300)
    assert seen["errors"] == []
    # A path typed by hand: nothing said per keystroke; one message for a wrong path once
    # the typing is done; the right one opens the queue and says nothing more.
    assert seen["messages_typing_wrong"] == []
    (wrong,) = seen["messages_after_wrong"]
    assert wrong.startswith("no label check report at ") and "nowhere" in wrong
    assert seen["messages_typing_right"] == seen["messages_after_right"] == [wrong]
    assert len(seen["queue"]) == 4 and seen["queue"][0][0] == "sentinel2 r320 c0"
    # Four windows opened, three of them different: one corrections layer.
    assert len(set(seen["opened"])) == 3 and None not in seen["opened"]
    assert seen["corrections_layers"] == 1
    shown = {name.split(" - ")[-1] for name in seen["layers"]}
    assert shown == {"corrections", "image", "stored label", "model's classes", "flagged pixels"}
    # Cloud and shadow in the project's colours, as drawn on the map: the window's label
    # is 36 % cloud and 20 % shadow.
    assert seen["outline_colours"]["1"] == seen["label_colours"]["1.0"] == "#00e5ff"
    assert seen["outline_colours"]["2"] == seen["label_colours"]["2.0"] == "#7b1fa2"
    assert seen["label_drawn"]["cloud"] == pytest.approx(0.358, abs=0.03)
    assert seen["label_drawn"]["shadow"] == pytest.approx(0.198, abs=0.03)
    assert seen["corrections_drawn"]["cloud"] > 0.01 and seen["corrections_drawn"]["shadow"] > 0.005
    # Correct: stored in the store the report names (its own bands and classes).
    assert seen["correct_started"] is True
    assert seen["after_correct"] == [
        "sentinel2 r256 c64: corrected; stored as sentinel2-fix-r256-c64-v1"
    ]
    assert seen["stored"] == ["sentinel2-fix-r256-c64-v1"]
    assert not [line for line in seen["log"] if "Traceback" in line or "traceback:" in line]
