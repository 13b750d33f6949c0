"""Inputs and earlier outputs are never lost: the output contract, through the real CLI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import rasterio

from .conftest import OUTPUTS, error_line, snapshot

pytestmark = pytest.mark.real_data


# -- 1. an output that is an input ----------------------------------------------------------
def test_the_input_as_output_is_refused(workspace, unchanged):
    line = error_line(workspace.cli("segment", "scene.tif", "scene.tif", "--overwrite", "-q"))
    assert "is an input of this run" in line
    unchanged()


def test_a_band_file_of_the_input_folder_as_output_is_refused(workspace, unchanged):
    line = error_line(workspace.cli("segment", "chip", "chip/B08.tif", "--overwrite", "-q"))
    assert "is an input of this run" in line
    unchanged()


def test_a_new_band_named_file_in_the_input_folder_is_refused(workspace, unchanged):
    # chip/B11.tif does not exist yet, but would join the input's bands next time.
    line = error_line(workspace.cli("segment", "chip", "chip/B11.tif", "-q"))
    assert "would become a band of the input folder" in line
    unchanged()


def test_a_hard_link_to_the_input_is_refused(workspace):
    os.link(workspace.scene, workspace.root / "link.tif")
    before = workspace.snapshot()
    line = error_line(workspace.cli("segment", "scene.tif", "link.tif", "--overwrite", "-q"))
    assert "is an input of this run" in line
    assert workspace.snapshot() == before


# -- 3. outputs that collide -----------------------------------------------------------------
@pytest.mark.slow
def test_the_mask_and_the_probabilities_on_one_file_are_refused(workspace, unchanged):
    args = ["segment", "scene.tif", "out/mask.tif", "--probabilities", "out/mask.tif"]
    line = error_line(workspace.cli(*args, "--overwrite", "-q"))
    assert "--probabilities and OUTPUT are the same file" in line
    unchanged()


def test_the_statistics_on_the_mask_through_a_link_are_refused(workspace):
    (workspace.out / "mask.json").symlink_to(workspace.out / "mask.tif")
    before = workspace.snapshot()
    args = ["segment", "scene.tif", "out/mask.tif", "--stats", "out/mask.json"]
    line = error_line(workspace.cli(*args, "--overwrite", "-q"))
    assert "--stats and OUTPUT are the same file" in line
    assert workspace.snapshot() == before


@pytest.mark.parametrize(
    ("output", "words"),
    [
        ("out", "is a folder"),
        ("out/mask.png", "must end in .tif"),
        ("/proc/mask.tif", "cannot write"),
    ],
)
def test_an_unusable_output_is_refused_before_any_work(workspace, unchanged, output, words):
    # The bad model file would fail later: the output is checked before the model loads.
    (workspace.root / "bad.pt").write_bytes(b"not a checkpoint")
    before = workspace.snapshot()
    line = error_line(workspace.cli("segment", "scene.tif", output, "--model", "bad.pt", "-q"))
    assert words in line
    assert workspace.snapshot() == before


def test_an_existing_output_needs_overwrite(workspace, unchanged):
    line = error_line(workspace.cli(*workspace.segment_args()))
    assert "exists; pass --overwrite" in line
    unchanged()


# -- 4. a failure or interrupt at any moment ---------------------------------------------------
def _one_new_set(out, old):
    """Whether ``out`` holds the complete outputs of one new run (none of the old ones)."""
    now = snapshot(out)
    if any(now[name] == old[name] for name in OUTPUTS.values()):
        return False
    with rasterio.open(out / "mask.tif") as mask, rasterio.open(out / "probs.tif") as probs:
        return mask.tags()["CLOUDSEG_CREATED"] == probs.tags()["CLOUDSEG_CREATED"]


def _claimed(process: subprocess.Popen, out) -> float:
    """When the run took its locks: the first hidden file in ``out`` (or the run's end)."""
    while process.poll() is None and not any(p.name.startswith(".") for p in out.iterdir()):
        time.sleep(0.002)
    return time.monotonic()


@pytest.mark.slow
def test_an_interrupt_at_any_moment_leaves_all_old_or_all_new_outputs(workspace):
    """SIGTERM or SIGINT anywhere in a run: the earlier set stays whole, or the new one is."""
    old_bytes = {name: (workspace.out / name).read_bytes() for name in OUTPUTS.values()}
    old = snapshot(workspace.out)
    args = ["cloudseg", *workspace.segment_args(), "--overwrite"]
    # Timed from the moment the run takes its locks (its inputs checked, the model next),
    # not from the process start, whose imports take a time of their own.
    # The fastest of three runs: one slowed by other work on the machine would put the
    # later signals past the end of the runs they are meant to interrupt.
    durations = []
    for _ in range(3):
        process = subprocess.Popen(
            args, cwd=workspace.root, env=workspace.env, stderr=subprocess.PIPE
        )
        began = _claimed(process, workspace.out)
        process.communicate(timeout=120)
        durations.append(time.monotonic() - began)  # the run itself
        assert process.returncode == 0
        assert _one_new_set(workspace.out, old)
    duration = min(durations)
    untouched, outcomes = 0, []
    # Early fractions too: the run is about a second long, and on a busy machine the later
    # signals can land after it published, which is fine but checks less.
    fractions = (0.05, 0.1, 0.2, 0.3, 0.4, 0.55, 0.7, 0.8, 0.88, 0.94, 0.98)
    for i, fraction in enumerate(fractions):
        for name, data in old_bytes.items():  # start each time from the earlier outputs
            (workspace.out / name).write_bytes(data)
        assert snapshot(workspace.out) == old
        process = subprocess.Popen(
            args, cwd=workspace.root, env=workspace.env, stderr=subprocess.PIPE, text=True
        )
        _claimed(process, workspace.out)
        time.sleep(duration * fraction)
        process.send_signal(signal.SIGTERM if i % 2 == 0 else signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
        last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        outcomes.append(f"{fraction:.0%}: {last or 'finished'}")
        if process.returncode > 0:
            assert process.returncode in (128 + signal.SIGTERM, 128 + signal.SIGINT), stderr
            assert last.startswith("cloudseg: interrupted (SIG"), stderr
        if "earlier outputs are untouched" in last:
            untouched += 1
            assert snapshot(workspace.out) == old, f"outputs changed at {fraction:.0%} of a run"
        else:  # finished, or stopped after publishing, or killed before it began
            now = snapshot(workspace.out)
            assert now == old or _one_new_set(workspace.out, old), f"a mixed set at {fraction:.0%}"
        assert not [p.name for p in workspace.out.iterdir() if p.name.startswith(".")]
    assert untouched >= 3, outcomes  # the signals did land mid-run


# -- 8. two runs on the same outputs, and what dead runs left ---------------------------------
#: A process that holds the lock of the output argv[1] (atomic.claim) until it is killed.
HOLD = (
    "import sys, time; from pathlib import Path; from cloudseg.backend.atomic import claim\n"
    "with claim([Path(sys.argv[1])]):\n    print('held', flush=True); time.sleep(60)\n"
)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["segment", "ingest", "train"])
def test_a_second_run_on_the_same_outputs_is_refused(workspace, real_data, command):
    target, args = {
        "segment": (workspace.out / "mask.tif", workspace.segment_args()),
        "ingest": (workspace.root / "store", ["ingest", real_data / "cloudsen12_figures", "store"]),
        "train": (workspace.root / "run", ["train", "--config", "train.yaml"]),
    }[command]
    (workspace.root / "store").mkdir()
    (workspace.root / "train.yaml").write_text("data:\n  store: store\noutput: run\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(target)], stdout=subprocess.PIPE, text=True
    )
    try:  # a live run holds the outputs
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert (target.parent / f".{target.name}.cloudseg-lock").exists()
        before = workspace.snapshot()
        line = error_line(workspace.cli(*args, "--overwrite" if command != "ingest" else "-q"))
        assert f"another cloudseg run (process {holder.pid} on {socket.gethostname()})" in line
        assert f"is writing {target}" in line
        assert workspace.snapshot() == before
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_a_killed_runs_lock_and_temporaries_are_cleaned_by_the_next_run(workspace):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = workspace.out
        (out / ".mask.tif.cloudseg-lock").write_text(f"{dead.pid} {socket.gethostname()}\n")
        stale = out / f".mask.tif.{dead.pid}-0123abcd.part"
        stale.write_bytes(b"half a mask")
        (out / f".probs.tif.{dead.pid}-0123abcd.cog").write_bytes(b"half a COG")
        other = out / f".mask.tif.{live.pid}-89abcdef.part"  # a live run's: kept
        other.write_bytes(b"in progress")
        result = workspace.cli(*workspace.segment_args(), "--overwrite")
        assert result.returncode == 0, result.stderr
        hidden = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
        assert hidden == [other.name]
    finally:
        live.kill()
        live.wait()
