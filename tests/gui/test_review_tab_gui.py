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
    keys = [key for key, _ in seen["queue"]]  # the windows with a missed cloud, worst first
    assert keys == ["sentinel2 r192 c320", "sentinel2 r64 c0", "sentinel2 r64 c384"]
    # Three windows opened, two of them different: one corrections layer.
    assert seen["opened"] == ["sentinel2 r192 c320", "sentinel2 r64 c384", "sentinel2 r192 c320"]
    assert seen["corrections_layers"] == 1
    shown = {name.split(" - ")[-1] for name in seen["layers"]}
    assert shown == {"corrections", "image", "stored label", "model's classes", "flagged pixels"}
    # Cloud and shadow in the project's colours, as drawn on the map: the window's label
    # is 27 % cloud and 21 % shadow.
    assert seen["outline_colours"]["1"] == seen["label_colours"]["1.0"] == "#00e5ff"
    assert seen["outline_colours"]["2"] == seen["label_colours"]["2.0"] == "#7b1fa2"
    assert seen["label_drawn"]["cloud"] == pytest.approx(1104 / 4096, abs=0.03)
    assert seen["label_drawn"]["shadow"] == pytest.approx(877 / 4096, abs=0.03)
    assert (
        seen["corrections_drawn"]["cloud"] > 0.005 and seen["corrections_drawn"]["shadow"] > 0.005
    )
    # Correct: stored in the store the report names (its own bands and classes).
    assert seen["correct_started"] is True
    fixed = "sentinel2-fix-r192-c320-v1"
    assert seen["after_correct"] == [f"sentinel2 r192 c320: corrected; stored as {fixed}"]
    assert seen["stored"] == [fixed]
    assert not [line for line in seen["log"] if "Traceback" in line or "traceback:" in line]
