"""Processing's dialogs in the real QGIS: cloudseg's results named after the input layer."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.real_data, pytest.mark.slow]


def test_named_files_load_as_layers_named_after_the_input_one_per_class(run_qgis):
    seen = run_qgis("processing_names", timeout=240)
    assert seen["errors"] == []
    layers = seen["explain_layers"]
    assert {name: band for name, (band, _) in layers.items()} == {
        "adwp - why cloud (hirescam)": 1,
        "adwp - why cloud shadow (hirescam)": 2,
    }
    assert {source.rsplit("/", 1)[-1] for _, source in layers.values()} == {
        "a-explain-hirescam.tif"
    }
    assert seen["segment_layers"] == ["adwp - cloud probability (%)", "adwp - clouds"]
    assert not [line for line in seen["log"] if "Traceback" in line or "traceback:" in line]
