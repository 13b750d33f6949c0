"""The server's processes, ``segment`` and ``explain``: their inputs, and how a job runs them.

One owner for what a request may ask: each process's inputs are the options of the
command it runs, each described once here as a pydantic type (:class:`Input`: the
value's type, bounds and conversion). The run options come from their declarations
(:data:`cloudseg.backend.inference.options.RUN_FLAGS`: same names, help, labels, bounds,
choices and parsing; :func:`run_inputs`), so the OGC API's process description, the web
page's controls, ``cloudseg segment --help`` and the QGIS dialog say the same thing.
From the same types come the JSON Schema the process description publishes
(:attr:`Input.schema`) and the pydantic model a request is validated with
(:func:`request_model`: unknown inputs forbidden); :func:`parse_inputs` turns a
request's inputs into the options the engine takes, saying pydantic's first error in
one line that names the input and its bound. pydantic comes with the server's FastAPI
and Gradio (``resources/locks/serve.txt``).

A job runs the engine's own functions (:func:`cloudseg.backend.inference.segment.segment`,
:func:`cloudseg.backend.inference.explain.explain`) into its folder, so the mask a job
returns is the one ``cloudseg segment`` writes for the same file and options.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
)

from .. import choices
from ..errors import CloudsegError, InputError
from ..inference.options import RUN_FLAGS, SEGMENT_FLAGS, RunFlag, RunOptions, SegmentOptions
from .jobs import Job, JobOutcome

#: Names under which each process's result files appear (OGC outputs, downloads).
SEGMENT_FILES = {
    "mask": ("mask.tif", "image/tiff; application=geotiff; profile=cloud-optimized"),
    "probabilities": ("probabilities.tif", "image/tiff; application=geotiff"),
    "uncertainty": ("uncertainty.tif", "image/tiff; application=geotiff"),
    "valid": ("valid.tif", "image/tiff; application=geotiff; profile=cloud-optimized"),
    "polygons": ("polygons.gpkg", "application/geopackage+sqlite3"),
    "polygons_geojson": ("polygons.geojson", "application/geo+json"),
    "statistics": ("statistics.json", "application/json"),
    "stac_item": ("item.json", "application/geo+json"),
}
EXPLAIN_FILES = {
    "cam": ("cam.tif", "image/tiff; application=geotiff"),
}
PREVIEW_TYPE = "image/png"


@dataclass(frozen=True)
class Input:
    """One input of a process.

    Attributes:
        name: The input's id (the option's field name).
        title: A short title for forms.
        description: The help text.
        kind: The value's type, bounds and conversion as pydantic reads them
            (``Annotated[int, Field(ge=64, le=65536)]``): a request's value is validated
            against it (:func:`parse_inputs`) and its JSON Schema is the one the process
            description publishes (:attr:`schema`).
        default: The default the description names (None: none; the engine decides).
        required: The process cannot run without it.
    """

    name: str
    title: str
    description: str
    kind: Any
    default: Any = None
    required: bool = False

    @functools.cached_property
    def schema(self) -> dict[str, Any]:
        """JSON Schema of the value (pydantic's, from :attr:`kind`), with its default."""
        schema = TypeAdapter(self.kind).json_schema()
        return schema if self.default is None else schema | {"default": self.default}


#: Bounds on what one request may carry (a request is checked before it waits in line).
MAX_TEXT = 4096  # a path or a signed URL
MAX_BANDS_TEXT = 256  # "B01,B02,...,B12" is 51
MAX_ITEMS = 16
#: Text without control characters (NUL, line breaks): no path, URL or name holds one.
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"


def text(limit: int = MAX_TEXT, *then: Any, **field: Any) -> Any:
    """Text of at most ``limit`` characters, none a control character; ``then`` converts it."""
    return Annotated[(str, Field(max_length=limit, pattern=PRINTABLE, **field), *then)]


def number(kind: type, minimum: float | None = None, maximum: float | None = None) -> Any:
    """A finite ``int`` or ``float`` within ``minimum`` to ``maximum`` (None: unbounded)."""
    return Annotated[kind, Field(ge=minimum, le=maximum, allow_inf_nan=False)]


def _converted(convert: Any) -> AfterValidator:
    """A validator running ``convert`` on a value within its bounds (its errors: one line)."""

    def run(value: Any) -> Any:
        try:
            return convert(value)
        except (TypeError, ValueError, OverflowError, argparse.ArgumentTypeError,
                CloudsegError) as exc:  # fmt: skip
            raise ValueError(str(exc)) from None

    return AfterValidator(run)


def _spelled(convert: Any) -> BeforeValidator:
    """A validator normalising the spelling of a choice (``l2a``) before it is compared."""
    return BeforeValidator(lambda value: convert(value) if isinstance(value, str) else value)


def run_input(flag: RunFlag) -> Input:
    """The OGC input of one run option, from its declaration (same help, bounds, choices)."""
    kind: Any
    if flag.kind is bool:
        kind = bool
    elif flag.choices is not None:
        spelling = flag.settings.get("type")  # str.upper, older spellings
        kind = Literal[tuple(flag.choices)]
        kind = Annotated[kind, _spelled(spelling)] if spelling else kind
    elif flag.kind in (int, float):
        kind = number(flag.kind, flag.minimum, flag.maximum)
    elif flag.field == "bands":
        kind = text(MAX_BANDS_TEXT, _converted(_band_list), examples=["B04,B03,B02,B08"])
    else:
        kind = text(MAX_TEXT)
    return Input(flag.field, flag.label, flag.help, kind, flag.default)


def run_inputs(flags: tuple[RunFlag, ...] = RUN_FLAGS) -> tuple[Input, ...]:
    """The OGC inputs of the run options a request may set (those the server offers)."""
    return tuple(
        dataclasses.replace(i, kind=text(256, _converted(_model))) if i.name == "model" else i
        for i in (run_input(f) for f in flags if f.offered("server"))
    )


def _band_list(value: str) -> str:
    """Band names checked now (not after the job waited in line); the job parses them."""
    from ..raster.bands import parse_band_list

    parse_band_list(value)
    return value


def _model(value: str) -> str | None:
    """A model by name; files on the server are not loaded by request."""
    from ..models.registry import available_models

    if value in ("", "auto"):
        return None
    names = [m.card.name for m in available_models()]
    if value not in names:
        raise ValueError(f"no model {value!r}; the models here: {', '.join(names)}")
    return str(value)


SOURCE = Input(
    "input",
    "Scene",
    "The scene: a path on the server under its --root folders, an https:// or s3:// URL "
    "(GeoTIFF / COG, SAFE zip, STAC Item), or a file uploaded through the web page.",
    text(MAX_TEXT),
    required=True,
)
EXTENT = Input(
    "extent",
    "Extent",
    "only this extent, [left, bottom, right, top] in the scene's CRS",
    Annotated[list[number(float)], Field(min_length=4, max_length=4), AfterValidator(tuple)],
)
RUN_INPUTS = run_inputs()
SEGMENT_INPUTS = (SOURCE, *RUN_INPUTS, EXTENT, *run_inputs(SEGMENT_FLAGS))
EXPLAIN_INPUTS = (
    SOURCE,
    *(i for i in RUN_INPUTS if i.name not in choices.NOT_EXPLAINED),
    EXTENT,
    Input(
        "classes",
        "Classes",
        "classes to explain, one band each (default: cloud)",
        Annotated[
            list[text(64)],
            Field(max_length=MAX_ITEMS),
            BeforeValidator(lambda v: [v] if isinstance(v, str) else v),  # one class
        ],
        ["cloud"],
    ),
    Input(
        "method",
        "Method",
        "gradcam: Grad-CAM; hirescam: HiResCAM (gradient x activation)",
        Literal[tuple(choices.EXPLAIN_METHODS)],
        "gradcam",
    ),
)
INPUTS = {"segment": SEGMENT_INPUTS, "explain": EXPLAIN_INPUTS}


@functools.cache
def request_model(process: str) -> type[BaseModel]:
    """The pydantic model of a process's request: its inputs, nothing else."""
    fields = {i.name: (i.kind, ... if i.required else None) for i in INPUTS[process]}
    return create_model(f"{process}_inputs", __config__=ConfigDict(extra="forbid"), **fields)


def parse_inputs(process: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """A request's inputs as option values, checked (those it gives; null or "" is not given).

    Raises:
        InputError: For an unknown input, a missing required one, or a bad value (one
            line naming the input and what it takes).
    """
    if not isinstance(inputs, dict):
        raise InputError("inputs must be an object of name: value")
    given = {k: v for k, v in inputs.items() if v is not None and v != ""}
    try:
        request = request_model(process).model_validate(given)
    except ValidationError as exc:
        raise InputError(_first_problem(process, exc.errors())) from None
    return {
        n: getattr(request, n) for n in type(request).model_fields if n in request.model_fields_set
    }


#: What a value of each kind is, for "must be ..." (pydantic's error types).
_EXPECTED = {"string": "text", "int": "a whole number", "float": "a number",
             "bool": "true or false", "list": "a list"}  # fmt: skip


def _first_problem(process: str, errors: list[Any]) -> str:
    """The first of pydantic's errors as one line naming the input and its bound.

    An unknown input is said first, then a missing one, then the others in input order.
    """
    inputs = {i.name: i for i in INPUTS[process]}
    order = list(inputs)

    def rank(error: Any) -> tuple[int, int]:
        name = error["loc"][0] if error["loc"] else ""
        first = {"extra_forbidden": 0, "missing": 1}.get(error["type"], 2)
        return first, order.index(name) if name in order else len(order)

    error = min(errors, key=rank)
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    name = str(error["loc"][0]) if error["loc"] else ""
    schema = inputs[name].schema if name in inputs else {}
    if kind == "extra_forbidden":
        return f"unknown input {name!r} for {process}; it takes: {', '.join(order)}"
    if kind == "missing":
        return f"input {name!r} is required: {inputs[name].description}"
    if kind == "string_too_long":
        return f"input {name!r} is {len(value)} characters; at most {ctx['max_length']}"
    if kind in ("too_long", "too_short"):
        fewest, most = schema.get("minItems"), schema.get("maxItems")
        takes = f"at most {most}" if kind == "too_long" else f"at least {fewest}"
        takes = f"it takes {most}" if fewest == most else takes
        return f"input {name!r} has {ctx.get('actual_length')} entries; {takes}"
    if kind == "string_pattern_mismatch":
        return f"input {name!r} holds a control character (such as NUL)"
    if kind == "finite_number":
        return f"input {name!r} must be a finite number, not {value}"
    low, high = schema.get("minimum"), schema.get("maximum")
    if kind in ("greater_than_equal", "less_than_equal", "int_parsing_size"):
        bounds = f"{'...' if low is None else low} to {'...' if high is None else high}"
        return f"input {name!r} must be from {bounds}, not {_shown(value)}"
    if kind == "literal_error":
        return f"input {name!r} must be one of {', '.join(schema['enum'])}, not {_shown(value)}"
    if kind in ("value_error", "assertion_error"):
        return f"input {name!r}: {ctx.get('error', error['msg'])}"
    expected = next((v for k, v in _EXPECTED.items() if kind.startswith(f"{k}_")), None)
    if expected:
        return f"input {name!r} must be {expected}, not {_shown(value)}"
    return f"input {name!r}: {error['msg']}"


def _shown(value: Any) -> str:
    """A value as a message quotes it: short scalars as written, anything else by its type."""
    if isinstance(value, (str, int, float)) and len(shown := repr(value)) <= 40:
        return shown
    return type(value).__name__


def _option_fields(values: dict[str, Any], besides: tuple[str, ...]) -> dict[str, Any]:
    """The run-option fields of a job's inputs (all but ``besides``), band list parsed."""
    from ..raster.bands import parse_band_list

    fields = {k: v for k, v in values.items() if k not in besides}
    if "bands" in fields:
        fields["bands"] = parse_band_list(fields["bands"])
    return fields


def item_id(source: str, job_id: str) -> str:
    """A job's STAC Item id, its own: the scene's name and a digest of the job's id.

    The job's id is its key (whoever holds it reads and dismisses the job), so the
    Item, which travels (collected into catalogs), carries a digest of it, not the id.
    """
    import hashlib

    from ..atomic import safe_name
    from ..raster.reader import scene_key

    digest = hashlib.sha256(job_id.encode()).hexdigest()[:12]
    return f"{safe_name(scene_key(source.split('?', 1)[0]))}-{digest}"


def segment_options(values: dict[str, Any], folder: Path) -> SegmentOptions:
    """The options of a segment job writing every result into ``folder`` (named by its id)."""
    fields = _option_fields(values, ("input", "extent"))
    return SegmentOptions(
        **fields,
        stac_item_id=item_id(values["input"], folder.name),
        bounds=values.get("extent"),
        probabilities=folder / SEGMENT_FILES["probabilities"][0],
        uncertainty=folder / SEGMENT_FILES["uncertainty"][0],
        valid=folder / SEGMENT_FILES["valid"][0],
        polygons=folder / SEGMENT_FILES["polygons"][0],
        stats=folder / SEGMENT_FILES["statistics"][0],
        stac_item=folder / SEGMENT_FILES["stac_item"][0],
        keep_runner=True,  # the next job with this model starts at once
    )


def _scene(job: Job, progress: Any) -> str:
    """The job's scene as the engine reads it: a remote raster is downloaded first.

    STAC Items (files and URLs) go to the engine as they are; it reads their assets.
    """
    from ..raster.stac_input import is_item_input
    from ..store.storage import REMOTE_SCHEMES, fetch_scene

    source = job.inputs["input"]
    if source.startswith(REMOTE_SCHEMES) and not is_item_input(source):
        progress(0.0, "downloading the scene")
        return fetch_scene(source, job.folder)
    return source


def _readable(scene: str, folder: Path) -> str:
    """What the scene reader opens for ``scene``: a STAC Item's assets (as segment reads them)."""
    from ..raster.stac_input import is_item_input, local_source, read_item

    if not is_item_input(scene):
        return scene
    (folder / "input").mkdir(exist_ok=True)
    return local_source(read_item(scene), folder / "input")


def run_segment(job: Job, progress: Any, cancelled: Any) -> JobOutcome:
    """Run ``segment`` for a job: the CLI's outputs, a GeoJSON of the polygons, previews."""
    from ..inference.segment import load_classes, segment
    from .render import geojson_from_gpkg, segment_previews

    values = job.inputs
    scene = _scene(job, progress)
    options = segment_options(values, job.folder)
    mask = job.folder / SEGMENT_FILES["mask"][0]
    result = segment(
        scene,
        mask,
        options,
        progress=lambda p, m: progress(p * 0.9, m),
        cancelled=cancelled,
    )
    files = {name: job.folder / file for name, (file, _) in SEGMENT_FILES.items()}
    geojson_from_gpkg(files["polygons"], files["polygons_geojson"])
    progress(92.0, "drawing the previews")
    files |= segment_previews(_readable(scene, job.folder), options, files, job.folder)
    summary = {
        "model": result.model,
        "runner": result.runner,
        "seconds": result.seconds,
        "width": result.width,
        "height": result.height,
        "class_percent": result.class_percent,
        "usable_percent": result.usable_percent,
        "polygon_counts": result.polygon_counts,
        "warnings": result.warnings,
        "model_accuracy": _accuracy(result.model),
        "product_level": result.product_level,
        "classes": load_classes(mask),
        "shadow_geometry": result.shadow_geometry,
        "accounting": result.accounting,
    }
    return JobOutcome(files, summary)


def run_explain(job: Job, progress: Any, cancelled: Any) -> JobOutcome:
    """Run ``explain`` for a job: the class activation maps and a preview of the first."""
    from ..inference.explain import explain
    from .render import cam_preview

    values = job.inputs
    fields = _option_fields(values, ("input", "extent", "classes", "method"))
    output = job.folder / EXPLAIN_FILES["cam"][0]
    result = explain(
        _readable(_scene(job, progress), job.folder),
        output,
        classes=values.get("classes") or ["cloud"],
        method=values.get("method", "gradcam"),
        bounds=values.get("extent"),
        progress=lambda p, m: progress(p * 0.95, m),
        cancelled=cancelled,
        options=RunOptions(**fields),
    )
    files = {"cam": output} | cam_preview(output, job.folder)
    summary = {k: v for k, v in result.to_dict().items() if k != "output"}
    return JobOutcome(files, summary)


RUNNERS = {"segment": run_segment, "explain": run_explain}


def _accuracy(model: str) -> str:
    """The model's measured accuracy, one line (its card's headline)."""
    from ..models.registry import load_model

    try:
        return load_model(model).card.headline() or "not measured"
    except Exception:  # the run used it, so this cannot fail for want of the model
        return "not measured"


def media_type(process: str, name: str) -> str:
    """The media type of one of a process's result files."""
    files = SEGMENT_FILES if process == "segment" else EXPLAIN_FILES
    return files[name][1] if name in files else PREVIEW_TYPE


def describe_statistics(summary: dict[str, Any]) -> str:
    """The shares of a segment job's summary, one line (``cloud 12.3 %, ...``)."""
    shares = ", ".join(f"{k} {v:.1f} %" for k, v in summary.get("class_percent", {}).items())
    usable = summary.get("usable_percent")
    return shares + (f"; usable {usable:.1f} %" if usable is not None else "")


def dumps(data: Any) -> str:
    """JSON for responses (paths as strings)."""
    return json.dumps(data, default=str, indent=2)
