"""Install cloudseg's packages into a folder of its own, beside a Python it must not change.

This is the QGIS plugin's installer (the plugin gives it a folder per profile and Python
version, and shows its plan, progress and errors); it knows nothing of QGIS and runs as
well from a script.

Why this design: QGIS's Python (numpy, GDAL, PyQt and whatever the platform ships) is
left exactly as it is. Each plugin step (:data:`~.dependencies.PLUGIN_STEPS`) is installed
with pip's ``--target`` into ``<root>/<step>``, from the step's lock (exact versions, every
file checked by its SHA-256, ``--no-deps``: pip resolves nothing and can never pull a
second numpy), and :func:`activate` puts those folders at the *end* of ``sys.path``: a
package QGIS's Python has is always QGIS's copy, so it is not even downloaded. pip is the
locked pip too, run from its wheel, so the same installer works where QGIS's Python has no
pip or an old one. Unlike a separate environment with a Python of its own and a worker
process (the other common design), the plugin keeps running models in QGIS's process with
QGIS's GDAL, with nothing to download but wheels from the package index (or a folder).

A step is published only when everything succeeded: pip fills a hidden temporary folder,
the step's modules are imported from it in a fresh process, then it is renamed into place
with its receipt. A failure or cancel at any moment leaves the earlier install untouched.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import queue
import re
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import atomic
from .atomic import file_sha256
from .dependencies import PLUGIN_STEPS, Group, missing_requirements
from .errors import CancelledError, CloudsegError
from .locks import Pin, canonical, file_sizes, group_pins, lock_digest

logger = logging.getLogger(__name__)

#: The receipt of an installed step, written last: a folder without it is not installed.
RECEIPT = "cloudseg-install.json"
#: A step's folder of packages that must come before the Python's own copies.
FIRST = ".first"
#: Distributions of QGIS's own Python that no cloudseg package may ever replace.
QGIS_OWN = frozenset({"numpy", "gdal", "pyqt5", "pyqt5-sip", "qgis", "rasterio"})
#: Free space wanted beyond the download: wheels are unpacked (about 2.5 times larger).
SPACE_FACTOR = 3.5
#: ``(percent, message)``: where an install is.
Progress = Callable[[float, str], None]


class InstallError(CloudsegError, RuntimeError):
    """An install that could not be done; the message says why in one line."""


def python_command() -> str:
    """The Python interpreter of this process, as a command (QGIS's own on every platform).

    Inside QGIS ``sys.executable`` is often the QGIS binary itself, so the path is
    derived from the interpreter's prefix instead.
    """
    if Path(sys.executable).name.lower().startswith("python"):
        return sys.executable
    if sys.platform == "win32":
        candidate = Path(sys.exec_prefix) / "python.exe"
    else:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        candidate = Path(sys.exec_prefix) / "bin" / f"python{version}"
    return str(candidate) if candidate.exists() else "python3"


def step_folder(root: Path, step: Group) -> Path:
    """Where ``step`` is installed under ``root``."""
    return Path(root) / step.name


def installed_folders(root: Path) -> list[Path]:
    """The installed steps' folders under ``root``, in step order."""
    return [
        step_folder(root, step)
        for step in PLUGIN_STEPS
        if (step_folder(root, step) / RECEIPT).is_file()
    ]


def activate(root: Path) -> list[Path]:
    """Put the installed steps' folders on ``sys.path`` (once each).

    A step's folder is appended: a module QGIS's Python has is QGIS's. Only its
    :data:`FIRST` folder, holding the few packages the Python has at a version that a
    locked package excludes (never numpy, GDAL or PyQt), goes first. ``.pth`` files in
    the folders are honoured (``site.addsitedir``).

    Returns:
        The folders added now.
    """
    added = []
    for folder in installed_folders(root):
        first = folder / FIRST
        if first.is_dir() and str(first) not in sys.path:
            sys.path.insert(0, str(first))
            added.append(first)
        if str(folder) not in sys.path:
            site.addsitedir(str(folder))
            added.append(folder)
    if added:
        import importlib

        importlib.invalidate_caches()
        logger.debug("packages from %s", ", ".join(map(str, added)))
    return added


def read_receipt(folder: Path) -> dict[str, object]:
    """The receipt of an installed step (empty if there is none or it is unreadable)."""
    try:
        return dict(json.loads((folder / RECEIPT).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


@dataclass(frozen=True)
class Plan:
    """What installing a step will do, said before anything is downloaded.

    Attributes:
        step: The step.
        folder: Where it goes.
        pins: The locked packages pip installs.
        from_python: Packages the Python already has (name -> version), used as they are.
        from_earlier: Packages an earlier step installed.
        files: The files pip will fetch (name -> size in bytes, None if unknown).
        source: Where they come from (the package index, or a folder of wheels).
        outside_range: Declared packages the Python has at a version outside cloudseg's
            range (name -> what it has, what cloudseg wants, what for): its copy wins, so
            that use may not work; said, never shadowed.
        first: Packages the Python has at a version that a package being installed
            excludes (name -> why): the locked version is installed and put before the
            Python's own (never numpy, GDAL, PyQt or rasterio: those refuse the plan).
    """

    step: Group
    folder: Path
    pins: tuple[Pin, ...]
    from_python: dict[str, str]
    from_earlier: tuple[str, ...]
    files: dict[str, int | None] = field(default_factory=dict)
    source: str = "the package index"
    outside_range: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    first: dict[str, str] = field(default_factory=dict)

    @property
    def download_bytes(self) -> int:
        """The bytes to fetch (known sizes)."""
        return sum(size or 0 for size in self.files.values())

    def headline(self) -> str:
        """The plan in one short line: how many packages, how much to download, from where."""
        from .packaging_text import human

        if not self.pins:
            return "nothing to download"
        size = human(self.download_bytes)
        text = f"{len(self.pins)} packages, {size} to download from {self.source}"
        if self.first:
            text += f"; newer {', '.join(sorted(self.first))} than QGIS's go first"
        return text

    def summary(self) -> str:
        """What will happen, in a few plain sentences."""
        from .packaging_text import human

        if not self.pins:
            return f"{self.step.title}: everything is installed already."
        used = ", ".join(f"{name} {version}" for name, version in sorted(self.from_python.items()))
        text = (
            f"{self.step.title}: {len(self.pins)} packages, {human(self.download_bytes)} to "
            f"download from {self.source}, into {self.folder}."
        )
        if used:
            text += f" Used as this Python has them: {used}."
        for name, why in sorted(self.first.items()):
            text += f" cloudseg's own {name} goes first ({why})."
        for name, (have, wanted, purpose) in sorted(self.outside_range.items()):
            text += f" This Python's {name} {have} is not {wanted}: {purpose} may not work."
        return text


class PackageInstaller:
    """Installs, checks and removes the plugin steps under one root folder.

    Args:
        root: The folder of this profile and Python version (created when needed).
        python: The interpreter the packages are for (default: this process's).
        wheels: A folder of wheels to install from instead of the package index.
    """

    def __init__(self, root: Path, python: str | None = None, wheels: Path | None = None) -> None:
        self.root = Path(root)
        self.python = python or python_command()
        self.wheels = Path(wheels) if wheels else None

    # -- what is there ---------------------------------------------------------------
    def status(self, step: Group) -> str:
        """One line on ``step``: installed (and from which lock), outdated, or missing."""
        folder = step_folder(self.root, step)
        receipt = read_receipt(folder)
        if receipt:
            when = str(receipt.get("installed_at", ""))[:10]
            if receipt.get("lock") != lock_digest(step):
                return f"installed {when} from an older lock: install again to update"
            return f"installed {when} ({len(receipt.get('packages', {}))} packages)"
        missing = missing_requirements(step)
        if not missing:
            return "available in this Python already"
        return "not installed (missing: " + ", ".join(r.label for r in missing) + ")"

    def python_packages(self) -> dict[str, str]:
        """What the Python has on its own (canonical name -> version), from a fresh process."""
        code = (
            "import importlib.metadata as m, json\n"
            "print(json.dumps({d.metadata['Name'] or '': d.version for d in m.distributions()}))"
        )
        done = self._python(["-c", code])
        return {canonical(name): version for name, version in json.loads(done).items() if name}

    # -- the plan --------------------------------------------------------------------
    def plan(self, step: Group) -> Plan:
        """What installing ``step`` needs, with the download size (pip's own choice of files).

        Raises:
            InstallError: If the Python lacks a package that must be its own (numpy,
                rasterio on QGIS's GDAL), or pip cannot find a locked file.
        """
        have = self.python_packages()
        for req in step.requirements:
            if req.qgis and canonical(req.distribution) not in have:
                raise InstallError(_system_missing(req.distribution))
        index = PLUGIN_STEPS.index(step)
        earlier = {
            name
            for before in PLUGIN_STEPS[:index]
            for name in dict(read_receipt(step_folder(self.root, before)).get("packages", {}))
        }
        locked = {pin.name: pin for pin in group_pins(step) if pin.name != "pip"}
        first: dict[str, str] = {}
        for _ in range(8):  # each package put first may need another (sympy, then mpmath)
            from_python, from_earlier, pins = {}, [], []
            for pin in locked.values():
                if pin.name in have and pin.name not in first:
                    from_python[pin.name] = have[pin.name]
                elif pin.name in earlier:
                    from_earlier.append(pin.name)
                else:
                    pins.append(pin)
            choice = self._dry_run(pins) if pins else _Choice({}, set(), {})
            clashes = _clashes(choice.requires, from_python)
            if not clashes:
                break
            for name, why in clashes.items():
                if name in QGIS_OWN or name not in locked:
                    raise InstallError(
                        f"{why}, but this Python has {name} {from_python[name]}, which cloudseg "
                        f"must not replace; {step.title} cannot be installed into it"
                    )
                first[name] = f"{why}; this Python has {from_python[name]}"
        kept = tuple(pin for pin in pins if (pin.name, pin.version) in choice.chosen)  # markers
        return Plan(
            step,
            step_folder(self.root, step),
            kept,
            from_python,
            tuple(from_earlier),
            choice.files,
            f"the wheel folder {self.wheels}" if self.wheels else "the package index",
            _outside_range(step, have),
            first,
        )

    def _dry_run(self, pins: list[Pin]) -> _Choice:
        """What pip chooses for ``pins`` on this Python (its ``--dry-run --report``)."""
        with tempfile.TemporaryDirectory(prefix="cloudseg-plan-") as tmp:
            requirements = Path(tmp) / "requirements.txt"
            requirements.write_text("\n".join(p.requirement() for p in pins) + "\n")
            report = Path(tmp) / "report.json"
            self._pip(
                [
                    *("install", "--dry-run", "--quiet", "--report", str(report)),
                    *self._install_options(Path(tmp) / "target", requirements),
                ]
            )
            chosen = json.loads(report.read_text(encoding="utf-8")).get("install", [])
        sizes = file_sizes()
        result = _Choice({}, set(), {})
        for item in chosen:
            url = str(item.get("download_info", {}).get("url", ""))
            name = url.rsplit("/", 1)[-1].split("#", 1)[0]
            local = Path(url[len("file://") :]) if url.startswith("file://") else None
            result.files[name] = (
                local.stat().st_size if local and local.is_file() else sizes.get(name)
            )
            project = canonical(item["metadata"]["name"])
            result.chosen.add((project, item["metadata"]["version"]))
            result.requires[project] = list(item["metadata"].get("requires_dist", []))
        return result

    # -- the install -----------------------------------------------------------------
    def install(
        self,
        plan: Plan,
        progress: Progress | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Path:
        """Install ``plan``'s packages; publish the step only when all succeeded.

        Returns:
            The step's folder.

        Raises:
            CancelledError: If ``cancelled()`` became true; nothing was changed.
            InstallError: One line, if pip failed, the disk is too full or a module of
                the step does not import; nothing was changed.
        """
        progress = progress or (lambda _percent, _message: None)
        cancelled = cancelled or (lambda: False)
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if free < plan.download_bytes * SPACE_FACTOR:
            from .packaging_text import human

            raise InstallError(
                f"{self.root} has {human(free)} free; {plan.step.title} needs about "
                f"{human(int(plan.download_bytes * SPACE_FACTOR))}: free some space first"
            )
        with atomic.claim([plan.folder]):
            for stale in atomic.dead_temporaries(self.root):
                shutil.rmtree(stale, ignore_errors=True)
            partial = atomic.temporary_sibling(plan.folder)
            partial.mkdir()
            try:
                ahead = [pin for pin in plan.pins if pin.name in plan.first]
                rest = [pin for pin in plan.pins if pin.name not in plan.first]
                done = 0
                for pins, target in ((ahead, partial / FIRST), (rest, partial)):
                    if pins:
                        done = self._run_pip(plan, pins, target, done, progress, cancelled)
                progress(95.0, "checking that the packages import")
                if cancelled():
                    raise CancelledError("install cancelled; nothing was changed")
                self._check_imports(plan.step, partial)
                self._write_receipt(plan, partial)
                self._publish(partial, plan.folder)
            except BaseException:
                shutil.rmtree(partial, ignore_errors=True)
                raise
        progress(100.0, f"{plan.step.title}: installed")
        return plan.folder

    def _run_pip(
        self,
        plan: Plan,
        pins: list[Pin],
        target: Path,
        done: int,
        progress: Progress,
        cancelled: Callable[[], bool],
    ) -> int:
        """Install ``pins`` into ``target`` with pip; returns the bytes fetched so far."""
        total = max(plan.download_bytes, 1)
        sizes = dict(plan.files)
        current = 0
        with tempfile.TemporaryDirectory(prefix="cloudseg-install-") as tmp:
            requirements = Path(tmp) / "requirements.txt"
            requirements.write_text("\n".join(p.requirement() for p in pins) + "\n")
            command = [
                *self._pip_command(),
                *("install", "--progress-bar", "raw"),
                *self._install_options(target, requirements),
            ]
            lines: list[str] = []
            process = self._start(command)
            reader = _LineReader(process)
            progress(min(85.0, 85.0 * done / total), f"downloading {len(pins)} packages")
            while True:
                if cancelled():
                    _stop(process)
                    raise CancelledError("install cancelled; nothing was changed")
                line = reader.next_line(0.2)
                if line is None:
                    if process.poll() is not None and reader.finished():
                        break
                    continue
                lines.append(line)
                raw = re.match(r"Progress (\d+) of (\d+)", line)
                name = re.search(r"(?:Downloading|Processing|Using cached) (\S+)", line)
                if raw:
                    current = int(raw[1])
                elif name:
                    done += current
                    current = 0
                    file = name[1].rsplit("/", 1)[-1]
                    if line.startswith("Processing") or "cached" in line:
                        done += sizes.get(file) or 0
                    progress(min(85.0, 85.0 * done / total), f"fetching {file}")
                    continue
                elif line.startswith("Installing collected packages"):
                    progress(88.0, "unpacking the packages")
                    continue
                else:
                    continue
                progress(min(85.0, 85.0 * (done + current) / total), "downloading")
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
            if process.returncode != 0:
                raise InstallError(_pip_failure(lines))
        return done + current

    def _check_imports(self, step: Group, partial: Path) -> None:
        """Import the step's modules from ``partial`` in a fresh Python, as QGIS will."""
        folders = [f for f in installed_folders(self.root) if f.name != step.name]
        folders.append(partial)
        firsts = [str(f / FIRST) for f in folders if (f / FIRST).is_dir()]
        modules = [m for m in step.modules if m]
        code = (
            "import site, sys\n"
            f"sys.path[:0] = {firsts!r}\n"
            f"for folder in {[str(f) for f in folders]!r}:\n"
            "    site.addsitedir(folder)\n"
            f"for name in {modules!r}:\n"
            "    try:\n"
            "        __import__(name)\n"
            "    except Exception as exc:\n"
            "        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__\n"
            "        print(f'{name}: {text}')\n"
            "        sys.exit(3)\n"
        )
        try:
            self._python(["-c", code], timeout=600)
        except InstallError as exc:
            raise InstallError(
                f"{step.title}: installed, but {exc} in this Python; nothing was changed"
            ) from None

    def _write_receipt(self, plan: Plan, partial: Path) -> None:
        receipt = {
            "step": plan.step.name,
            "lock": lock_digest(plan.step),
            "python": f"{sys.version_info.major}.{sys.version_info.minor}",
            "installed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "source": plan.source,
            "packages": {p.name: p.version for p in plan.pins},
            "from_python": plan.from_python,
            "first": plan.first,
        }
        (partial / RECEIPT).write_text(json.dumps(receipt, indent=1), encoding="utf-8")

    @staticmethod
    def _publish(partial: Path, folder: Path) -> None:
        """Rename ``partial`` to ``folder``; an older install is replaced only after."""
        old = None
        if folder.exists():
            old = atomic.temporary_sibling(folder, "old")
            folder.rename(old)
        try:
            partial.rename(folder)
        except OSError:
            if old is not None:
                old.rename(folder)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    # -- removal ---------------------------------------------------------------------
    def uninstall(self) -> int:
        """Remove every step and the installer's files; returns the bytes freed.

        Modules already imported stay loaded in this process until it ends.
        """
        if not self.root.exists():
            return 0
        freed = sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())
        shutil.rmtree(self.root)
        return freed

    # -- pip -------------------------------------------------------------------------
    def _install_options(self, target: Path, requirements: Path) -> list[str]:
        from .network import timeouts

        limits = timeouts("http")
        options = [
            *("--target", str(target), "--no-deps", "--require-hashes"),
            *("--only-binary", ":all:", "--no-compile", "--no-input"),
            "--disable-pip-version-check",
            *("--timeout", f"{max(limits.connect, limits.read):g}"),
            *("--retries", str(limits.retries)),
            *("-r", str(requirements)),
        ]
        if self.wheels is not None:
            options += ["--no-index", "--find-links", str(self.wheels)]
        return options

    def _pip_command(self) -> list[str]:
        return [self.python, f"{self.pip_wheel()}/pip"]

    def _pip(self, arguments: list[str]) -> str:
        done = subprocess.run(
            [*self._pip_command(), *arguments],
            capture_output=True,
            text=True,
            env=_pip_environment(),
            timeout=1800,
        )
        if done.returncode != 0:
            raise InstallError(_pip_failure((done.stdout + done.stderr).splitlines()))
        return done.stdout

    def _python(self, arguments: list[str], timeout: float = 120) -> str:
        done = subprocess.run(
            [self.python, *arguments],
            capture_output=True,
            text=True,
            env=_pip_environment(),
            timeout=timeout,
        )
        if done.returncode != 0:
            last = (done.stdout.strip() or done.stderr.strip() or "failed").splitlines()[-1]
            raise InstallError(last)
        return done.stdout

    def _start(self, command: list[str]) -> subprocess.Popen[str]:
        options: dict = (
            {"start_new_session": True}
            if os.name != "nt"
            else {
                "creationflags": subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
            }
        )
        return subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_pip_environment(),
            **options,
        )

    def pip_wheel(self) -> Path:
        """The locked pip's wheel: from the cache, the wheel folder or the index.

        Raises:
            InstallError: If it cannot be had or its hash is not the lock's.
        """
        pin = next(p for p in group_pins(PLUGIN_STEPS[0]) if p.name == "pip")
        name = f"pip-{pin.version}-py3-none-any.whl"
        cached = self.root / "pip" / name
        if cached.is_file() and file_sha256(cached) in pin.hashes:
            return cached
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(cached) as part:
            if self.wheels is not None:
                source = self.wheels / name
                if not source.is_file():
                    raise InstallError(
                        f"the wheel folder {self.wheels} has no {name}; add it with: pip "
                        f"download --no-deps pip=={pin.version} -d {self.wheels}"
                    )
                shutil.copyfile(source, part)
            else:
                _download_from_index("pip", name, part)
            if file_sha256(part) not in pin.hashes:
                raise InstallError(f"{name} does not match the lock's SHA-256; not used")
        return cached


# -- helpers -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Choice:
    """What pip's dry run chose: files (name -> size), ``(name, version)``s, requirements."""

    files: dict[str, int | None]
    chosen: set[tuple[str, str]]
    requires: dict[str, list[str]]


class _LineReader:
    """Lines of a process's output, read in a thread so the caller can poll for cancel."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        with contextlib.suppress(ValueError, OSError):  # closed under it by a cancel
            for line in process.stdout:
                self._lines.put(line.rstrip("\n"))
        self._done.set()
        self._lines.put(None)

    def next_line(self, wait: float) -> str | None:
        try:
            return self._lines.get(timeout=wait)
        except queue.Empty:
            return None

    def finished(self) -> bool:
        return self._done.is_set() and self._lines.empty()


def _stop(process: subprocess.Popen[str]) -> None:
    """End pip and whatever it started."""
    with contextlib.suppress(ProcessLookupError, OSError):
        if os.name == "nt":
            process.terminate()
        else:
            os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, OSError):
            if os.name == "nt":
                process.kill()
            else:
                os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _pip_environment() -> dict[str, str]:
    """This process's environment without what would send pip elsewhere than ``--target``."""
    environment = dict(os.environ)
    for name in ("PIP_USER", "PIP_TARGET", "PIP_PREFIX", "PIP_ROOT", "PIP_REQUIRE_VIRTUALENV",
                 "PYTHONHOME", "PYTHONNOUSERSITE"):  # fmt: skip
        environment.pop(name, None)
    environment["PYTHONUTF8"] = "1"
    return environment


def _pip_failure(lines: list[str]) -> str:
    """One line from pip's output that says why it failed."""
    errors = [line.strip() for line in lines if line.strip().startswith("ERROR:")]
    if any("THESE PACKAGES DO NOT MATCH THE HASHES" in line for line in errors):
        return (
            "a downloaded file does not match the lock's SHA-256 (a changed or corrupt "
            "file); nothing was installed"
        )
    for line in errors:
        if "No matching distribution" in line or "Could not find a version" in line:
            wanted = re.search(r"(?:requirement|distribution found for) (\S+)", line)
            return (
                f"pip found no file of {wanted[1] if wanted else 'a locked package'} for this "
                "platform and Python (offline: is it in the wheel folder?); nothing was installed"
            )
    for line in errors:
        if re.search(r"Connection|Max retries|timed out|NewConnectionError|SSL", line):
            return (
                "the package index cannot be reached (no internet, a proxy, or a "
                "firewall); use a wheel folder instead"
            )
    text = errors[0][len("ERROR:") :].strip() if errors else (lines[-1] if lines else "pip failed")
    return f"pip failed: {text[:300]}"


def _clashes(requires: dict[str, list[str]], have: dict[str, str]) -> dict[str, str]:
    """Packages of ``have`` at a version that one of ``requires`` excludes: name -> why."""
    try:
        from packaging.requirements import InvalidRequirement, Requirement
        from packaging.version import InvalidVersion
    except ImportError:  # no packaging in this Python: pip's import check still guards
        return {}
    clashes = {}
    for owner, texts in sorted(requires.items()):
        for text in texts:
            try:
                req = Requirement(text)
                if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                    continue
                name = canonical(req.name)
                if name in have and not req.specifier.contains(have[name], prereleases=True):
                    clashes.setdefault(name, f"{owner} needs {name}{req.specifier}")
            except (InvalidRequirement, InvalidVersion):
                continue
    return clashes


def _outside_range(step: Group, have: dict[str, str]) -> dict[str, tuple[str, str, str]]:
    """Declared packages of ``step`` that the Python has at a version cloudseg does not want."""
    try:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet
        from packaging.version import InvalidVersion
    except ImportError:  # no packaging in this Python: nothing to compare with
        return {}
    outside = {}
    for req in step.requirements:
        version = have.get(canonical(req.distribution))
        if version is None or not req.specifier or req.qgis:
            continue
        try:
            if not SpecifierSet(req.specifier).contains(version, prereleases=True):
                outside[req.distribution] = (version, req.specifier, req.purpose)
        except (InvalidSpecifier, InvalidVersion):
            continue
    return outside


def _system_missing(distribution: str) -> str:
    return (
        f"this Python has no {distribution}, which must come with QGIS (built on its GDAL "
        f"and numpy): install QGIS's own {distribution} package (Debian/Ubuntu: "
        f"python3-{distribution}; OSGeo4W: python3-{distribution}) and try again"
    )


#: The package index pip uses by default (its JSON simple API, PEP 691 and 700).
INDEX = "https://pypi.org/simple"


def index_files(project: str, timeout: float, index: str = INDEX) -> list[dict]:
    """The files of ``project`` on the index: name, URL, hashes and size of each.

    Raises:
        OSError: If the index cannot be read within ``timeout`` seconds.
    """
    import urllib.request

    request = urllib.request.Request(
        f"{index.rstrip('/')}/{project}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return list(json.load(answer)["files"])


def _download_from_index(project: str, filename: str, target: Path) -> None:
    """Fetch ``filename`` of ``project`` from the package index (PEP 691 JSON)."""
    from .errors import InputError
    from .network import download, timeouts

    limits = timeouts("http")
    index = os.environ.get("CLOUDSEG_PACKAGE_INDEX", INDEX)
    try:
        files = index_files(project, max(limits.connect, limits.read), index)
        url = next(f["url"] for f in files if f["filename"] == filename)
        download(url, target)
    except (OSError, ValueError, KeyError, StopIteration, InputError) as exc:
        raise InstallError(
            f"cannot fetch {filename} from {index} ({_first_line(exc)}); offline, use a "
            "wheel folder"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
