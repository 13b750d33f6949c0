"""A disk that fills up under a write: one line, earlier outputs untouched, nothing stray.

The faults are real ones, raised by the kernel under the real command:

- a full disk (ENOSPC): the output folder is a small tmpfs, mounted in a user and mount
  namespace of its own (``unshare -rm``, no root needed), filled to leave a chosen
  number of bytes free. The earlier outputs are copied onto it first; everything on it
  is hashed before and after the run, inside the namespace (the mount ends with it);
- the file size limit (EFBIG): ``RLIMIT_FSIZE`` set for the command, with SIGXFSZ
  ignored, so that a write past the limit fails as a full disk's does.

``/dev/full`` fails every write, but cloudseg writes a temporary file beside each output
and renames it, so no output path can be /dev/full; a loop device needs root.
"""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import OUTPUTS, Workspace, error_line

pytestmark = pytest.mark.real_data

#: The line's words for a full disk and for the file size limit.
FULL, TOO_LARGE = "no space left on device", "file too large for the file size limit"

#: Run inside the namespace: mount a tmpfs on the output folder, put the earlier outputs
#: back on it, leave FREE bytes, hash, run the command, hash again.
_SCRIPT = r"""
set -e
mount -t tmpfs -o size=$SIZE tmpfs "$FOLDER"
cp -a "$EARLIER/." "$FOLDER/"
"$PYTHON" "$HELPER" fill "$FOLDER" "$FREE"
"$PYTHON" "$HELPER" hash "$FOLDER" > "$RESULTS/before.json"
set +e
"$@" > "$RESULTS/stdout" 2> "$RESULTS/stderr"
echo $? > "$RESULTS/rc"
"$PYTHON" "$HELPER" hash "$FOLDER" > "$RESULTS/after.json"
"""

_HELPER = r"""
import hashlib, json, os, sys
from pathlib import Path
action, folder = sys.argv[1], Path(sys.argv[2])
if action == "fill":
    stats = os.statvfs(folder)
    spare = stats.f_bavail * stats.f_frsize - int(sys.argv[3])
    with open(folder / ".filler", "wb") as handle:
        handle.write(b"\0" * max(spare, 0))
else:
    print(json.dumps({
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }))
"""


def _namespaces_work(tmp: Path) -> bool:
    """Whether this machine lets a user mount a tmpfs in a namespace of its own."""
    if shutil.which("unshare") is None:
        return False
    (tmp / "probe").mkdir(exist_ok=True)
    probe = subprocess.run(
        ["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tmp / "probe")],
        capture_output=True,
    )
    return probe.returncode == 0


@pytest.fixture(scope="session")
def namespaces(tmp_path_factory) -> None:
    if not _namespaces_work(tmp_path_factory.mktemp("probe")):
        pytest.skip("unshare -rm with a tmpfs mount is not allowed here")


class Run:
    """A command run on a full disk: the process, and the folder's hashes around it."""

    def __init__(self, results: Path, command: list[str]) -> None:
        self.result = subprocess.CompletedProcess(
            command,
            int((results / "rc").read_text()),
            (results / "stdout").read_text(),
            (results / "stderr").read_text(),
        )
        self.before = json.loads((results / "before.json").read_text())
        self.after = json.loads((results / "after.json").read_text())


def on_full_disk(workspace: Workspace, free: int, *args: str, folder: str = "out") -> Run:
    """Run ``cloudseg ARGS`` with ``folder`` on a tmpfs that has ``free`` bytes left."""
    base = workspace.root.parent / f"full-{free}"
    earlier, results = base / "earlier", base / "results"
    results.mkdir(parents=True)
    shutil.copytree(workspace.root / folder, earlier)
    (base / "helper.py").write_text(_HELPER)
    used = sum(p.stat().st_size for p in earlier.rglob("*") if p.is_file())
    env = workspace.env | {
        "SIZE": str(used + free + (8 << 20)),  # room for the filler's own rounding
        "FOLDER": str(workspace.root / folder),
        "EARLIER": str(earlier),
        "FREE": str(free),
        "RESULTS": str(results),
        "PYTHON": sys.executable,
        "HELPER": str(base / "helper.py"),
    }
    command = ["cloudseg", *args]
    subprocess.run(
        ["unshare", "-rm", "bash", "-c", _SCRIPT, "fault", *command],
        cwd=workspace.root,
        env=env,
        check=True,
        timeout=300,
    )
    return Run(results, command)


def check_refused(run: Run, words: str = FULL) -> str:
    """The run failed with one line about the disk, and the folder is as it was."""
    line = error_line(run.result)
    assert words in line and "earlier outputs are untouched" in line, line
    assert run.after == run.before  # earlier outputs byte for byte, no temporaries left
    return line


# -- segment: a full disk at every stage of the run ------------------------------------------
@pytest.mark.slow
def test_segment_on_a_disk_that_fills_up_at_any_stage_keeps_the_earlier_outputs(
    workspace, namespaces
):
    # Bisect the free space between "fails at once" and "succeeds": every failing probe,
    # the last one included (the final write of the run), gets the one line and leaves
    # the earlier outputs as they were.
    args = [*workspace.segment_args(), "--overwrite"]
    low, high = 0, 2 << 20
    done = on_full_disk(workspace, high, *args)
    assert done.result.returncode == 0, done.result.stderr
    assert {k for k in done.after if done.after[k] != done.before.get(k)} == {*OUTPUTS.values()}
    lines = []
    while high - low > 8 << 10:  # the last failing probe: within 8 KiB of enough
        middle = (low + high) // 2
        run = on_full_disk(workspace, middle, *args)
        if run.result.returncode == 0:
            high = middle
        else:
            lines.append(check_refused(run))
            low = middle
    assert len(lines) >= 2
    assert all(f"in {workspace.out}" in line for line in lines)


@pytest.mark.slow
def test_explain_on_a_full_disk_gets_one_line(workspace, namespaces):
    run = on_full_disk(workspace, 16 << 10, "explain", "scene.tif", "out/cam.tif", "-q")
    check_refused(run)


@pytest.mark.slow
def test_report_on_a_full_disk_gets_one_line(workspace, namespaces, store_for_report):
    run = on_full_disk(workspace, 64 << 10, "report", str(store_for_report), "--out", "out/d.html")
    check_refused(run)


@pytest.mark.slow
def test_evaluate_on_a_full_disk_gets_one_line(workspace, namespaces):
    (workspace.out / "report").mkdir()
    args = [
        *("evaluate", "--model", "ukis-csmask-4b-l2a", "--images", "scene.tif"),
        *("--labels", "out/mask.tif", "--out", "out/report", "-q"),
    ]
    check_refused(on_full_disk(workspace, 8 << 10, *args))


@pytest.fixture
def torch_model(workspace) -> Path:
    """A cloudseg torch model (random weights, real card) in the workspace, to export."""
    import torch

    from cloudseg.backend.models.networks import create_network
    from cloudseg.backend.models.registry import load_model

    card = load_model("ukis-csmask-4b-l2a").card
    card = card.__class__.from_dict(
        card.to_dict()
        | {
            "name": "tiny",
            "format": "torch",
            "architecture": {"name": "Unet", "encoder": "resnet18"},
        }
    )
    network = create_network("Unet", len(card.bands), len(card.classes), "resnet18")
    path = workspace.root / "tiny.pt"
    torch.save({"card": card.to_dict(), "state_dict": network.state_dict()}, path)
    return path


@pytest.mark.slow
def test_export_on_a_full_disk_gets_one_line(workspace, namespaces, torch_model):
    check_refused(on_full_disk(workspace, 1 << 20, "export", "tiny.pt", "out/tiny.onnx"))


@pytest.fixture(scope="session")
def store_for_report(real_data, tmp_path_factory) -> Path:
    """The labeled CloudSEN12 patches ingested into a local store."""
    from cloudseg.backend.store.ingest import ingest

    path = tmp_path_factory.mktemp("faults-store") / "store"
    ingest(real_data / "cloudsen12_figures", path, env_file=None, report=False)
    return path


# -- the file size limit (ulimit -f): EFBIG at the write -------------------------------------
def _limited(size: int):
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return limit


@pytest.mark.slow
@pytest.mark.parametrize("size", [4 << 10, 24 << 10])
def test_segment_past_the_file_size_limit_gets_one_line(workspace, unchanged, size):
    args = ["cloudseg", *workspace.segment_args(), "--overwrite"]
    result = subprocess.run(
        args,
        capture_output=True,
        text=True,
        env=workspace.env,
        cwd=workspace.root,
        preexec_fn=_limited(size),
        timeout=180,
    )
    line = error_line(result)
    assert TOO_LARGE in line and f"in {workspace.out}" in line
    assert "earlier outputs are untouched" in line
    unchanged()


# -- report --out: the output contract --------------------------------------------------------
@pytest.mark.slow
def test_report_out_replaces_a_file_only_when_asked(workspace, store_for_report):
    page = workspace.root / "page.html"
    page.write_text("a page the user keeps\n")
    before = workspace.snapshot()
    line = error_line(workspace.cli("report", store_for_report, "--out", "page.html"))
    assert "page.html exists; pass --overwrite to replace it" in line
    assert workspace.snapshot() == before
    done = workspace.cli("report", store_for_report, "--out", "page.html", "--overwrite")
    assert done.returncode == 0, done.stderr
    assert page.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert not [p for p in workspace.root.iterdir() if p.name.startswith(".page.html")]


@pytest.mark.parametrize(
    ("out", "words"),
    [("page.txt", "must end in .html or .htm"), ("nowhere/page.html", "does not exist")],
)
def test_report_out_that_cannot_be_written_is_refused_first(
    workspace, unchanged, store_for_report, out, words
):
    line = error_line(workspace.cli("report", store_for_report, "--out", out))
    assert words in line
    unchanged()
