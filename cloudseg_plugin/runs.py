"""One segmentation run from the dock: what was asked, the task that runs it, its record.

A run goes to this computer's engine or to a cloudseg server; either way the task's
result is a :class:`RunOutcome`, so the dock loads and records both alike. The server
path imports only the standard library and QGIS (``backend.remote``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..backend.atomic import stamped_paths
from .tasks import BackendTask

if TYPE_CHECKING:
    from ..backend.remote import RemoteRun, ServerClient

#: Where a run on this computer ran, as the recent runs say it.
LOCAL = "this computer"


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
    """What the recent-runs list shows for one run.

    Attributes:
        where: Where it ran: ``this computer (<runner>)`` or ``server host:port
            (<runner>)`` (:attr:`RunOutcome.where`); "" when it did not run.
    """

    layer_name: str
    status: str
    model: str = ""
    seconds: float = 0.0
    cloud_percent: float | None = None
    outputs: dict[str, Path | None] = field(default_factory=dict)
    message: str = ""
    where: str = ""


@dataclass(frozen=True)
class RunOutcome:
    """What the dock shows of a finished run, the same wherever it ran.

    Built from a local run's :class:`SegmentResult` (:meth:`from_local`) or from a
    server run's summary (:meth:`from_server`), so both are loaded, recorded and
    said by the same code.

    Attributes:
        where: ``this computer (<runner>)`` or ``server host:port (<runner>)``.
        cost: The run's cost in one line (seconds and joules per km²), or "".
    """

    model: str
    seconds: float
    runner: str
    where: str
    class_percent: dict[str, float] = field(default_factory=dict)
    product_level: str = ""
    usable_percent: float | None = None
    warnings: list[str] = field(default_factory=list)
    shadow_geometry: dict[str, Any] | None = None
    cost: str = ""

    @classmethod
    def from_local(cls, result: Any) -> RunOutcome:
        """A run on this computer (``backend.inference.segment.SegmentResult``)."""
        return cls(
            model=result.model,
            seconds=float(result.seconds),
            runner=result.runner,
            where=f"{LOCAL} ({result.runner})",
            class_percent=dict(result.class_percent),
            product_level=result.product_level,
            usable_percent=result.usable_percent,
            warnings=list(result.warnings),
            shadow_geometry=result.shadow_geometry,
            cost=str((result.accounting or {}).get("summary", "")),
        )

    @classmethod
    def from_server(cls, run: RemoteRun) -> RunOutcome:
        """A run on a server: its summary (``cloudseg serve``'s segment job)."""
        summary = run.summary
        return cls(
            model=str(summary.get("model", "")),
            seconds=float(summary.get("seconds") or 0.0),
            runner=str(summary.get("runner", "")),
            where=run.where,
            class_percent={k: float(v) for k, v in (summary.get("class_percent") or {}).items()},
            product_level=str(summary.get("product_level", "")),
            usable_percent=summary.get("usable_percent"),
            warnings=[str(w) for w in summary.get("warnings") or []],
            shadow_geometry=summary.get("shadow_geometry"),
            cost=str((summary.get("accounting") or {}).get("summary", "")),
        )


class SegmentTask(BackendTask):
    """Runs a segmentation in a QGIS worker thread: here, or on a cloudseg server.

    Its ``result`` is a :class:`RunOutcome` either way; the output files are the
    request's :meth:`RunRequest.paths` either way (a server's are downloaded there,
    all of them or none).
    """

    def __init__(
        self,
        request: RunRequest,
        on_done: Callable[[SegmentTask], None],
        client: ServerClient | None = None,
    ) -> None:
        """Keep the request; ``client``: the server to run on (None: this computer)."""
        super().__init__(f"Segment clouds in {request.layer_name}", self._segment, on_done)
        self.request = request
        self.client = client
        self.outputs = request.paths()

    def _segment(
        self, progress: Callable[[float, str], None], cancelled: Callable[[], bool]
    ) -> RunOutcome:
        """Segment (and polygonize); no output is left behind on cancel."""
        if self.client is not None:
            return self._on_server(self.client, progress, cancelled)
        from ..backend.inference.segment import SegmentOptions, segment

        result = segment(
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
        return RunOutcome.from_local(result)

    def _on_server(
        self,
        client: ServerClient,
        progress: Callable[[float, str], None],
        cancelled: Callable[[], bool],
    ) -> RunOutcome:
        """The run on the server; a cancel dismisses its job (standard library only)."""
        from ..backend.remote import run_on_server

        run = run_on_server(
            client,
            "segment",
            self.request.source,
            self.request.options,
            self.outputs,  # mask, probabilities, polygons, valid: the server's names
            progress,
            cancelled,
        )
        return RunOutcome.from_server(run)
