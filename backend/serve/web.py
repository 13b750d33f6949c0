"""The web page of ``cloudseg serve``, for people without QGIS (Gradio).

Gradio is the established library for model demos: uploads with a size limit, progress
streamed to the page, downloads, and a page that works in any browser without a build
step. The page is a view over the same job queue and processes as the OGC API
(:mod:`.jobs`, :mod:`.processes`): its option controls are made from the processes'
input descriptions, a run is a queued ``segment`` job (and an ``explain`` job when
Grad-CAM is asked for), the page shows the job's place in the queue and its progress,
and Cancel dismisses it. Results are shown as previews (:mod:`.render`: at most 1024
pixels a side, never the whole raster) and offered as downloads.

What Gradio serves: its file route (``/gradio_api/file=``) answers only for the page's
own copies of published results (:func:`publish`, :class:`PublishedOnly`), never for a
job's folder (the downloaded input, anything not in the result document) nor for an
upload, whose path a job's results name (the STAC Item's ``cloudseg:source``): the page
hands an upload to its job on the server, it never reads it back.

Messages are the engine's and the server's, worded for the command line: the page says
them in its own words (:func:`page_words`: each flag becomes the control that sets it).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from ..errors import CloudsegError
from ..inference.options import RUN_FLAGS, SEGMENT_FLAGS, RunFlag
from . import processes
from .config import ServeConfig
from .jobs import (
    DISMISSED,
    FINISHED,
    SUCCESSFUL,
    Job,
    JobOutcome,
    JobQueue,
    QueueFullError,
    Runner,
    UnknownJobError,
)

logger = logging.getLogger(__name__)

#: Inputs the page does not offer under "Options": the scene, the model and the product
#: level have their own controls, and an extent is a job for the API.
_OWN = ("input", "model", "product_level", "extent")


def page_inputs(
    inputs: tuple[processes.Input, ...] | None = None, flags: tuple[RunFlag, ...] = RUN_FLAGS
) -> list[processes.Input]:
    """The inputs the page offers under "Options".

    All but the page's own controls, and a run option only where its declaration says
    the page offers it.
    """
    hidden = {*_OWN, *(f.field for f in flags if not f.offered("web"))}
    return [s for s in (inputs or processes.SEGMENT_INPUTS) if s.name not in hidden]


#: Seconds between the page's status updates while a job waits or runs.
POLL_SECONDS = 0.5
#: The previews of a segment job the page's tabs show, in their order.
_VIEWS = ("mask", "scene", "cloud_probability", "uncertainty")
#: Downloads, in the order the page lists them.
DOWNLOADS = ("mask", "probabilities", "valid", "uncertainty", "polygons", "polygons_geojson",
             "statistics", "stac_item", "cam")  # fmt: skip
#: What the page shows of a job: the downloads and the previews (nothing else is copied).
SHOWN = (*DOWNLOADS, *(f"preview_{name}" for name in (*_VIEWS, "cam")))
#: The folder, in Gradio's upload folder, of the page's copies of published results.
RESULTS_FOLDER = "results"
#: The label of the page's model control.
MODEL_LABEL = "Model"


# -- what Gradio serves ----------------------------------------------------------------------
def results_folder() -> Path:
    """Where the page's copies of published results live (in Gradio's upload folder)."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()).resolve() / RESULTS_FOLDER


def publish(files: dict[str, Path]) -> dict[str, Path]:
    """The page's own copies of a job's published results, for Gradio to serve.

    Each job's copies go into a folder of their own with a random name under
    :func:`results_folder` (hard links where the file system allows: no second copy of a
    large raster); Gradio's ``delete_cache`` removes them after the server's keep time.
    The copies outlive the job's folder, so what the page shows stays whole whatever
    happens to the job afterwards (a Cancel of the Grad-CAM that followed it, expiry).
    A file the job no longer has (dismissed meanwhile) is left out.
    """
    folder = results_folder() / secrets.token_hex(16)
    folder.mkdir(parents=True)
    copies = {}
    for name, path in files.items():
        if name not in SHOWN:
            continue
        target = folder / path.name
        if _link_or_copy(path, target):
            copies[name] = target
    return copies


def _link_or_copy(path: Path, target: Path) -> bool:
    """Hard-link ``path`` to ``target``, else copy it; False if ``path`` is gone."""
    try:
        os.link(path, target)
    except FileNotFoundError:
        return False
    except OSError:  # another file system, or no hard links there
        try:
            shutil.copy2(path, target)
        except FileNotFoundError:
            return False
    return True


class PublishedOnly:
    """ASGI middleware: Gradio's file route answers only for published results.

    Gradio serves, by absolute path, whatever lies in its upload folder and the
    ``allowed_paths``: uploads (whose paths a job's results name) and, before, every
    job's folder (the downloaded input, files not in the result document) to anyone who
    could name them. This passes a request of that route on only for a file under
    :func:`results_folder` (:func:`publish`'s copies); anything else is ``404`` in one
    line, as for a file that is not there.

    A plain ASGI middleware, not a FastAPI route or dependency (the route is Gradio's,
    in its mounted app) nor Starlette's ``BaseHTTPMiddleware``, which would put every
    request of the page (its streamed queue events, uploads) through its own streams
    only to look at one route's path.

    Args:
        app: The app it guards (Gradio mounted on the server's app).
    """

    #: Gradio's file routes: ``/gradio_api/file=PATH`` and the older ``/gradio_api/file/PATH``.
    ROUTE = re.compile(r"/gradio_api/file[=/](.*)", re.DOTALL)

    def __init__(self, app: Any) -> None:
        self.app = app
        self.folder = results_folder()

    def allowed(self, path: str) -> bool:
        """Whether the file route may answer for the path ``path``."""
        match = self.ROUTE.search(path)
        if match is None:
            return True  # not the file route
        wanted = match[1]
        if not wanted.startswith("/") or "\0" in wanted:
            return False  # URLs (Gradio would fetch them) and relative paths
        real = Path(os.path.realpath(wanted))
        return real.is_relative_to(self.folder) and real != self.folder

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Refuse the file route for anything but a published result."""
        if scope["type"] == "http" and not self.allowed(scope.get("path", "")):
            from starlette.responses import JSONResponse

            await JSONResponse({"detail": "no such file"}, 404)(scope, receive, send)
            return
        await self.app(scope, receive, send)


# -- the page's words ------------------------------------------------------------------------
#: A command-line flag in a message.
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _labels() -> dict[str, str]:
    """The label of each control the page has, by the input it sets."""
    specs = [_LEVEL, *page_inputs()]
    return {"model": MODEL_LABEL} | {spec.name: spec.title for spec in specs}


@functools.cache
def _flag_words() -> dict[str, str]:
    """How the page says each command-line flag a message may name."""
    declared = (*RUN_FLAGS, *SEGMENT_FLAGS)
    flags = {flag.flag: flag.field for flag in declared} | {"--extent": "extent"}
    labels, inputs = _labels(), {spec.name for spec in processes.SEGMENT_INPUTS}
    words = {}
    for flag, field in flags.items():
        if field in labels:
            unticked = " unticked" if flag.startswith("--no-") else ""
            words[flag] = f"“{labels[field]}”{unticked}"
        elif field in inputs:  # an input of the OGC API the page does not offer
            words[flag] = f"the OGC API's {field} input, not on this page"
        else:  # the server's own setting (--max-memory)
            words[flag] = f"the server's {flag} (its operator's setting)"
    return words


def page_words(message: str) -> str:
    """``message`` (the engine's or the server's, worded for the command line) in the page's words.

    The one place the page words messages: each flag becomes the page's control that
    sets it (``--product-level`` is “product level”, ``--no-reflectance-check`` is
    “check reflectance” unticked), an input only the OGC API takes is said so, and a
    flag of the server's operator is named as the server's setting. Anything else,
    ``--root`` and ``--max-upload`` (the server's, named so already), stays as it is.
    """
    words = _flag_words()
    return _FLAG.sub(lambda m: words.get(m[0], m[0]), message)


# -- the page --------------------------------------------------------------------------------
def control(spec: processes.Input) -> Any:
    """A form control for one process input."""
    schema = spec.schema
    common = {"label": spec.title, "info": spec.description, "elem_id": f"option-{spec.name}"}
    if schema.get("type") == "boolean":
        return gr.Checkbox(value=bool(schema.get("default", False)), **common)
    if "enum" in schema:
        choices = [(v, v) for v in schema["enum"]]
        if "default" not in schema:
            choices.insert(0, ("auto (from the scene's metadata)", ""))
        return gr.Dropdown(choices, value=schema.get("default", ""), **common)
    if schema.get("type") in ("number", "integer"):
        return gr.Number(value=schema.get("default"), **common)
    return gr.Textbox(value="", **common)


def _model_choices() -> list[str]:
    from ..models.registry import available_models

    return ["auto", *(m.card.name for m in available_models())]


def _status(queue: JobQueue, job: Job, what: str) -> str:
    place = queue.place(job)
    if place is not None:
        ahead = "next to run" if place == 1 else f"{place - 1} job(s) ahead of it"
        return f"**{what}: waiting** - {ahead}"
    return f"**{what}: {job.progress:.0f} %** - {page_words(job.message)}"


def _follow(queue: JobQueue, job: Job, what: str) -> Iterator[str]:
    """Status lines while ``job`` waits and runs: one at once, then every POLL_SECONDS."""
    yield _status(queue, job, what)
    while not job.done.wait(POLL_SECONDS):
        yield _status(queue, job, what)


class _Clock:
    """When a job of the page's run waited and ran (:meth:`timed` wraps its runner)."""

    def __init__(self) -> None:
        self.submitted: float | None = None
        self.started: float | None = None
        self.ended: float | None = None

    def timed(self, runner: Runner) -> Runner:
        """``runner``, noting when the queue starts and ends it."""

        def run(job: Job, progress: Callable[[float, str], None], cancelled: Any) -> JobOutcome:
            self.started = time.monotonic()
            try:
                return runner(job, progress, cancelled)
            finally:
                self.ended = time.monotonic()

        self.submitted = time.monotonic()
        return run

    @property
    def waited(self) -> float:
        """Seconds in the queue (until now, if it never started)."""
        return (self.started or time.monotonic()) - (self.submitted or time.monotonic())

    @property
    def ran(self) -> float:
        """Seconds it ran (0 if it never started)."""
        if self.started is None:
            return 0.0
        return (self.ended or time.monotonic()) - self.started


def _took(total: float, parts: list[str], waited: float) -> str:
    """``Done in 31.2 s: segmentation 2.1 s, Grad-CAM 28.7 s, 0.4 s waiting in the queue``."""
    if waited >= 0.1:
        parts = [*parts, f"{waited:.1f} s waiting in the queue"]
    return f"**Done** in {total:.1f} s: {', '.join(parts)}"


def _summary_text(summary: dict[str, Any]) -> str:
    legend = " ".join(
        f'<span style="color:{c["color"][:7]}">&#9632;</span> {c["name"]}'
        for c in summary.get("classes", [])
        if c["name"] != "clear"
    )
    lines = [f"**{processes.describe_statistics(summary)}**", f"Mask: {legend}"]
    lines.append(
        f"Model {summary.get('model')} on {summary.get('runner')} "
        f"(the model's run {summary.get('seconds', 0):.1f} s); "
        f"product level {summary.get('product_level')}"
    )
    lines.append(f"Measured accuracy: {summary.get('model_accuracy')}")
    lines += [f"Warning: {page_words(w)}" for w in summary.get("warnings", [])]
    return "\n\n".join(lines)


def build_page(queue: JobQueue, config: ServeConfig) -> gr.Blocks:
    """The page's Blocks, wired to ``queue``."""
    option_specs = page_inputs()
    keep = int(config.keep_seconds)
    with gr.Blocks(
        title="cloudseg",
        analytics_enabled=False,
        delete_cache=(max(1, min(keep // 4, 3600)), keep),  # uploads go after keep_hours
    ) as page:
        gr.Markdown(
            "# cloudseg\nClouds and cloud shadows in Sentinel-2 scenes. Upload a GeoTIFF, "
            "COG or SAFE zip, or name a scene the server can read, and press **Segment**."
        )
        job_ids = gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(
                    label="Scene (GeoTIFF, COG or SAFE zip)",
                    file_types=[".tif", ".tiff", ".zip", ".vrt", ".jp2"],
                    elem_id="scene-upload",
                )
                source = gr.Textbox(
                    label="...or a path on the server, an https:// or s3:// URL, a STAC Item URL",
                    elem_id="scene-source",
                )
                model = gr.Dropdown(_model_choices(), value="auto", label=MODEL_LABEL,
                                    info=_MODEL.description)  # fmt: skip
                level = control(_LEVEL)
                explain = gr.Checkbox(label="also explain the mask (Grad-CAM of cloud)",
                                      elem_id="explain")  # fmt: skip
                with gr.Accordion("Options", open=False):
                    controls = [control(spec) for spec in option_specs]
                with gr.Row():
                    run = gr.Button("Segment", variant="primary", elem_id="run")
                    cancel = gr.Button("Cancel", variant="stop", elem_id="cancel")
            with gr.Column(scale=2):
                status = gr.Markdown("Ready.", elem_id="status")
                with gr.Tabs():
                    with gr.Tab("Mask over the scene"):
                        mask_view = gr.Image(type="filepath", show_label=False,
                                             elem_id="mask-view")  # fmt: skip
                    with gr.Tab("Scene"):
                        scene_view = gr.Image(type="filepath", show_label=False)
                    with gr.Tab("Cloud probability"):
                        probability_view = gr.Image(type="filepath", show_label=False)
                    with gr.Tab("Uncertainty"):
                        uncertainty_view = gr.Image(type="filepath", show_label=False)
                    with gr.Tab("Grad-CAM"):
                        cam_view = gr.Image(type="filepath", show_label=False,
                                            elem_id="cam-view")  # fmt: skip
                summary = gr.Markdown(elem_id="summary")
                downloads = gr.File(label="Downloads", file_count="multiple",
                                    elem_id="downloads")  # fmt: skip
        views = [mask_view, scene_view, probability_view, uncertainty_view, cam_view]

        def segment(
            upload_path: str | None, source_text: str, model_name: str, product_level: str,
            with_cam: bool, *values: Any,
        ) -> Iterator[tuple[Any, ...]]:  # fmt: skip
            clicked = time.monotonic()
            nothing = (None,) * len(views)
            try:
                if upload_path:
                    config.check_upload(Path(upload_path))
                    scene = str(upload_path)
                else:
                    scene = config.resolve_input(source_text or "")
                inputs = {spec.name: v for spec, v in zip(option_specs, values, strict=True)}
                inputs |= {"input": scene, "model": model_name, "product_level": product_level}
                parsed = processes.parse_inputs("segment", inputs)
                clock = _Clock()
                job = queue.submit("segment", parsed, clock.timed(processes.RUNNERS["segment"]))
            except CloudsegError as exc:  # the user's to fix (or a full queue): one line
                message = page_words(str(exc))
                logger.warning("the page refused a run: %s", message)
                raise gr.Error(message, print_exception=False) from None
            ids = [job.id]
            for line in _follow(queue, job, "segment"):
                yield ids, line, *nothing, "", None
            files = publish(job.files) if job.status == SUCCESSFUL else {}
            if job.status != SUCCESSFUL:  # (a Cancel may land as the job ends)
                yield ids, _ended(job), *nothing, "", None
                return
            done = _summary_text(job.summary)
            shown = tuple(files.get(f"preview_{name}") for name in _VIEWS)
            parts, waited = [f"segmentation {clock.ran:.1f} s"], clock.waited
            if with_cam:
                cam_inputs = {k: v for k, v in parsed.items() if k in _CAM_FIELDS}
                cam_clock = _Clock()
                try:
                    runner = cam_clock.timed(processes.RUNNERS["explain"])
                    cam_job = queue.submit("explain", cam_inputs, runner)
                except QueueFullError as exc:  # the mask is kept; say why no Grad-CAM
                    parts.append("Grad-CAM not run: the server is busy")
                    done += f"\n\nGrad-CAM not run: {page_words(str(exc))}"
                else:
                    ids = [job.id, cam_job.id]
                    for line in _follow(queue, cam_job, "Grad-CAM"):
                        yield ids, line, *shown, None, done, _downloads(files)
                    waited += cam_clock.waited
                    if cam_job.status == SUCCESSFUL:
                        files |= publish(cam_job.files)
                        parts.append(f"Grad-CAM {cam_clock.ran:.1f} s")
                    elif cam_job.status == DISMISSED:
                        parts.append(f"Grad-CAM cancelled after {cam_clock.ran:.1f} s; the mask "
                                     "and its downloads are kept")  # fmt: skip
                        done += "\n\nGrad-CAM: cancelled"
                    else:
                        parts.append(f"Grad-CAM failed after {cam_clock.ran:.1f} s")
                        done += f"\n\nGrad-CAM failed: {page_words(cam_job.message)}"
            yield (ids, _took(time.monotonic() - clicked, parts, waited), *shown,
                   files.get("preview_cam"), done, _downloads(files))  # fmt: skip

        def stop(ids: list[str]) -> None:
            """Cancel the run's jobs that have not ended; its own status line says how it ends.

            A job that has ended is left alone: a Cancel during the Grad-CAM stops the
            Grad-CAM and keeps the finished segmentation.
            """
            running = []
            for job_id in ids:
                with contextlib.suppress(UnknownJobError):
                    if queue.get(job_id).status not in FINISHED:
                        running.append(job_id)
            if not running:
                gr.Info("Nothing is running.")
            for job_id in running:
                with contextlib.suppress(UnknownJobError):
                    queue.dismiss(job_id)

        run.click(
            segment,
            inputs=[upload, source, model, level, explain, *controls],
            outputs=[job_ids, status, *views, summary, downloads],
            concurrency_limit=None,  # the job queue, shared with the API, limits runs
            # A click while the last run still ends (a Cancel waits for the job to stop
            # at its next batch of tiles) runs once that run has ended; "once" dropped it.
            trigger_mode="always_last",
        )
        cancel.click(stop, inputs=[job_ids], outputs=None, concurrency_limit=None)
    return page


_LEVEL = next(s for s in processes.SEGMENT_INPUTS if s.name == "product_level")
_MODEL = next(s for s in processes.SEGMENT_INPUTS if s.name == "model")
#: The segment inputs an explain job of the same scene takes.
_CAM_FIELDS = {s.name for s in processes.EXPLAIN_INPUTS}


def _ended(job: Job) -> str:
    if job.status == DISMISSED:
        return "**Cancelled** - nothing was kept."
    return f"**Failed**: {page_words(job.message)}"


def _downloads(files: dict[str, Path]) -> list[str]:
    return [str(files[name]) for name in DOWNLOADS if name in files and files[name].is_file()]
