"""LabelRound: the steps of a round in order, each through its owner."""

from types import SimpleNamespace

import pytest

from cloudseg.backend.errors import CancelledError, InputError
from cloudseg.training.label_round import LabelRound


def test_run_fine_tunes_then_reruns_the_current_model(tmp_path, monkeypatch):
    calls, seen = [], []
    result = SimpleNamespace(current="coast-r1", round=SimpleNamespace(round=1))

    def fine_tune(self, progress, cancelled, **arguments):
        calls.append(("fine_tune", arguments))
        progress(100, "judged")
        return result

    def rerun(self, model, progress, cancelled, options):
        calls.append(("rerun", model))
        progress(100, "segmented")
        return "run"

    monkeypatch.setattr(LabelRound, "fine_tune", fine_tune)
    monkeypatch.setattr(LabelRound, "rerun", rerun)
    labeling = LabelRound(tmp_path / "coast.gpkg", "scene.tif")
    done = labeling.run(progress=lambda p, m: seen.append(p), steps=3)
    assert done == (result, "run")
    assert calls == [("fine_tune", {"steps": 3}), ("rerun", "coast-r1")]
    assert seen == [80, 100]  # fine-tuning to 80 %, the re-run after
    with pytest.raises(CancelledError, match="round 1; it is recorded"):
        labeling.run(cancelled=lambda: True)


def test_a_step_that_needs_the_scene_says_so(tmp_path):
    labeling = LabelRound(tmp_path / "coast.gpkg", None)
    for step in (labeling.store, labeling.fine_tune, labeling.rerun, labeling.propose):
        with pytest.raises(InputError, match="give the scene"):
            step()
