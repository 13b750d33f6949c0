"""The options of a run, typed and declared once: what every engine entry point shares.

:class:`RunOptions` says how to read the input, run the model and decide the classes
(segment, segment-batch, explain, evaluate and the in-memory
:func:`cloudseg.backend.inference.engine.predict` all take it); :class:`SegmentOptions`
adds the outputs of ``cloudseg segment``.

Each field of :class:`RunOptions` is declared once, with :func:`option`: its type and
default, its help text, a short label, its bounds and choices, and the surfaces that
offer it (:data:`SURFACES`). :data:`RUN_FLAGS` reads the declarations, and every
surface is generated from them: the command-line flags (:func:`add_run_flags`,
:func:`run_options`), the OGC API's inputs and their JSON Schema and the web page's
controls (:mod:`cloudseg.backend.serve.processes`), the QGIS Processing parameters
(``cloudseg_plugin/algorithms/options.py``) and the dock's request. A new option is one
field here and its use in the engine.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
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
#: The surfaces an option can appear on: the command line, the server's OGC API (its
#: inputs and JSON Schema), the server's web page and the QGIS Processing dialogs.
SURFACES = frozenset({"cli", "server", "web", "processing"})
#: The largest integer a surface accepts for a pixel count (a tile edge, an overlap,
#: tiles per call): a bound, so that no request asks for absurd work.
MAX_INTEGER = 65536
_DECLARATION = "cloudseg"


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


@dataclass(frozen=True)
class RunFlag:
    """The one declaration of a run option: what every surface shows of it.

    Attributes:
        field: The :class:`RunOptions` field; the flag is its name with dashes
            (``tile_size``: ``--tile-size``), the Processing parameter its flag in capitals
            (``TILE_SIZE``).
        help: What the option does: the same words on every surface (the CLI's
            ``--help``, the OGC API's description, the web page's and the Processing
            dialog's tooltips).
        label: A short label for dialogs and forms ("Tile size (px)").
        settings: More ``add_argument`` keywords for the command line (``metavar``...).
        name: The flag where it is not the field's name with dashes.
        choices: The values it may take (the type's values: None may also mean "auto").
        minimum: The smallest value a number may take.
        maximum: The largest value a number may take.
        advanced: Shown among the advanced parameters of a dialog.
        surfaces: Where the option is offered (:data:`SURFACES`).
        cli_note: Words only the command line adds (its own syntax, e.g. ``2G``).
        kind: The value's type: ``bool``, ``int``, ``float`` or ``str`` (from the field's
            annotation).
        default: The field's default.
    """

    field: str
    help: str
    label: str = ""
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    name: str | None = None
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    advanced: bool = False
    surfaces: frozenset[str] = SURFACES
    cli_note: str = ""
    kind: type = str
    default: Any = None

    @property
    def flag(self) -> str:
        """The flag, e.g. ``--product-level``."""
        return self.name or "--" + self.field.replace("_", "-")

    @property
    def key(self) -> str:
        """The Processing parameter's name, e.g. ``PRODUCT_LEVEL`` (``MAX_MEMORY``).

        A flag that turns an option off (``--no-reflectance-check``) names the option's
        own parameter (``CHECK_REFLECTANCE``, ticked by default).
        """
        if self.flag.startswith("--no-"):
            return self.field.upper()
        return self.flag.lstrip("-").replace("-", "_").upper()

    def offered(self, surface: str) -> bool:
        """Whether ``surface`` (one of :data:`SURFACES`) offers this option."""
        return surface in self.surfaces


def option(default: Any, help: str, label: str, **declared: Any) -> Any:
    """Declare a :class:`RunOptions` field: its default and what every surface shows.

    Args:
        default: The field's default.
        help: What the option does (:attr:`RunFlag.help`).
        label: Its short label (:attr:`RunFlag.label`).
        declared: More of :class:`RunFlag` (``choices``, ``minimum``, ``advanced``...).
    """
    flag = RunFlag("", help, label, **declared)
    return dataclasses.field(default=default, metadata={_DECLARATION: flag})


@dataclass
class RunOptions:
    """How to read an input and run a model on it.

    Each field's help, label, bounds and surfaces are its declaration (:func:`option`);
    ``cloudseg segment --help`` lists them. What the values mean in the engine:
    ``batch_size`` None picks the runner's fastest, ``tile_size`` and ``overlap`` None
    take the model card's (:meth:`tiling`), ``cloud_threshold`` and
    ``shadow_threshold`` None decide by the most probable class (:mod:`.decision`),
    ``runtime`` is planned by :func:`cloudseg.backend.inference.runners.plan_runner`, and
    ``max_memory_mib`` by :func:`cloudseg.backend.inference.engine.memory_plan`.
    """

    model: str | None = option(
        None, "built-in model name (see 'cloudseg models') or a model file", "Model"
    )
    bands: list[str] | None = option(
        None,
        "band names in file order, e.g. B04,B03,B02,B08 (overrides the file's band descriptions)",
        "Bands",
    )
    product_level: str | None = option(
        None,
        "the product level, L1C or L2A (default: from metadata, else L1C); the L1C and L2A "
        "models give different masks",
        "Product level",
        choices=("L1C", "L2A"),
        settings={"type": str.upper},
    )
    scale: float | None = option(
        None,
        "reflectance per digital number (default: from metadata, else 0.0001 for S2 DN)",
        "Scale",
        advanced=True,
    )
    offset: float | None = option(
        None,
        "reflectance added after scaling (e.g. -0.1 for baseline >= 04.00 products outside SAFE)",
        "Offset",
        advanced=True,
    )
    device: str = option(
        "auto",
        "auto: a CUDA GPU when torch sees one, else the CPU",
        "Device",
        choices=DEVICES,
        surfaces=SURFACES - {"web"},  # the page runs on the server's own choice
    )
    precision: str = option(
        "auto",
        "auto: bf16 where the hardware computes it natively (GPUs; CPUs with "
        "AVX512-BF16/AMX, through OpenVINO), about 1.6x faster there; fp32: full-precision "
        "results, the model itself",
        "Precision",
        choices=PRECISIONS,
        advanced=True,
    )
    runtime: str = option(
        "auto",
        "auto: torch on a CUDA GPU, OpenVINO on CPUs with native bf16, onnxruntime elsewhere",
        "Runtime",
        choices=RUNTIMES,
        advanced=True,
        cli_note="'cloudseg info' says which runs here",
    )
    batch_size: int | None = option(
        None,
        "tiles per model call (default: 16 on a GPU, 4 with OpenVINO, 1 otherwise)",
        "Tiles per model call",
        minimum=1,
        maximum=MAX_INTEGER,
        advanced=True,
        surfaces=SURFACES - {"web"},
        settings={"metavar": "N"},
    )
    tta: bool = option(
        False,
        "test-time augmentation: average flips and rotation (4x slower)",
        "Test-time augmentation",
    )
    tile_size: int | None = option(
        None,
        "tile edge in pixels, a multiple of 32 (default: the model card's; the built-in "
        "models were measured best at their 256)",
        "Tile size (px)",
        minimum=64,
        maximum=MAX_INTEGER,
        advanced=True,
        surfaces=SURFACES - {"web"},
        settings={"metavar": "PX"},
    )
    overlap: int | None = option(
        None,
        "pixels shared by neighbouring tiles, at most half a tile (default: the model card's)",
        "Tile overlap (px)",
        minimum=0,
        maximum=MAX_INTEGER,
        advanced=True,
        surfaces=SURFACES - {"web"},
        settings={"metavar": "PX"},
    )
    resolution: str = option(
        "native",
        "native: run on the input's own grid, most accurate; preview: run at the model "
        "card's resolution (30 m for the built-in models), about 9x faster on 10 m input "
        "but coarser",
        "Run at",
        choices=RESOLUTIONS,
        advanced=True,
        settings={"type": _resolution},
    )
    cloud_threshold: float | None = option(
        None,
        "sensitivity: a pixel is cloud from this cloud probability on (0-1; lower masks "
        "more cloud). Default: the most probable class (see docs/valid-pixels.md)",
        "Cloud from probability",
        minimum=0.0,
        maximum=1.0,
        advanced=True,
        settings={"metavar": "P"},
    )
    shadow_threshold: float | None = option(
        None,
        "sensitivity for shadow, among the pixels that are not cloud (0-1). Default: the "
        "most probable class",
        "Shadow from probability",
        minimum=0.0,
        maximum=1.0,
        advanced=True,
        settings={"metavar": "P"},
    )
    shadow_geometry: bool = option(
        False,
        "keep shadow only where a cloud of the scene can cast it along the sun's direction "
        "(sun angles from the product, else estimated from the scene); " + SHADOW_GEOMETRY_EFFECT,
        "Shadows only where a cloud can cast them",
    )
    max_memory_mib: float = option(
        DEFAULT_MAX_MEMORY_MIB,
        "budget for the run's peak memory, MiB; a scene too wide for it runs in column "
        "blocks, with the same result, and a run that cannot fit is refused before the "
        "model loads",
        "Memory budget (MiB)",
        minimum=1.0,
        advanced=True,
        # The server's operator decides the memory budget (``cloudseg serve``'s own flag).
        surfaces=SURFACES - {"server", "web"},
        name="--max-memory",
        cli_note="e.g. 2G (default) or 1500M",
        settings={"metavar": "SIZE", "type": memory_size},
    )

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
        min_polygon_area_m2: Polygons smaller than this are left out (declared with
            :func:`option`, as are ``check_reflectance`` and the buffers: their help is
            the declaration's).
        check_reflectance: See ``raster.reader.check_reflectance``.
        keep_runner: Keep the loaded model for the next run in this process (a batch
            worker segments many scenes with one model).
        valid: Also write the valid-pixel mask here (1 usable, 0 cloud, shadow or their
            buffer, 255 no data; see ``inference.valid``).
        buffer_cloud_m: See ``inference.valid``.
        buffer_shadow_m: See ``inference.valid``.
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
    min_polygon_area_m2: float = option(
        0.0,
        "leave out cloud and shadow polygons smaller than this, m²",
        "Smallest polygon kept (m²)",
        minimum=0.0,
        name="--min-area",
        cli_note="default 0",
        settings={"metavar": "M2"},
    )
    check_reflectance: bool = option(
        True,
        "refuse values that are not plausible reflectance after scaling (values no real "
        "scene has, e.g. a scale 10x off): a wrong scale gives a confident wrong mask; off "
        "makes it a warning",
        "Refuse implausible reflectance",
        advanced=True,
        name="--no-reflectance-check",
        cli_note="this flag turns the check off",
    )
    keep_runner: bool = False
    valid: Path | None = None
    buffer_cloud_m: float = option(
        choices.DEFAULT_BUFFER_CLOUD_M,
        f"buffer grown around cloud in the valid mask, metres (default "
        f"{choices.DEFAULT_BUFFER_CLOUD_M:g}: Fmask's 3 pixels of 30 m)",
        "Cloud buffer (m)",
        minimum=0.0,
        name="--buffer-cloud",
        settings={"metavar": "M"},
    )
    buffer_shadow_m: float = option(
        choices.DEFAULT_BUFFER_SHADOW_M,
        f"buffer grown around cloud shadow in the valid mask, metres (default "
        f"{choices.DEFAULT_BUFFER_SHADOW_M:g})",
        "Shadow buffer (m)",
        minimum=0.0,
        name="--buffer-shadow",
        settings={"metavar": "M"},
    )
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


# -- the declarations, and the command line --------------------------------------------------
def _value_type(hint: Any) -> type:
    """The type of one value of a field: ``int | None`` is int, ``list[str]`` is str."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(h for h in typing.get_args(hint) if h is not type(None))
    if typing.get_origin(hint) is list:
        return str  # a list is given as comma-separated text (the band list)
    return hint


def declared_options(
    kind: type[RunOptions] | None = None, own: bool = False
) -> tuple[RunFlag, ...]:
    """The declarations of ``kind``'s run options (default :class:`RunOptions`), in order.

    ``kind`` may be a subclass that declares more options with :func:`option`: each
    surface's generator takes such a tuple (how a test adds an option). ``own``: only
    those the subclass adds (:data:`SEGMENT_FLAGS`).
    """
    kind = kind or RunOptions
    inherited = {f.name for f in dataclasses.fields(RunOptions)} if own else set()
    hints = typing.get_type_hints(kind)
    return tuple(
        dataclasses.replace(
            f.metadata[_DECLARATION],
            field=f.name,
            kind=_value_type(hints[f.name]),
            default=f.default,
        )
        for f in dataclasses.fields(kind)
        if _DECLARATION in f.metadata and f.name not in inherited
    )


#: Every run option's declaration, in the order ``--help`` and the dialogs list them.
RUN_FLAGS = declared_options()
#: The declarations of what ``cloudseg segment`` adds to a run: its outputs' settings.
SEGMENT_FLAGS = declared_options(SegmentOptions, own=True)


def declaration(field: str) -> RunFlag:
    """The declaration of one run option, by its field name (``"tta"``)."""
    return next(f for f in RUN_FLAGS if f.field == field)


def cli_help(flag: RunFlag) -> str:
    """The command line's help of one option: its help, the CLI's note and the default."""
    text = flag.help + (f"; {flag.cli_note}" if flag.cli_note else "")
    if flag.choices is not None and flag.default is not None:
        text += " (default %(default)s)"
    return text


def add_run_flags(
    parser: argparse.ArgumentParser,
    *,
    model_required: bool = False,
    defaults: dict[str, Any] | None = None,
    only: tuple[str, ...] | None = None,
    flags: tuple[RunFlag, ...] | None = None,
    title: str = "how the model runs",
) -> None:
    """Add the run flags (:data:`RUN_FLAGS`) to a command that runs a model.

    Args:
        parser: The command's parser.
        model_required: ``--model`` must be given (the command has no automatic choice).
        defaults: Field defaults other than the declared ones for this command (e.g.
            ``{"precision": "fp32"}`` to measure the model itself).
        only: Add just these fields' flags (a command that runs a fixed setup).
        flags: The declarations (default :data:`RUN_FLAGS`; :data:`SEGMENT_FLAGS` for
            ``cloudseg segment``'s output settings).
        title: The help's heading for these flags.
    """
    from ..models.registry import preview_cost

    group = parser.add_argument_group(title)
    for run_flag in flags or RUN_FLAGS:
        if (only is not None and run_flag.field not in only) or not run_flag.offered("cli"):
            continue
        text = cli_help(run_flag)
        if run_flag.field == "resolution" and (cost := preview_cost()):
            text += f"; {cost}"
        settings: dict[str, Any] = {}
        if run_flag.kind is bool:  # a flag turns an option on, or one that is on off
            settings["action"] = "store_false" if run_flag.default else "store_true"
        else:
            settings["type"] = run_flag.kind
        if run_flag.choices is not None:
            settings["choices"] = run_flag.choices
        settings |= run_flag.settings
        if run_flag.field == "model" and model_required:
            settings["required"] = True
        elif run_flag.field == "model":
            text += "; default: the best built-in model for the input"
        default = (defaults or {}).get(run_flag.field, run_flag.default)
        group.add_argument(
            run_flag.flag, dest=run_flag.field, default=default, help=text, **settings
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

    values = {
        f.field: getattr(args, f.field) for f in declared_options(kind) if hasattr(args, f.field)
    }
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
