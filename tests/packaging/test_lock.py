"""The lock: a fresh install gets exactly the tested versions, and every text says the same.

``make install`` builds the venv from ``resources/locks/all.txt``; the QGIS plugin's
installer reads ``segment.txt`` and ``training.txt``. A new upstream release changes a
fresh install only through ``make lock`` and a commit of these files.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement as Parsed

from cloudseg.backend.dependencies import GROUPS, LOCK_CONSTRAINTS, PIP, PLUGIN_STEPS, SEGMENT
from cloudseg.backend.locks import ALL, canonical, file_sizes, lock_file, read_lock
from cloudseg.backend.packaging_text import (
    README_END,
    README_START,
    about_text,
    metadata_about,
    readme_table,
)

ROOT = Path(__file__).resolve().parents[2]


def applies(pin) -> bool:
    return not pin.marker or Marker(pin.marker).evaluate()


def pinned(name: str) -> dict[str, str]:
    """The lock's versions of everything, by canonical name (for this platform)."""
    return {p.name: p.version for p in read_lock(lock_file(name)) if applies(p)}


def test_every_declared_package_is_locked_within_its_range():
    locked = pinned(ALL)
    for group in GROUPS:
        for req in group.requirements:
            name = canonical(req.distribution)
            if not req.locked:
                assert name not in locked, f"{name} must come from the system, not the lock"
                continue
            assert name in locked, f"{name} is declared but not locked: run make lock"
            assert Parsed(req.pip).specifier.contains(locked[name], prereleases=True), name
    assert canonical(PIP.distribution) in locked
    for constraint in LOCK_CONSTRAINTS:
        parsed = Parsed(constraint)
        assert parsed.specifier.contains(locked[canonical(parsed.name)]), constraint


def test_every_pin_is_exact_and_hashed():
    for name in (ALL, *(s.name for s in PLUGIN_STEPS)):
        pins = read_lock(lock_file(name))
        assert pins, name
        assert all(p.hashes and p.version for p in pins), name


def test_plugin_steps_hold_the_same_versions_as_the_venv():
    everything = {(p.name, p.version, p.marker) for p in read_lock(lock_file(ALL))}
    for step in PLUGIN_STEPS:
        for pin in read_lock(lock_file(step.name)):
            assert (pin.name, pin.version) in {(n, v) for n, v, _ in everything}, pin
    segment = pinned(SEGMENT.name)
    assert "torch" not in segment, "segmentation must install without torch"
    assert "torch" in pinned("training")


def test_the_venv_holds_exactly_the_lock():
    """What make install put in the venv is the lock, version for version."""
    if Path(sys.prefix) == Path(sys.base_prefix):
        pytest.skip("not in the project's venv")
    different = {}
    for name, version in pinned(ALL).items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            different[name] = (version, None)
            continue
        if installed.split("+")[0] != version.split("+")[0]:
            different[name] = (version, installed)
    assert different == {}, "the venv differs from the lock: rm -rf .venv && make install"


def test_every_wheel_this_platform_installs_has_a_known_size():
    sizes = file_sizes()
    for step in PLUGIN_STEPS:
        for pin in read_lock(lock_file(step.name)):
            files = [f for f in sizes if f.split("-")[1:2] == [pin.version]
                     and canonical(f.split("-")[0]) == pin.name]  # fmt: skip
            assert files, f"no size for {pin.name}=={pin.version}: run make lock"


@pytest.mark.slow
def test_metadata_about_and_readme_table_are_generated_from_the_list():
    assert metadata_about(ROOT) == about_text(), "run make lock (or scripts/lock.py --texts-only)"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme[readme.index(README_START) + len(README_START) : readme.index(README_END)]
    assert block.strip() == readme_table()
    for step in PLUGIN_STEPS:
        assert step.title in readme
    assert platform.system()  # the table is read on any platform
