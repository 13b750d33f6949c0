"""Active learning, the backend: doubt, proposals, and the label project's layer."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from osgeo import ogr

from cloudseg.backend.active.propose import Box, propose, rank_boxes
from cloudseg.backend.errors import InputError
from cloudseg.backend.inference.segment import SegmentOptions, segment


def test_boxes_are_ranked_by_doubt_never_overlap_and_avoid_labeled_ones():
    doubt = np.zeros((256, 256), np.float32)
    doubt[10:60, 10:60] = 90  # the most doubtful place
    doubt[150:200, 150:200] = 60
    doubt[0:64, 192:256] = np.nan  # no data: never proposed
    proposals = rank_boxes(doubt, 64, 6)
    assert [p.rank for p in proposals] == list(range(1, len(proposals) + 1))
    scores = [p.score for p in proposals]
    assert scores == sorted(scores, reverse=True)
    first = proposals[0].box
    assert first.overlaps(Box(10, 10, 50)) and first.overlaps(Box(40, 40, 1))
    assert proposals[1].box.overlaps(Box(150, 150, 50))
    for i, a in enumerate(proposals):
        assert not any(a.box.overlaps(b.box) for b in proposals[i + 1 :])
    nodata = np.isnan(doubt)
    for p in proposals:
        b = p.box
        assert nodata[b.row : b.row + 64, b.col : b.col + 64].mean() <= 0.5
    # A box labeled there already is never proposed again.
    again = rank_boxes(doubt, 64, 6, avoid=[first])
    assert not any(p.box.overlaps(first) for p in again)
    with pytest.raises(InputError, match="smaller than one"):
        rank_boxes(doubt[:50, :50], 64, 3)


@pytest.mark.real_data
def test_proposals_of_a_real_chip_go_into_the_label_project(multiband, tmp_path, venv_env):
    doubt = tmp_path / "doubt.tif"
    segment(
        multiband, tmp_path / "mask.tif", SegmentOptions(product_level="L2A", uncertainty=doubt)
    )
    project = tmp_path / "labels.gpkg"
    first = propose(doubt, project, box=64, count=5, scene="adwp")
    assert len(first) == 5
    rows = [(f["rank"], f["status"], f["scene"], f["model"]) for f in _features(project)]
    assert rows == [(i, "todo", "adwp", "ukis-csmask-4b-l2a") for i in range(1, 6)]
    # The analyst labels the first box; the next round keeps it and proposes elsewhere.
    dataset = ogr.Open(str(project), 1)
    layer = dataset.GetLayerByName("proposals")
    feature = next(f for f in layer if f["rank"] == 1)
    feature.SetField("status", "labeled")
    layer.SetFeature(feature)
    dataset = None
    second = propose(doubt, project, box=64, count=5, scene="adwp")
    assert not any(p.box.overlaps(first[0].box) for p in second)
    statuses = sorted(f["status"] for f in _features(project))
    assert statuses == ["labeled"] + ["todo"] * 5  # the old todo ones were replaced
    # The command line, and its one-line refusal of a raster that is not an uncertainty.
    command = ["cloudseg", "propose", str(doubt), str(tmp_path / "b.gpkg")]
    run = subprocess.run(
        [*command, "--box", "64", "--count", "3", "--json"],
        capture_output=True,
        text=True,
        env=venv_env,
    )
    assert run.returncode == 0, run.stderr
    assert [p["rank"] for p in json.loads(run.stdout)] == [1, 2, 3]
    bad = subprocess.run(
        ["cloudseg", "propose", str(tmp_path / "mask.tif"), str(tmp_path / "c.gpkg")],
        capture_output=True,
        text=True,
        env=venv_env,
    )
    assert bad.returncode == 1 and "is not an uncertainty raster" in bad.stderr
    assert not (tmp_path / "c.gpkg").exists()


def _features(project):
    """The proposals layer's features (the dataset kept open while they are read)."""
    dataset = ogr.Open(str(project))
    return [
        {name: f.GetField(name) for name in ("rank", "status", "scene", "model")}
        for f in dataset.GetLayerByName("proposals")
    ]
