"""``dev/benchmark_run_cost.py``: every run's cost on real data, summarized, and a plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "dev" / "benchmark_run_cost.py"


@pytest.mark.slow
@pytest.mark.real_data
def test_the_benchmark_writes_its_json_and_plot(real_data, tmp_path, venv_env):
    out, plot = tmp_path / "cost.json", tmp_path / "cost.png"
    run = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--data",
            str(real_data),
            "--repeats",
            "2",
            "--out",
            str(out),
            "--plot",
            str(plot),
            "-q",
        ],
        capture_output=True,
        text=True,
        env=venv_env,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(report["summary"]) == {"segment", "segment-30m", "train"}
    assert report["machine"]["cpus"] and report["versions"]["cloudseg"]
    for task, runs in report["runs"].items():
        assert len(runs) == 2
        rates = [r["seconds_per_km2"] for r in runs]
        spread = report["summary"][task]["seconds_per_km2"]
        assert spread["min"] == pytest.approx(min(rates), abs=1e-4)
        assert spread["max"] == pytest.approx(max(rates), abs=1e-4)
        assert spread["min"] <= spread["median"] <= spread["max"]
        for r in runs:  # energy from a counter, or said to be missing, never made up
            assert (r["joules"] is None) == (r["energy_method"] == "not measured")
    assert report["summary"]["segment"]["km2"] == pytest.approx(26.2144)
    assert "s/km²" in run.stdout
    bad = subprocess.run(
        [sys.executable, str(SCRIPT), "--data", str(tmp_path), "--out", str(tmp_path / "x.json")],
        capture_output=True,
        text=True,
        env=venv_env,
    )
    assert bad.returncode == 1 and "not the shared real-data folder" in bad.stderr
    assert not (tmp_path / "x.json").exists()
