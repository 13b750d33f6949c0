"""One segmentation run from the dock: what was asked, the task that runs it, its record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backend.atomic import stamped_paths
from .tasks import BackendTask


@dataclass
class RunRequest:
    """One segmentation run asked for from the dock.

    Attributes:
        options: The run options the dock sets, by field name
            (:class:`cloudseg.backend.inference.options.RunOptions`: model, product level,
            bands, TTA, resolution, shadow geometry); the others keep their defaults.
    """

    layer_name: str
    source: Path
    output_dir: Path
    layer_id: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    probabilities: bool = False
    polygons: bool = False
    valid: bool = False

    def paths(self) -> dict[str, Path | None]:
        """Output paths for this run, unique by time (``backend.atomic.stamped_paths``)."""
        wanted = {"probabilities": self.probabilities, "polygons": self.polygons}
        wanted["valid"] = self.valid
        suffixes = {"mask": ".tif", "probabilities": ".tif", "polygons": ".gpkg", "valid": ".tif"}
        paths = stamped_paths(self.output_dir, self.layer_name, suffixes)
        return {kind: path if wanted.get(kind, True) else None for kind, path in paths.items()}


@dataclass
class RunRecord:
    """What the recent-runs list shows for one run."""

    layer_name: str
    status: str
    model: str = ""
    seconds: float = 0.0
    cloud_percent: float | None = None
    outputs: dict[str, Path | None] = field(default_factory=dict)
    message: str = ""


class SegmentTask(BackendTask):
    """Runs the backend engine in a QGIS worker thread."""

    def __init__(self, request: RunRequest, on_done: Callable[[SegmentTask], None]) -> None:
        super().__init__(f"Segment clouds in {request.layer_name}", self._segment, on_done)
        self.request = request
        self.outputs = request.paths()

    def _segment(
        self, progress: Callable[[float, str], None], cancelled: Callable[[], bool]
    ) -> Any:
        """Segment (and polygonize); the engine leaves no output behind on cancel."""
        from ..backend.inference.segment import SegmentOptions, segment

        return segment(
            self.request.source,
            self.outputs["mask"],
            SegmentOptions(
                **self.request.options,
                probabilities=self.outputs["probabilities"],
                polygons=self.outputs["polygons"],
                valid=self.outputs["valid"],
            ),
            progress=progress,
            cancelled=cancelled,
        )
