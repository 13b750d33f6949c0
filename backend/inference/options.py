"""The options of a run, typed: what every engine entry point shares, and what segment adds.

:class:`RunOptions` says how to read the input, run the model and decide the classes
(segment, segment-batch, explain, evaluate and the in-memory
:func:`cloudseg.backend.inference.engine.predict` all take it); :class:`SegmentOptions`
adds the outputs of ``cloudseg segment``. The command line, the Python API and the QGIS
algorithms map onto these fields by name.

The command-line flags of :class:`RunOptions` are declared here, once (:data:`RUN_FLAGS`,
:func:`add_run_flags`, :func:`run_options`): every command that runs a model offers the
same spelling, help, choices and parsing.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import choices
from ..choices import (
    DEVICES,
    PRECISIONS,
    RESOLUTION_ALIASES,
    RESOLUTIONS,
    RUNTIMES,
    SHADOW_GEOMETRY_EFFECT,
    resolution_choice,
)
from ..errors import InputError
from ..models.cards import ModelCard

#: The memory budget of a run, MiB, unless told otherwise.
DEFAULT_MAX_MEMORY_MIB = 2048.0


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
        cloud_threshold: Cloud probability from which a pixel is cloud (default: the
            most probable class, argmax); see :mod:`.decision`.
        shadow_threshold: Shadow probability from which a pixel that is not cloud is
            shadow (default: argmax).
        shadow_geometry: Refine the shadow probability by where the scene's clouds can
            cast a shadow, along the sun's direction (:mod:`.shadow`); off by default
            (measured effect: docs/shadow-geometry.md).
        max_memory_mib: The budget for the run's peak memory, MiB; a scene whose one
            pass over its width would need more runs in column blocks (same result),
            and a run that cannot fit even so is refused before the model loads (see
            :func:`cloudseg.backend.inference.engine.memory_plan`).
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
    cloud_threshold: float | None = None
    shadow_threshold: float | None = None
    shadow_geometry: bool = False
    max_memory_mib: float = DEFAULT_MAX_MEMORY_MIB

    def __post_init__(self) -> None:
        from .decision import check_threshold

        try:
            self.resolution = resolution_choice(self.resolution)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError("batch size must be at least 1")
        check_threshold("cloud threshold", self.cloud_threshold)
        check_threshold("shadow threshold", self.shadow_threshold)
        if not self.max_memory_mib > 0:  # NaN too
            raise InputError(
                f"the memory budget must be more than 0 MiB, not {self.max_memory_mib}"
            )

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
        check_reflectance: Refuse values that are not reflectance after scaling (values
            no real scene has; see ``raster.reader.check_reflectance``). False makes
            that a warning.
        keep_runner: Keep the loaded model for the next run in this process (a batch
            worker segments many scenes with one model).
        valid: Also write the valid-pixel mask here (1 usable, 0 cloud, shadow or their
            buffer, 255 no data; see ``inference.valid``).
        buffer_cloud_m: Buffer grown around cloud in the valid mask, metres.
        buffer_shadow_m: Buffer grown around cloud shadow in the valid mask, metres.
        stac_item: Also write the outputs' STAC Item here (see ``inference.stac_item``),
            published with them.
        stac_item_id: The Item's id (default: the mask's file name without its suffix);
            a server's job gives each Item its own (``mask`` for every job collides).
    """

    probabilities: Path | None = None
    stats: Path | None = None
    overwrite: bool = False
    bounds: tuple[float, float, float, float] | None = None
    polygons: Path | None = None
    uncertainty: Path | None = None
    min_polygon_area_m2: float = 0.0
    check_reflectance: bool = True
    keep_runner: bool = False
    valid: Path | None = None
    buffer_cloud_m: float = choices.DEFAULT_BUFFER_CLOUD_M
    buffer_shadow_m: float = choices.DEFAULT_BUFFER_SHADOW_M
    stac_item: Path | None = None
    stac_item_id: str | None = None

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
        if self.stac_item is not None:
            self.stac_item = Path(self.stac_item).expanduser()
        from .valid import buffer_pixels

        for metres in (self.buffer_cloud_m, self.buffer_shadow_m):
            buffer_pixels(metres, 1.0)  # refuses a negative buffer


# -- the command line ------------------------------------------------------------------------
@dataclass(frozen=True)
class RunFlag:
    """The command-line flag of one :class:`RunOptions` field.

    Attributes:
        field: The field; the flag is its name with dashes (``tile_size``: ``--tile-size``).
        help: The help text (``%(default)s`` is the command's default).
        settings: More ``add_argument`` keywords (``type``, ``choices``, ``action``...).
    """

    field: str
    help: str
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: The flag where it is not the field's name with dashes.
    name: str | None = None

    @property
    def flag(self) -> str:
        """The flag, e.g. ``--product-level``."""
        return self.name or "--" + self.field.replace("_", "-")


def memory_size(text: str) -> float:
    """``--max-memory``: MiB, or a number with a unit (``1500M``, ``2G``, ``2GiB``)."""
    import re

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([MmGg])?(?:i?[Bb])?\s*", text)
    if not match or not float(match[1]) > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size such as 2G or 1500M")
    return float(match[1]) * (1024 if (match[2] or "M").upper() == "G" else 1)


def _resolution(value: str) -> str:
    """``--resolution``: a choice, or an older spelling of one."""
    return RESOLUTION_ALIASES.get(value, value)


#: Every field of :class:`RunOptions` as a flag, in the order ``--help`` lists them.
RUN_FLAGS = (
    RunFlag("model", "built-in model name (see 'cloudseg models') or a model file"),
    RunFlag(
        "bands",
        "band names in file order, e.g. B04,B03,B02,B08 (overrides the file's band descriptions)",
    ),
    RunFlag(
        "product_level",
        "override the product level, L1C or L2A (default: from metadata, else L1C)",
        {"choices": ("L1C", "L2A"), "type": str.upper},
    ),
    RunFlag(
        "scale",
        "reflectance per digital number (default: from metadata, else 0.0001 for S2 DN)",
        {"type": float},
    ),
    RunFlag(
        "offset",
        "reflectance added after scaling (e.g. -0.1 for baseline >= 04.00 products outside SAFE)",
        {"type": float},
    ),
    RunFlag(
        "device",
        "auto: a CUDA GPU when torch sees one, else the CPU (default %(default)s)",
        {"choices": DEVICES},
    ),
    RunFlag(
        "precision",
        "auto: bf16 where the hardware computes it natively (GPUs; CPUs with "
        "AVX512-BF16/AMX, through OpenVINO), about 1.6x faster there; fp32: full-precision "
        "results, the model itself (default %(default)s)",
        {"choices": PRECISIONS},
    ),
    RunFlag(
        "runtime",
        "auto: torch on a CUDA GPU, OpenVINO on CPUs with native bf16, onnxruntime "
        "elsewhere ('cloudseg info' says which runs here) (default %(default)s)",
        {"choices": RUNTIMES},
    ),
    RunFlag(
        "batch_size",
        "tiles per model call (default: 16 on a GPU, 4 with OpenVINO, 1 otherwise)",
        {"type": int, "metavar": "N"},
    ),
    RunFlag(
        "tta",
        "test-time augmentation: average flips and rotation (4x slower)",
        {"action": "store_true"},
    ),
    RunFlag(
        "tile_size",
        "tile edge in pixels, a multiple of 32 (default: the model card's; the built-in "
        "models were measured best at their 256)",
        {"type": int, "metavar": "PX"},
    ),
    RunFlag(
        "overlap",
        "pixels shared by neighbouring tiles (default: the model card's)",
        {"type": int, "metavar": "PX"},
    ),
    RunFlag(
        "resolution",
        "native: run on the input's own grid; preview: run at the model card's resolution "
        "(30 m for the built-in models), about 9x faster on 10 m input but coarser "
        "(default %(default)s)",
        {"choices": RESOLUTIONS, "type": _resolution},
    ),
    RunFlag(
        "cloud_threshold",
        "sensitivity: a pixel is cloud from this cloud probability on (0-1; lower masks "
        "more cloud). Default: the most probable class (see docs/valid-pixels.md)",
        {"type": float, "metavar": "P"},
    ),
    RunFlag(
        "shadow_threshold",
        "sensitivity for shadow, among the pixels that are not cloud (0-1)",
        {"type": float, "metavar": "P"},
    ),
    RunFlag(
        "shadow_geometry",
        "keep shadow only where a cloud of the scene can cast it along the sun's direction "
        "(sun angles from the product, else estimated from the scene); " + SHADOW_GEOMETRY_EFFECT,
        {"action": "store_true"},
    ),
    RunFlag(
        "max_memory_mib",
        "budget for the run's peak memory, e.g. 2G (default) or 1500M; a scene too wide "
        "for it runs in column blocks, with the same result, and a run that cannot fit is "
        "refused before the model loads",
        {"type": memory_size, "metavar": "SIZE"},
        name="--max-memory",
    ),
)


def add_run_flags(
    parser: argparse.ArgumentParser,
    *,
    model_required: bool = False,
    defaults: dict[str, Any] | None = None,
    only: tuple[str, ...] | None = None,
) -> None:
    """Add the run flags (:data:`RUN_FLAGS`) to a command that runs a model.

    Args:
        parser: The command's parser.
        model_required: ``--model`` must be given (the command has no automatic choice).
        defaults: Field defaults other than :class:`RunOptions`' for this command (e.g.
            ``{"precision": "fp32"}`` to measure the model itself).
        only: Add just these fields' flags (a command that runs a fixed setup).
    """
    from ..models.registry import preview_cost

    start = {f.name: f.default for f in dataclasses.fields(RunOptions)} | (defaults or {})
    group = parser.add_argument_group("how the model runs")
    for run_flag in RUN_FLAGS:
        if only is not None and run_flag.field not in only:
            continue
        text = run_flag.help
        if run_flag.field == "resolution" and (cost := preview_cost()):
            text += f"; {cost}"
        settings = dict(run_flag.settings)
        if run_flag.field == "model" and model_required:
            settings["required"] = True
        elif run_flag.field == "model":
            text += "; default: the best built-in model for the input"
        group.add_argument(
            run_flag.flag, dest=run_flag.field, default=start[run_flag.field], help=text, **settings
        )


def run_options(args: argparse.Namespace, kind: type[RunOptions] = RunOptions, **more: Any) -> Any:
    """The options a parsed command line asks for: its run flags, and ``more`` fields.

    Args:
        args: Parsed arguments of a parser that :func:`add_run_flags` equipped.
        kind: :class:`RunOptions` or a subclass (:class:`SegmentOptions`).
        more: Further fields of ``kind`` (a command's outputs).

    Raises:
        CloudsegError: For a bad band list or option value (one line, no usage).
    """
    from ..raster.bands import parse_band_list

    values = {f.field: getattr(args, f.field) for f in RUN_FLAGS if hasattr(args, f.field)}
    if isinstance(values.get("bands"), str):
        values["bands"] = parse_band_list(values["bands"])
    return kind(**values, **more)


def changed_run_options(options: RunOptions) -> dict[str, Any]:
    """The run fields of ``options`` that differ from :class:`RunOptions`' defaults.

    What a batch records as its settings: a run with the defaults written out has the
    same settings as one without them.
    """
    return {
        f.name: getattr(options, f.name)
        for f in dataclasses.fields(RunOptions)
        if getattr(options, f.name) != f.default
    }
