"""The server's processes, ``segment`` and ``explain``: their inputs, and how a job runs them.

One owner for what a request may ask: each process's inputs are the options of the
command it runs, described once here as JSON Schema. The run options come from their
declarations (:data:`cloudseg.backend.inference.options.RUN_FLAGS`: same names, help,
labels, bounds, choices and parsing; :func:`run_inputs`), so the OGC API's process
description, the web page's controls, ``cloudseg segment --help`` and the QGIS dialog say
the same thing. :func:`parse_inputs` turns a request's
inputs into the options the engine takes, refusing unknown or malformed ones in one line.

A job runs the engine's own functions (:func:`cloudseg.backend.inference.segment.segment`,
:func:`cloudseg.backend.inference.explain.explain`) into its folder, so the mask a job
returns is the one ``cloudseg segment`` writes for the same file and options.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import choices
from ..errors import CloudsegError, InputError
from ..inference.options import RUN_FLAGS, RunFlag, RunOptions, SegmentOptions
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
        schema: JSON Schema of the value.
        parse: Turns a request's value into the option's value (raises ValueError,
            TypeError or argparse.ArgumentTypeError for a bad one).
        required: The process cannot run without it.
    """

    name: str
    title: str
    description: str
    schema: dict[str, Any]
    parse: Any = None
    required: bool = False


#: Bounds on what one request may carry (a request is parsed before it waits in line).
MAX_TEXT = 4096  # a path or a signed URL
MAX_BANDS_TEXT = 256  # "B01,B02,...,B12" is 51
MAX_ITEMS = 16


def run_input(flag: RunFlag) -> Input:
    """The OGC input of one run option, from its declaration (same help, bounds, choices)."""
    title = flag.label
    if flag.kind is bool:
        schema: dict[str, Any] = {"type": "boolean", "default": bool(flag.default)}
        return Input(flag.field, title, flag.help, schema, _bool)
    parse = flag.settings.get("type", flag.kind)
    if flag.choices is not None:
        schema = {"type": "string", "enum": list(flag.choices)}
    elif flag.kind in (int, float):
        schema = {"type": "integer" if flag.kind is int else "number"}
        schema |= {k: v for k, v in (("minimum", flag.minimum), ("maximum", flag.maximum))
                   if v is not None}  # fmt: skip
    elif flag.field == "bands":
        schema = {"type": "string", "maxLength": MAX_BANDS_TEXT, "examples": ["B04,B03,B02,B08"]}
    else:
        schema = {"type": "string", "maxLength": MAX_TEXT}
    if flag.default is not None:
        schema["default"] = flag.default
    return Input(flag.field, title, flag.help, schema, parse)


def run_inputs(flags: tuple[RunFlag, ...] = RUN_FLAGS) -> tuple[Input, ...]:
    """The OGC inputs of the run options a request may set (those the server offers)."""
    return tuple(
        Input(i.name, i.title, i.description, {"type": "string", "maxLength": 256}, _model)
        if i.name == "model"
        else i
        for i in (run_input(f) for f in flags if f.offered("server"))
    )


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise TypeError(f"{value!r} is not true or false")


def _extent(value: Any) -> tuple[float, float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise TypeError("give four numbers: left, bottom, right, top")
    return tuple(float(v) for v in value)  # type: ignore[return-value]


def _model(value: Any) -> str | None:
    """A model by name; files on the server are not loaded by request."""
    from ..models.registry import available_models

    if value in (None, "", "auto"):
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
    {"type": "string", "maxLength": MAX_TEXT},
    str,
    required=True,
)
EXTENT = Input(
    "extent",
    "Extent",
    "only this extent, [left, bottom, right, top] in the scene's CRS",
    {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
    _extent,
)
RUN_INPUTS = run_inputs()
SEGMENT_INPUTS = (
    SOURCE,
    *RUN_INPUTS,
    EXTENT,
    Input(
        "check_reflectance",
        "Check reflectance",
        "refuse values that are not plausible reflectance after scaling (a wrong scale "
        "gives a confident wrong mask); false makes it a warning",
        {"type": "boolean", "default": True},
        _bool,
    ),
    Input(
        "buffer_cloud_m",
        "Cloud buffer (m)",
        f"buffer around cloud in the valid mask, metres (default "
        f"{choices.DEFAULT_BUFFER_CLOUD_M:g})",
        {"type": "number", "minimum": 0, "default": choices.DEFAULT_BUFFER_CLOUD_M},
        float,
    ),
    Input(
        "buffer_shadow_m",
        "Shadow buffer (m)",
        f"buffer around cloud shadow in the valid mask, metres (default "
        f"{choices.DEFAULT_BUFFER_SHADOW_M:g})",
        {"type": "number", "minimum": 0, "default": choices.DEFAULT_BUFFER_SHADOW_M},
        float,
    ),
    Input(
        "min_polygon_area_m2",
        "Smallest polygon (m²)",
        "leave out polygons smaller than this, m² (default 0)",
        {"type": "number", "minimum": 0, "default": 0},
        float,
    ),
)
#: Run inputs ``explain`` does not take: a class activation map explains the network
#: itself, before the shadow geometry step (the page's explain job of a segment job
#: with the step explains the same network).
NOT_EXPLAINED = ("shadow_geometry",)
EXPLAIN_INPUTS = (
    SOURCE,
    *(i for i in RUN_INPUTS if i.name not in NOT_EXPLAINED),
    EXTENT,
    Input(
        "classes",
        "Classes",
        "classes to explain, one band each (default: cloud)",
        {
            "type": "array",
            "items": {"type": "string", "maxLength": 64},
            "maxItems": MAX_ITEMS,
            "default": ["cloud"],
        },
        lambda v: [str(c) for c in ([v] if isinstance(v, str) else v)],
    ),
    Input(
        "method",
        "Method",
        "gradcam: Grad-CAM; hirescam: HiResCAM (gradient x activation)",
        {"type": "string", "enum": list(choices.EXPLAIN_METHODS), "default": "gradcam"},
        str,
    ),
)
INPUTS = {"segment": SEGMENT_INPUTS, "explain": EXPLAIN_INPUTS}


def parse_inputs(process: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """A request's inputs as option values, checked.

    Raises:
        InputError: For an unknown input, a missing required one, or a bad value (one
            line naming the input and what it takes).
    """
    if not isinstance(inputs, dict):
        raise InputError("inputs must be an object of name: value")
    known = {i.name: i for i in INPUTS[process]}
    unknown = sorted(set(inputs) - set(known))
    if unknown:
        raise InputError(
            f"unknown input {unknown[0]!r} for {process}; it takes: {', '.join(known)}"
        )
    values = {}
    for name, spec in known.items():
        value = inputs.get(name)
        if value is None or value == "":
            if spec.required:
                raise InputError(f"input {name!r} is required: {spec.description}")
            continue
        _within_schema(name, value, spec.schema)  # before any parsing: its size is bounded
        try:
            values[name] = spec.parse(value) if spec.parse else value
        except (TypeError, ValueError, OverflowError, argparse.ArgumentTypeError) as exc:
            raise InputError(f"input {name!r}: {exc}") from None
        if values[name] is not None:  # None: the default ("auto" model)
            _within_schema(name, values[name], spec.schema)
        enum = spec.schema.get("enum")
        if enum and values[name] not in enum:
            raise InputError(f"input {name!r} must be one of {', '.join(enum)}, not {value!r}")
    if "bands" in values:  # checked now, not after the job waited in line
        from ..raster.bands import parse_band_list

        try:
            parse_band_list(values["bands"])
        except CloudsegError as exc:
            raise InputError(f"input 'bands': {exc}") from None
    return values


def _within_schema(name: str, value: Any, schema: dict[str, Any]) -> None:
    """Refuse a value beyond its schema's bounds: length, items, range, finite, text.

    Raises:
        InputError: One line naming the input and its bound.
    """
    import math

    if schema.get("type") == "string" and not isinstance(value, str):
        raise InputError(f"input {name!r} must be text, not {type(value).__name__}")
    if isinstance(value, str):
        limit = schema.get("maxLength", MAX_TEXT)
        if len(value) > limit:
            raise InputError(f"input {name!r} is {len(value)} characters; at most {limit}")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise InputError(f"input {name!r} holds a control character (such as NUL)")
    elif isinstance(value, (list, tuple)):
        limit = schema.get("maxItems", MAX_ITEMS)
        if len(value) > limit:
            raise InputError(f"input {name!r} has {len(value)} entries; at most {limit}")
        for entry in value:
            _within_schema(name, entry, schema.get("items", {}))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise InputError(f"input {name!r} must be a finite number, not {value}")
        low, high = schema.get("minimum"), schema.get("maximum")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"{low if low is not None else '...'} to {high if high is not None else '...'}"
            raise InputError(f"input {name!r} must be from {bounds}, not {value:g}")
    elif not isinstance(value, (bool, dict)) and value is not None:
        raise InputError(f"input {name!r} cannot be {type(value).__name__}")


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
