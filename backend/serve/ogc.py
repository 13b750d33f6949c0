"""OGC API - Processes, served by pygeoapi, with cloudseg's job queue as its manager.

pygeoapi (the OGC reference implementation in Python) answers the standard's requests:
the landing page, ``/conformance``, ``/openapi``, ``/processes`` with each process's
inputs and outputs described, ``/processes/{id}/execution`` (synchronous by default,
asynchronous with ``Prefer: respond-async``), ``/jobs/{id}`` with status and progress,
``/jobs/{id}/results``, and dismissal (``DELETE /jobs/{id}``), as JSON and HTML.
cloudseg supplies the processes (their descriptions from :mod:`.processes`) and the
process manager (:class:`QueueManager`): jobs go to the server's one
:class:`.jobs.JobQueue`, with random ids, so the web page's jobs and the API's wait in one
line. Results are links to the job's files (COGs, GeoPackage, GeoJSON, PNG previews)
under ``/files/{job}/{name}`` and the statistics as values.

Jobs are private: ``GET /jobs`` lists none (the job list is an optional conformance
class), a job is reached by its id only.

pygeoapi reads its configuration and OpenAPI document from files named by environment
variables when its Starlette app is imported; :func:`ogc_app` writes both into the
server's work folder first.
"""

from __future__ import annotations

import logging
import os
from http import HTTPStatus
from pathlib import Path
from typing import Any

import yaml
from pygeoapi.process.base import (
    BaseProcessor,
    JobNotFoundError,
    JobResultNotFoundError,
    ProcessorExecuteError,
)
from pygeoapi.process.manager.base import BaseManager
from pygeoapi.util import JobStatus, RequestedProcessExecutionMode

from .._version import __version__
from ..errors import CloudsegError
from . import processes
from .jobs import DISMISSED, SUCCESSFUL, Job, JobQueue, QueueFullError, UnknownJobError

#: Where the OGC API is mounted on the server.
PREFIX = "/ogc"
#: Where job files are served (outside pygeoapi: plain file responses).
FILES_PREFIX = "/files"

#: The server this process serves (set by :func:`attach`; pygeoapi makes its manager
#: and processors from their class names, so they find the queue here).
_SERVER: dict[str, Any] = {}


class BadInputError(ProcessorExecuteError):
    """A request's input that cannot be used: HTTP 400 with cloudseg's one line."""

    http_status_code = HTTPStatus.BAD_REQUEST
    ogc_exception_code = "InvalidParameterValue"


class BusyError(ProcessorExecuteError):
    """The queue is full: HTTP 429, with ``Retry-After`` (see :func:`request_shape`)."""

    http_status_code = HTTPStatus.TOO_MANY_REQUESTS
    ogc_exception_code = "ServerBusy"


def attach(queue: JobQueue, config: Any, base_url: str, uploads: Path | None = None) -> None:
    """Give the OGC face the server's queue, configuration, address and uploads folder."""
    _SERVER.update(queue=queue, config=config, base_url=base_url, uploads=uploads)


def _metadata(process: str) -> dict[str, Any]:
    """A process's description (OGC process description), from :mod:`.processes`."""
    inputs = {
        i.name: {
            "title": i.title,
            "description": i.description,
            "schema": i.schema,
            "minOccurs": 1 if i.required else 0,
            "maxOccurs": 1,
        }
        for i in processes.INPUTS[process]
    }
    files = processes.SEGMENT_FILES if process == "segment" else processes.EXPLAIN_FILES
    outputs = {
        name: {
            "title": name.replace("_", " "),
            "description": f"link to the job's {file}",
            "schema": {"type": "string", "format": "uri", "contentMediaType": media},
        }
        for name, (file, media) in files.items()
    }
    outputs["summary"] = {
        "title": "summary",
        "description": "model, runner, seconds and, for segment, class and usable percentages "
        "and the model's measured accuracy",
        "schema": {"type": "object", "contentMediaType": "application/json"},
    }
    if process == "segment":
        title = "Segment clouds and cloud shadows"
        description = (
            "Classify every pixel of a Sentinel-2 scene as clear, cloud or cloud shadow "
            "(as cloudseg segment): a class COG, probabilities, the model's doubt, the "
            "valid-pixel mask, polygons and statistics."
        )
    else:
        title = "Explain the model (Grad-CAM)"
        description = (
            "Class activation maps (Grad-CAM or HiResCAM) on the scene's grid, 0-1 per "
            "class (as cloudseg explain): where the model looked."
        )
    return {
        "version": __version__,
        "id": process,
        "title": {"en": title},
        "description": {"en": description},
        "jobControlOptions": ["sync-execute", "async-execute"],
        "keywords": ["cloud", "cloud shadow", "Sentinel-2", "segmentation"],
        "inputs": inputs,
        "outputs": outputs,
        "example": {"inputs": {"input": "scene.tif", "resolution": "native"}},
    }


class SegmentProcessor(BaseProcessor):
    """The ``segment`` process (run by :class:`QueueManager`, not by pygeoapi)."""

    def __init__(self, processor_def: dict[str, Any]) -> None:
        super().__init__(processor_def, _metadata("segment"))

    def execute(self, data: dict[str, Any], outputs: Any = None) -> tuple[str, Any]:
        """Run through the queue (pygeoapi's own handlers are not used)."""
        raise ProcessorExecuteError(user_msg="run through the cloudseg job queue")


class ExplainProcessor(SegmentProcessor):
    """The ``explain`` process."""

    def __init__(self, processor_def: dict[str, Any]) -> None:
        BaseProcessor.__init__(self, processor_def, _metadata("explain"))


def result_document(job: Job, base_url: str) -> dict[str, Any]:
    """A successful job's results: links to its files, and its summary as a value."""
    document: dict[str, Any] = {
        name: {
            "href": f"{base_url}{FILES_PREFIX}/{job.id}/{name}",
            "type": processes.media_type(job.process, name),
        }
        for name in job.files
    }
    document["summary"] = job.summary
    return document


class QueueManager(BaseManager):
    """pygeoapi's process manager over the server's :class:`.jobs.JobQueue`."""

    def __init__(self, manager_def: dict[str, Any]) -> None:
        super().__init__(manager_def)
        self.is_async = True
        self.supports_subscribing = False  # no callbacks to other servers

    @property
    def queue(self) -> JobQueue:
        """The server's queue."""
        return _SERVER["queue"]

    def submit(self, process_id: str, data: dict[str, Any]) -> Job:
        """Check a request's inputs and queue its job.

        Raises:
            BadInputError: For inputs the process cannot take (one line).
        """
        try:
            values = processes.parse_inputs(process_id, data)
            values["input"] = _SERVER["config"].resolve_input(
                values["input"], _SERVER.get("uploads")
            )
        except CloudsegError as exc:
            raise BadInputError(user_msg=str(exc)) from None
        try:
            return self.queue.submit(process_id, values, processes.RUNNERS[process_id])
        except QueueFullError as exc:
            raise BusyError(user_msg=str(exc)) from None

    def execute_process(
        self,
        process_id: str,
        data_dict: dict[str, Any],
        execution_mode: Any = None,
        requested_outputs: Any = None,
        subscriber: Any = None,
        requested_response: Any = "raw",
    ) -> tuple[str, str, Any, JobStatus, dict[str, str] | None]:
        """Queue the job; wait for it unless the client prefers ``respond-async``."""
        job = self.submit(process_id, data_dict)
        if execution_mode == RequestedProcessExecutionMode.respond_async:
            headers = {"Preference-Applied": "respond-async"}
            return job.id, "application/json", None, JobStatus.accepted, headers
        self.queue.wait(job)
        headers = {"Preference-Applied": "wait"} if execution_mode else None
        if job.status != SUCCESSFUL:
            raise BadInputError(user_msg=job.message)
        document = result_document(job, _SERVER["base_url"])
        return job.id, "application/json", document, JobStatus.successful, headers

    def _job(self, job_id: str) -> Job:
        try:
            job = self.queue.get(job_id)
        except UnknownJobError:
            raise JobNotFoundError(job_id) from None
        if job.status == DISMISSED:
            raise JobNotFoundError(job_id)
        return job

    def get_job(self, job_id: str) -> dict[str, Any]:
        """A job's status as pygeoapi records it (progress, message, place in queue)."""
        job = self._job(job_id)
        return {
            "type": "process",
            "identifier": job.id,
            "process_id": job.process,
            "status": job.status,
            "message": job.message,
            "progress": int(job.progress),
            "created": job.created,
            "started": job.started or job.created,
            "finished": job.finished,
            "updated": job.updated,
            "mimetype": "application/json",
            "location": None,
        }

    def get_jobs(self, status: Any = None, limit: Any = None, offset: Any = None) -> dict:
        """No list: jobs are reached by their ids only."""
        return {"jobs": [], "numberMatched": 0}

    def get_job_result(self, job_id: str) -> tuple[str, Any]:
        """A successful job's result document."""
        job = self._job(job_id)
        if job.status != SUCCESSFUL:
            raise JobResultNotFoundError(job_id)
        return "application/json", result_document(job, _SERVER["base_url"])

    def delete_job(self, job_id: str) -> bool:
        """Dismiss a job: cancel it if it runs or waits, remove its files."""
        try:
            dismissal(job_id)
        except UnknownJobError:
            raise JobNotFoundError(job_id) from None
        return True

    def add_job(self, job_metadata: dict) -> str:
        """Jobs are added through :meth:`execute_process` only."""
        raise NotImplementedError

    def update_job(self, job_id: str, update_dict: dict) -> bool:
        """Jobs are updated by the queue only."""
        raise NotImplementedError


def dismissal(job_id: str) -> dict[str, Any]:
    """Dismiss a job (cancel it, remove its files): OGC API - Processes' status info.

    Raises:
        UnknownJobError: For an unknown or already dismissed job.
    """
    queue: JobQueue = _SERVER["queue"]
    if queue.get(job_id).status == DISMISSED:
        raise UnknownJobError(job_id)
    queue.dismiss(job_id)
    return {
        "jobID": job_id,
        "status": "dismissed",
        "message": "Job dismissed",
        "progress": 100,
        "links": [{"href": f"{_SERVER['base_url']}{PREFIX}/jobs", "rel": "up",
                   "type": "application/json", "title": "The job list"}],
    }  # fmt: skip


def pygeoapi_config(base_url: str) -> dict[str, Any]:
    """Pygeoapi's configuration for the server: two processes, the queue as manager."""
    return {
        "server": {
            "bind": {"host": "127.0.0.1", "port": 0},
            "url": f"{base_url}{PREFIX}",
            "mimetype": "application/json; charset=UTF-8",
            "encoding": "utf-8",
            "languages": ["en-US"],
            "limits": {"default_items": 10, "max_items": 50},
            "map": {"url": "", "attribution": ""},
            "pretty_print": True,
            "manager": {"name": f"{__name__}.QueueManager", "connection": None},
        },
        "logging": {"level": "ERROR"},
        "metadata": {
            "identification": {
                "title": {"en": "cloudseg"},
                "description": {
                    "en": "Cloud and cloud-shadow segmentation of Sentinel-2 imagery "
                    "with deep learning"
                },
                "keywords": {"en": ["cloud", "Sentinel-2", "segmentation"]},
                "keywords_type": "theme",
                "terms_of_service": "",
                "url": "https://github.com/cloudseg/cloudseg",
            },
            "license": {"name": "GPL-2.0-or-later", "url": ""},
            "provider": {"name": "cloudseg", "url": ""},
            "contact": {"name": "cloudseg"},
        },
        "resources": {
            "segment": {"type": "process", "processor": {"name": f"{__name__}.SegmentProcessor"}},
            "explain": {"type": "process", "processor": {"name": f"{__name__}.ExplainProcessor"}},
        },
    }


#: Seconds a client told 429 waits before it tries again.
RETRY_AFTER_S = 60


def request_shape(app: Any) -> Any:
    """Middleware around pygeoapi: an execution's body must be a JSON object, 429s say when.

    pygeoapi reads ``{"inputs": {...}}`` with ``.get``: a JSON array, a string or a
    number as the body raised inside it (HTTP 500). Such a body is answered 400 in one
    line here; pygeoapi reads the same body after it (``BaseHTTPMiddleware`` replays
    it). The body was bounded by the server's guard before it arrives.
    """
    from starlette.middleware.base import BaseHTTPMiddleware

    async def shaped(request: Any, call_next: Any) -> Any:
        if request.method == "POST" and request.url.path.rstrip("/").endswith("/execution"):
            problem = _body_problem(await request.body())
            if problem:
                from starlette.responses import JSONResponse

                code = "InvalidParameterValue"
                return JSONResponse({"type": code, "code": code, "description": problem}, 400)
        response = await call_next(request)
        if response.status_code == 429:
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response

    return BaseHTTPMiddleware(app, dispatch=shaped)


def _body_problem(body: bytes) -> str | None:
    """What is wrong with an execution's body, in one line (None: nothing)."""
    import json

    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return 'the request body is not JSON: send {"inputs": {...}}'
    if not isinstance(document, dict):
        return 'the request body must be a JSON object: {"inputs": {...}}'
    if not isinstance(document.get("inputs", {}), dict):
        return '"inputs" must be an object of name: value'
    return None


class _UserErrorsInOneLine(logging.Filter):
    """pygeoapi logs every refused request with its traceback: a client's error is one line.

    A request the server refuses (bad input, a full queue) is the client's to fix, not
    the server's fault: it is logged as one WARNING line, as the page logs its refusals.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop the traceback of a refusal; keep everything else as it is."""
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, (BadInputError, BusyError)):
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def ogc_app(work: Path, base_url: str) -> Any:
    """The Starlette app of pygeoapi, configured for this server (imported once a process)."""
    from pygeoapi.openapi import get_oas

    config = pygeoapi_config(base_url)
    folder = work / "ogc"
    folder.mkdir(parents=True, exist_ok=True)
    config_path, openapi_path = folder / "pygeoapi-config.yml", folder / "openapi.yml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    openapi_path.write_text(yaml.safe_dump(get_oas(config)), encoding="utf-8")
    os.environ["PYGEOAPI_CONFIG"] = str(config_path)
    os.environ["PYGEOAPI_OPENAPI"] = str(openapi_path)
    from pygeoapi import starlette_app

    logging.getLogger("pygeoapi.api").addFilter(_UserErrorsInOneLine())
    return request_shape(starlette_app.APP)
