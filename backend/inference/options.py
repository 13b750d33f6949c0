"""The options of a run, typed: what every engine entry point shares, and what segment adds.

:class:`RunOptions` says how to read the input and run the model (segment, evaluate and
the in-memory :func:`cloudseg.backend.inference.engine.predict` all take it);
:class:`SegmentOptions` adds the outputs of ``cloudseg segment``. The command line,
the Python API and the QGIS algorithms map onto these fields by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import choices
from ..choices import resolution_choice
from ..errors import InputError
from ..models.cards import ModelCard


@dataclass
class RunOptions:
    """How to read an input and run a model on it.

    Attributes:
        model: Built-in model name or model file; None picks the best built-in model.
        bands: Band names in file order, overriding the file's band descriptions.
        product_level: ``"L1C"`` or ``"L2A"``, overriding the product metadata.
        scale: Reflectance per digital number (default from metadata or 0.0001).
        offset: Reflectance added after scaling.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        precision: ``"auto"`` (bf16 where the hardware computes it natively: about 1.6x
            faster on such CPUs; 0.3 to 0.8 % of mask pixels differ), ``"fp32"`` or
            ``"bf16"``.
        runtime: ``"auto"``, ``"onnxruntime"``, ``"openvino"`` or ``"torch"``; see
            :func:`cloudseg.backend.inference.runners.plan_runner`.
        batch_size: Tiles per model call; None picks the runner's fastest: 16 on a GPU,
            4 with OpenVINO and 1 with onnxruntime or torch on the CPU.
        tta: Average predictions over flips and a 90-degree rotation (4x slower).
        tile_size: Tile edge in model-grid pixels (a multiple of 32); None: the card's.
        overlap: Pixels shared by neighbouring tiles (at most half a tile); None: the
            card's.
        resolution: ``"native"`` (the input's grid, the default) or ``"preview"`` (the
            model card's resolution: faster on finer input, less accurate); ``"model"``
            is accepted for ``"preview"``.
    """

    model: str | None = None
    bands: list[str] | None = None
    product_level: str | None = None
    scale: float | None = None
    offset: float | None = None
    device: str = "auto"
    precision: str = "auto"
    runtime: str = "auto"
    batch_size: int | None = None
    tta: bool = False
    tile_size: int | None = None
    overlap: int | None = None
    resolution: str = "native"

    def __post_init__(self) -> None:
        try:
            self.resolution = resolution_choice(self.resolution)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError("batch size must be at least 1")

    def tiling(self, card: ModelCard) -> tuple[int, int]:
        """The run's tile size and overlap: the options, else the card's.

        Raises:
            InputError: For a tile size that is not a multiple of 32 of at least 64, or
                an overlap outside 0 to half a tile.
        """
        tile = self.tile_size or card.tile_size
        if tile < 64 or tile % 32:
            raise InputError(f"tile size must be a multiple of 32 and at least 64, not {tile}")
        if self.overlap is not None and not 0 <= self.overlap <= tile // 2:
            raise InputError(f"overlap must be between 0 and half the tile size ({tile // 2})")
        overlap = card.overlap if self.overlap is None else self.overlap
        return tile, min(overlap, tile // 2)


@dataclass
class SegmentOptions(RunOptions):
    """Everything ``cloudseg segment`` can be told: the run, and its outputs.

    Attributes:
        probabilities: Also write per-class probabilities (uint8 percent) here.
        stats: Also write per-class pixel counts and percentages as JSON here.
        overwrite: Replace existing outputs.
        bounds: Segment only this extent, ``(left, bottom, right, top)`` in the input's
            CRS (widened to whole pixels); the outputs then cover just that extent.
        polygons: Also write the cloud and shadow polygons (GeoPackage) here.
        uncertainty: Also write the model's doubt per pixel here (normalized entropy of
            the blended probabilities, uint8 percent): where labels teach it most.
        min_polygon_area_m2: Polygons smaller than this are left out.
        max_memory_mib: The budget for the run's peak memory; a scene whose one pass
            over its width would need more runs in column blocks (same result).
        check_reflectance: Refuse values that are not reflectance after scaling (values
            no real scene has; see ``raster.reader.check_reflectance``). False makes
            that a warning.
        keep_runner: Keep the loaded model for the next run in this process (a batch
            worker segments many scenes with one model).
        valid: Also write the valid-pixel mask here (1 usable, 0 cloud, shadow or their
            buffer, 255 no data; see ``inference.valid``).
        buffer_cloud_m: Buffer grown around cloud in the valid mask, metres.
        buffer_shadow_m: Buffer grown around cloud shadow in the valid mask, metres.
        cloud_threshold: Cloud probability from which a pixel is cloud (default: the
            most probable class, argmax).
        shadow_threshold: Shadow probability from which a pixel that is not cloud is
            shadow (default: argmax).
    """

    probabilities: Path | None = None
    stats: Path | None = None
    overwrite: bool = False
    bounds: tuple[float, float, float, float] | None = None
    polygons: Path | None = None
    uncertainty: Path | None = None
    min_polygon_area_m2: float = 0.0
    max_memory_mib: float = 2048
    check_reflectance: bool = True
    keep_runner: bool = False
    valid: Path | None = None
    buffer_cloud_m: float = choices.DEFAULT_BUFFER_CLOUD_M
    buffer_shadow_m: float = choices.DEFAULT_BUFFER_SHADOW_M
    cloud_threshold: float | None = None
    shadow_threshold: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.probabilities is not None:
            self.probabilities = Path(self.probabilities).expanduser()
        if self.stats is not None:
            self.stats = Path(self.stats).expanduser()
        if self.polygons is not None:
            self.polygons = Path(self.polygons).expanduser()
        if self.uncertainty is not None:
            self.uncertainty = Path(self.uncertainty).expanduser()
        if self.valid is not None:
            self.valid = Path(self.valid).expanduser()
        from .valid import buffer_pixels, check_threshold

        check_threshold("cloud threshold", self.cloud_threshold)
        check_threshold("shadow threshold", self.shadow_threshold)
        for metres in (self.buffer_cloud_m, self.buffer_shadow_m):
            buffer_pixels(metres, 1.0)  # refuses a negative buffer
