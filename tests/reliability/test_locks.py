"""The lock beside an output (atomic.claim): the kernel's, so it goes with its process.

Real processes hold and race for it: a run killed with SIGKILL lets go of it at once,
and of several runs that find a dead run's lock file, one only takes it. Some of them
take it without :mod:`filelock` (QGIS's own Python before the plugin's first install
step: the standard library's ``flock``), which excludes filelock's and is excluded by it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cloudseg.backend.atomic import claim
from cloudseg.backend.errors import OutputConflictError

#: Holds the lock of the output argv[1] until it is killed.
HOLD = """
import sys, time
from pathlib import Path
from cloudseg.backend.atomic import claim
with claim([Path(sys.argv[1])]):
    print("held", flush=True)
    time.sleep(120)
"""
#: Waits for the file argv[2], then tries to lock argv[1] once; a winner holds the lock
#: until the file argv[3] appears.
RACE = """
import sys, time
from pathlib import Path
from cloudseg.backend.atomic import claim
from cloudseg.backend.errors import OutputConflictError
target, go, stop = map(Path, sys.argv[1:4])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
try:
    with claim([target]):
        print("took", flush=True)
        while not stop.exists():
            time.sleep(0.01)
except OutputConflictError as exc:
    print(f"refused: {exc}", flush=True)
"""


#: Run a script as in QGIS's Python before the first install step: no filelock.
WITHOUT_FILELOCK = "import sys; sys.modules['filelock'] = None\n"


def _start(script: str, *args: Path, stdlib: bool = False) -> subprocess.Popen[str]:
    code = (WITHOUT_FILELOCK if stdlib else "") + script
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE, text=True
    )


def _line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return process.stdout.readline().strip()


def _killed_holder(target: Path, stdlib: bool) -> int:
    """Lock ``target`` in a process, then kill it with SIGKILL; its process id."""
    holder = _start(HOLD, target, stdlib=stdlib)
    assert _line(holder) == "held"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    return holder.pid


@pytest.mark.parametrize("stdlib", [False, True], ids=["filelock", "standard library"])
def test_a_held_lock_is_released_when_its_holder_is_killed(tmp_path, stdlib):
    target = tmp_path / "manifest.json"
    holder = _start(HOLD, target, stdlib=stdlib)
    try:
        assert _line(holder) == "held"
        with pytest.raises(OutputConflictError) as refused, claim([target]):
            pass
        message = str(refused.value)
        assert message == (
            f"another cloudseg run (process {holder.pid} on {socket.gethostname()}) is writing "
            f"{target}; wait for it to finish"
        )
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        holder.kill()
        holder.wait()
    lock = tmp_path / ".manifest.json.cloudseg-lock"
    assert lock.exists()  # a killed run removes nothing, but the kernel let go of the lock
    with claim([target]):
        assert lock.read_text().split() == [str(os.getpid()), socket.gethostname()]
    assert not lock.exists()


@pytest.mark.parametrize("round_", range(4))
def test_of_runs_racing_for_a_dead_runs_lock_one_only_takes_it(tmp_path, round_):
    target = tmp_path / "manifest.json"
    dead = _killed_holder(target, stdlib=round_ % 2 == 1)
    assert (tmp_path / ".manifest.json.cloudseg-lock").read_text().split()[0] == str(dead)
    go, stop = tmp_path / "go", tmp_path / "stop"
    # Three runs at once: with filelock, or without it (rounds 2 and 3 mix the two).
    racers = [_start(RACE, target, go, stop, stdlib=round_ >= 2 and i == 1) for i in range(3)]
    try:
        assert [_line(r) for r in racers] == ["ready"] * len(racers)
        go.touch()
        outcomes = [_line(r) for r in racers]  # each has tried once; a winner still holds
        stop.touch()
        for racer in racers:
            racer.wait(timeout=60)
    finally:
        for racer in racers:
            racer.kill()
            racer.wait()
    winners = [r.pid for r, line in zip(racers, outcomes, strict=True) if line == "took"]
    assert len(winners) == 1, outcomes
    refused = [line for line in outcomes if line != "took"]
    assert all(line.startswith("refused: another cloudseg run (process ") for line in refused)
    assert all(f"(process {winners[0]} on " in line for line in refused), outcomes
    assert not (tmp_path / ".manifest.json.cloudseg-lock").exists()
