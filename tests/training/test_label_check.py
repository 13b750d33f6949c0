"""Label issues: a chip whose label contradicts the image comes first; labels stay."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest


@pytest.fixture(scope="module")
def planted_store(real_data, tmp_path_factory):
    """Four 128 px chips of the labeled Sentinel-2 scene; the cloudiest one labeled clear."""
    import rasterio
    from rasterio.transform import from_origin

    from cloudseg.backend.store.ingest import ingest
    from cloudseg.training.reference import SIX_BANDS, labeled_scenes

    work = tmp_path_factory.mktemp("labels")
    scene = next(s for s in labeled_scenes(real_data, work / "s") if s.name == "ukis-s2-l1c")
    image, truth = np.moveaxis(scene.reflectance, -1, 0), scene.reference()
    root = work / "source"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    classes = ["clear", "cloud", "cloud shadow"]
    (root / "data.json").write_text(json.dumps({"bands": list(SIX_BANDS), "classes": classes}))
    chips = {f"chip-{r}-{c}": (r, c) for r in (0, 128) for c in (256, 384)}
    cloudiest = max(chips, key=lambda n: (truth[_window(chips[n])] == 1).mean())
    stored = {}
    for name, (r, c) in chips.items():
        mask = truth[_window((r, c))].copy()
        if name == cloudiest:
            mask[:] = 0  # "no cloud" over a cloud bank
        stored[name] = mask
        profile = {"driver": "GTiff", "width": 128, "height": 128, "crs": "EPSG:32632"}
        profile["transform"] = from_origin(500000 + c * 30, 5300000 - r * 30, 30, 30)
        dn = np.rint(image[(slice(None), *_window((r, c)))] * 1e4).astype(np.uint16)
        image_path, mask_path = root / "images" / f"{name}.tif", root / "masks" / f"{name}.tif"
        with rasterio.open(image_path, "w", count=6, dtype="uint16", **profile) as ds:
            ds.write(dn)
            ds.descriptions = tuple(SIX_BANDS)
        with rasterio.open(mask_path, "w", count=1, dtype="uint8", **profile) as ds:
            ds.write(mask[None])
    ingest(root, work / "store", layout="pairs", env_file=None, report=False)
    return work / "store", cloudiest, stored


def _window(corner):
    r, c = corner
    return slice(r, r + 128), slice(c, c + 128)


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
