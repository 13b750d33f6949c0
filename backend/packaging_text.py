"""The texts that describe cloudseg's packages to users, generated from the one list.

``metadata.txt``'s ``about`` (what QGIS's Plugin Manager shows before an install) and the
README's table of install steps are written by ``make lock`` from
:mod:`.dependencies`, the locks and their file sizes; ``tests/packaging/test_lock.py``
fails when either is stale.

Download sizes per platform are computed the way pip picks a file (the best wheel for
the platform's tags, markers evaluated), with ``packaging``: this module runs in the
project's venv, never in QGIS.
"""

from __future__ import annotations

import re
from configparser import ConfigParser
from dataclasses import dataclass
from pathlib import Path

from .dependencies import PLUGIN_STEPS, SEGMENT, TRAINING, Group
from .locks import file_sizes, group_pins

README_START = "<!-- packages: written by make lock from backend/dependencies.py -->"
README_END = "<!-- /packages -->"


@dataclass(frozen=True)
class Platform:
    """A platform QGIS runs on, as pip sees it."""

    name: str
    python: tuple[int, int]
    platform_tags: tuple[str, ...]
    markers: dict[str, str]


def _manylinux(machine: str) -> tuple[str, ...]:
    newer = [f"manylinux_2_{minor}_{machine}" for minor in range(40, 4, -1)]
    return (*newer, f"manylinux2014_{machine}", f"manylinux2010_{machine}",
            f"manylinux1_{machine}", f"linux_{machine}")  # fmt: skip


PLATFORMS = (
    Platform(
        "Linux x86-64 (Python 3.11, as Debian 12's QGIS)",
        (3, 11),
        _manylinux("x86_64"),
        {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"},
    ),
    Platform(
        "Windows x86-64 (Python 3.12, as QGIS 3.40's installer)",
        (3, 12),
        ("win_amd64",),
        {"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64"},
    ),
    Platform(
        "macOS arm64 (Python 3.12)",
        (3, 12),
        tuple(
            f"macosx_{major}_0_{arch}"
            for major in range(15, 10, -1)
            for arch in ("arm64", "universal2")
        ),
        {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64"},
    ),
)


def download_bytes(step: Group, platform: Platform) -> int:
    """What a plugin step downloads on ``platform`` (its packages QGIS lacks), in bytes."""
    from packaging import tags
    from packaging.markers import Marker

    version = ".".join(map(str, platform.python))
    environment = {
        **platform.markers,
        "python_version": version,
        "python_full_version": f"{version}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "os_name": "nt" if platform.markers["sys_platform"] == "win32" else "posix",
    }
    ranked = [
        *tags.cpython_tags(platform.python, platforms=platform.platform_tags),
        *tags.compatible_tags(platform.python, platforms=platform.platform_tags),
    ]
    rank = {str(tag): index for index, tag in enumerate(ranked)}
    sizes = file_sizes()
    earlier = {p.name for s in PLUGIN_STEPS[: PLUGIN_STEPS.index(step)] for p in group_pins(s)}
    qgis = {r.distribution for r in SEGMENT.requirements if r.qgis}
    total = 0
    for pin in group_pins(step):
        if pin.name in earlier or pin.name in qgis or pin.name == "pip":
            continue
        if pin.marker and not Marker(pin.marker).evaluate(environment):
            continue
        best: tuple[int, int] | None = None
        for filename, size in sizes.items():
            if not filename.endswith(".whl") or not _same_release(filename, pin.name, pin.version):
                continue
            tag = "-".join(filename[:-4].split("-")[-3:])
            ranks = [rank[str(t)] for t in tags.parse_tag(tag) if str(t) in rank]
            if ranks and (best is None or min(ranks) < best[0]):
                best = (min(ranks), size)
        total += best[1] if best else 0
    return total


def _same_release(filename: str, name: str, version: str) -> bool:
    stem = filename.split("-")
    return len(stem) >= 5 and re.sub(r"[-_.]+", "-", stem[0]).lower() == name and stem[1] == version


def human(size: int) -> str:
    """``123456789`` -> ``"118 MB"``; GB from 1000 MB on."""
    mb = size / 2**20
    return f"{mb / 1024:.1f} GB" if mb >= 1000 else f"{mb:.0f} MB"


def about_text() -> str:
    """``metadata.txt``'s ``about``: what the plugin does and what it will install."""
    linux = PLATFORMS[0]
    segment = ", ".join(r.label for r in SEGMENT.requirements if r.module and not r.qgis)
    return (
        "cloudseg finds clouds and cloud shadows in Sentinel-2 L1C and L2A imagery with "
        "deep-learning models (ONNX or PyTorch), on the CPU or a CUDA GPU. Run it from the "
        "Processing Toolbox, the layer context menu, a dock panel, headless with qgis_process, "
        "or with the cloudseg command. On first start it offers one button that installs what "
        f"segmenting needs ({segment}; about {human(download_bytes(SEGMENT, linux))} to "
        "download on Linux, no PyTorch) into a folder of its own, with progress and cancel, "
        "no terminal and no restart; what training, fine-tuning and explain need (PyTorch and "
        f"friends: about {human(download_bytes(TRAINING, linux))} on Linux, "
        f"{human(download_bytes(TRAINING, PLATFORMS[1]))} on Windows) is offered when one of "
        "those tools is first opened. QGIS's own numpy, GDAL and PyQt are never changed. "
        "Offline: the same installer takes a folder of wheels."
    )


def readme_table() -> str:
    """The README's table of the plugin's install steps: packages and download sizes."""
    header = "| step | packages | " + " | ".join(p.name for p in PLATFORMS) + " |"
    lines = [header, "|" + "---|" * (2 + len(PLATFORMS))]
    for step in PLUGIN_STEPS:
        names = ", ".join(f"`{r.distribution}`" for r in step.requirements if not r.qgis)
        sizes = " | ".join(human(download_bytes(step, p)) for p in PLATFORMS)
        lines.append(f"| {step.title} | {names} | {sizes} |")
    return "\n".join(lines)


def write_generated_texts(root: Path) -> list[Path]:
    """Rewrite ``about`` in ``metadata.txt`` and the README's table; return what changed."""
    changed = []
    metadata = root / "metadata.txt"
    text = metadata.read_text(encoding="utf-8")
    new = re.sub(r"(?m)^about=.*$", lambda _: f"about={about_text()}", text)
    if new != text:
        metadata.write_text(new, encoding="utf-8")
        changed.append(metadata)
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8")
    start, end = text.index(README_START), text.index(README_END)
    new = f"{text[: start + len(README_START)]}\n{readme_table()}\n{text[end:]}"
    if new != text:
        readme.write_text(new, encoding="utf-8")
        changed.append(readme)
    return changed


def metadata_about(root: Path) -> str:
    """``about`` as ``metadata.txt`` has it now."""
    parser = ConfigParser()
    parser.read(root / "metadata.txt", encoding="utf-8")
    return parser.get("general", "about")
