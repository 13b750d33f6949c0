"""Label issues: a chip whose label contradicts the image comes first; labels stay."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest


@pytest.mark.real_data
def test_the_contradicted_chip_ranks_first_and_the_labels_stay(planted_store, tmp_path, venv_env):
    import rasterio

    from cloudseg.backend.store.dataset import open_dataset

    store, cloudiest, stored = planted_store
    run = subprocess.run(
        [
            "cloudseg",
            "labels",
            "check",
            str(store),
            "--model",
            "ukis-csmask-6b-l1c",
            "--out",
            str(tmp_path / "out"),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=venv_env,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    first = result["scenes"][0]
    assert first["scene"] == cloudiest and first["rank"] == 1
    assert first["flagged_share"] > 0.2  # its cloud is flagged as "labeled clear"
    assert [e["score"] for e in result["scenes"]] == sorted(e["score"] for e in result["scenes"])
    assert next(iter(result["confusions"])) == "clear -> cloud"
    saved = json.loads((tmp_path / "out" / "label_issues.json").read_text())
    assert saved["scenes"] == result["scenes"]
    dataset = open_dataset(store)
    for name, mask in stored.items():
        np.testing.assert_array_equal(dataset.read(name)[1], mask)  # never changed
        quality = dataset.item(name).properties["cloudseg:label_quality"]
        entry = next(e for e in result["scenes"] if e["scene"] == name)
        assert quality["score"] == entry["score"] and quality["model"] == "ukis-csmask-6b-l1c"
    with rasterio.open(first["issue_raster"]) as issues:
        item = dataset.item(cloudiest).properties
        assert tuple(issues.transform)[:6] == tuple(item["proj:transform"][:6])
        flagged = issues.read(1)
    assert set(np.unique(flagged)) <= {0, 1, 255}
    assert (flagged == 1).mean() == pytest.approx(first["flagged_share"], abs=1e-3)
