"""What a run cost: seconds by stage, area, seconds per km², and energy with its method.

Energy is read from hardware counters only, never estimated:

- ``nvml``: the GPU's own energy counter (NVIDIA GPUs from Volta on), through
  nvidia-ml-py, NVIDIA's bindings of NVML, when the run uses a CUDA GPU;
- ``rapl``: the CPU package counters of Linux's powercap interface
  (``/sys/class/powercap/intel-rapl:*/energy_uj``; AMD CPUs expose them there too) when
  the run is on the CPU and the files are readable (often root only);
- otherwise ``not measured``, with the reason (no counter, not readable, a virtual
  machine without powercap...). No figure is made up from a TDP.

RAPL is two sysfs files per package; reading them directly costs less than a library.
zeus reads the same counters but brings its own dependency tree for it, and codecarbon
fills gaps with estimates and looks up the location over the network, which a run
here must not do.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Where Linux exposes RAPL counters.
POWERCAP = Path("/sys/class/powercap")


@dataclass
class Energy:
    """Joules used between :meth:`EnergyMeter.start` and :meth:`EnergyMeter.stop`.

    Attributes:
        joules: The energy, or None when not measured.
        method: ``nvml``, ``rapl`` or ``not measured``.
        detail: What was read (the GPU, the RAPL domains), or why nothing was.
    """

    joules: float | None
    method: str
    detail: str = ""


class EnergyMeter:
    """Reads an energy counter at the start and the end of a run (see the module doc)."""

    def __init__(self, device: str = "cpu", root: Path = POWERCAP) -> None:
        self.device = device
        self.root = root
        self._start: float | None = None
        self._read, self.method, self.detail = self._counter()

    def _counter(self) -> tuple[Any, str, str]:
        """A function that reads joules, the method, and what it reads (or why none)."""
        if self.device == "cuda":
            return self._nvml()
        return self._rapl()

    def _nvml(self) -> tuple[Any, str, str]:
        try:
            import pynvml
        except ImportError:
            return None, "not measured", "nvidia-ml-py is not installed"
        try:
            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            name = pynvml.nvmlDeviceGetName(handle)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # mJ; fails before Volta
        except Exception as exc:  # pynvml raises NVMLError subclasses per cause
            return None, "not measured", f"NVML has no energy counter here ({exc})"
        return (
            lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0,
            "nvml",
            f"GPU 0 ({name}) energy counter",
        )

    def _rapl(self) -> tuple[Any, str, str]:
        if not self.root.is_dir():
            return None, "not measured", f"no RAPL counters ({self.root} is absent)"
        domains = sorted(
            p for p in self.root.glob("intel-rapl:*") if p.name.count(":") == 1
        )  # packages, not their sub-domains (which the package already counts)
        if not domains:
            return None, "not measured", f"no RAPL package domains under {self.root}"

        def read() -> list[int]:
            return [int((d / "energy_uj").read_text()) for d in domains]

        try:
            self._ranges = [int((d / "max_energy_range_uj").read_text()) for d in domains]
            read()  # readable now, or not at all (often root only)
        except (OSError, ValueError) as exc:
            return None, "not measured", f"RAPL counters are not readable ({exc})"
        names = ", ".join((d / "name").read_text().strip() for d in domains)
        return read, "rapl", f"RAPL {names} (CPU packages; DRAM and GPU not included)"

    def start(self) -> None:
        """Read the counter at the start."""
        self._start = time.perf_counter()
        self._first = self._read() if self._read else None

    def stop(self) -> Energy:
        """Read it again: the energy in between (counter wrap-around handled)."""
        if self._read is None or self._first is None:
            return Energy(None, "not measured", self.detail)
        last = self._read()
        if self.method == "rapl":
            used = sum(
                (b - a) if b >= a else (b + r - a)
                for a, b, r in zip(self._first, last, self._ranges, strict=True)
            )
            return Energy(used / 1e6, "rapl", self.detail)
        return Energy(last - self._first, self.method, self.detail)


@dataclass
class Accounting:
    """Seconds by stage, area and energy of one run, and the figures per km²."""

    seconds: float
    stages: dict[str, float]
    km2: float
    energy: Energy
    device: str = "cpu"

    @property
    def seconds_per_km2(self) -> float | None:
        """Wall seconds per square kilometre."""
        return self.seconds / self.km2 if self.km2 else None

    @property
    def joules_per_km2(self) -> float | None:
        """Joules per square kilometre, when the energy was measured."""
        if self.energy.joules is None or not self.km2:
            return None
        return self.energy.joules / self.km2

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable figures (None where not measured)."""

        def rounded(value: float | None, digits: int = 3) -> float | None:
            return None if value is None else round(value, digits)

        return {
            "seconds": round(self.seconds, 3),
            "stages_seconds": {k: round(v, 3) for k, v in self.stages.items()},
            "km2": round(self.km2, 4),
            "seconds_per_km2": rounded(self.seconds_per_km2, 4),
            "joules": rounded(self.energy.joules, 1),
            "joules_per_km2": rounded(self.joules_per_km2, 2),
            "energy_method": self.energy.method,
            "energy_detail": self.energy.detail,
            "device": self.device,
        }

    def summary(self) -> str:
        """One line for people: time per km² and energy, or why energy is missing."""
        rate = f"{self.seconds_per_km2:.3f} s/km²" if self.seconds_per_km2 else "no area"
        if self.energy.joules is None:
            energy = f"energy not measured ({self.energy.detail})"
        else:
            energy = (
                f"{self.energy.joules:.0f} J ({self.joules_per_km2:.1f} J/km², "
                f"{self.energy.method})"
            )
        return f"{self.km2:.2f} km² in {self.seconds:.1f} s ({rate}); {energy}"


@dataclass
class RunMeter:
    """Times a run's stages and reads its energy: ``with meter.stage("infer"): ...``."""

    device: str = "cpu"
    stages: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._meter = EnergyMeter(self.device)
        self._started = time.perf_counter()
        self._meter.start()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add the block's wall time to stage ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - start

    def finish(self, km2: float) -> Accounting:
        """The run's accounting, for ``km2`` square kilometres."""
        energy = self._meter.stop()
        seconds = time.perf_counter() - self._started
        return Accounting(seconds, dict(self.stages), km2, energy, self.device)


def area_km2(width: int, height: int, transform: Any, crs: Any) -> float:
    """The area of a ``width`` x ``height`` grid in km² (geographic grids at their centre)."""
    import math

    if transform is None:
        return 0.0
    pixel = abs(transform.a * transform.e - transform.b * transform.d)
    if crs is not None and getattr(crs, "is_geographic", False):
        lat = math.radians(transform.f + transform.e * height / 2)
        metres = 111_320.0  # per degree at the equator
        pixel *= metres * metres * math.cos(lat)
    return pixel * width * height / 1e6


def machine_info() -> dict[str, Any]:
    """The machine a figure was measured on: platform, CPU model and count, Python."""
    import os
    import platform

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_model": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
