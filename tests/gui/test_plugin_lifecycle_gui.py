"""The plugin's life in the real QGIS: dialogs, unload and reload raise nothing."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.real_data, pytest.mark.slow]

LOADED = {
    "provider": True,
    "actions": ["cloudsegCheckEnvironment", "cloudsegSegmentLayer", "cloudsegShowPanel"],
}
GONE = {"provider": False, "actions": []}


def test_a_closed_dialog_then_unload_and_reload_raise_nothing_and_leave_nothing(run_qgis):
    seen = run_qgis("unload_after_dialog")
    assert seen["errors"] == []
    assert seen["dialog_opened"] is True
    assert seen["loaded_before"] == LOADED
    assert seen["first_unload_ok"] is True
    assert seen["after_first_unload"] == GONE
    assert seen["reload_ok"] is True and seen["after_reload"] == LOADED
    assert seen["second_unload_ok"] is True and seen["after_second_unload"] == GONE
    assert not [line for line in seen["log"] if "Error" in line or "Traceback" in line]
