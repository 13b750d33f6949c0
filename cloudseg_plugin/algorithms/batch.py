"""Processing: segment a folder of scenes on a Dask cluster (``cloudseg:segment_batch``)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from .base import CloudsegAlgorithm
from .options import (
    SERVER_HELP,
    add_model_parameters,
    add_run_parameters,
    add_server_parameters,
    model_value,
    run_help,
    run_values,
)

if TYPE_CHECKING:
    from ...backend.batch_scenes import BatchScene
    from ...backend.remote import RemoteRun
    from ..servers import ServerChoice


class SegmentBatchAlgorithm(CloudsegAlgorithm):
    """Segment every scene of a folder (or list file) with one model, resumable."""

    algorithm_name = "segment_batch"
    display_name = "Segment a folder of scenes (batch, Dask)"
    group_name = "Cloud segmentation"
    group_id = "segmentation"

    INPUT = "INPUT"
    WORKERS = "WORKERS"
    SCHEDULER = "SCHEDULER"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"

    def shortHelpString(self) -> str:
        """Return the help shown beside the dialog."""
        return (
            """Segments every scene in the <b>Folder of scenes</b> (GeoTIFFs, SAFE \
folders or zips, folders of band files; from qgis_process also a list file .txt or a \
STAC ItemCollection .json) into the <b>Output folder</b>: one class raster and one record \
per scene, and manifest.json (scene, status, model, seconds, cloud %, error).

Each scene is one task on a Dask cluster: in this QGIS by default (Workers threads), or \
an existing cluster given as <b>Scheduler</b> (tcp://host:8786 or a scheduler file). \
Running it again skips the scenes already done with the same model and settings; a bad \
scene is reported with its reason and the others are segmented. For a command line on \
a server: cloudseg segment-batch (docs/batch.md).

On a cloudseg server (<b>Server</b>), the scenes run there one after the other, each \
as a job of its own (Workers and Scheduler do not apply); the output folder is written \
by the same rules (the STAC collection.json where QGIS's Python has pystac)."""
            + "\n\n"
            + SERVER_HELP
            + "\n\n"
            + run_help(self)
        )

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        """Declare the parameters and outputs."""
        self.addParameter(
            QgsProcessingParameterFile(
                self.INPUT, "Folder of scenes", QgsProcessingParameterFile.Folder
            )
        )
        add_model_parameters(self)
        add_run_parameters(self)
        workers = QgsProcessingParameterNumber(
            self.WORKERS, "Workers (scenes at a time)", minValue=1, defaultValue=1
        )
        workers.setFlags(workers.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(workers)
        scheduler = QgsProcessingParameterString(
            self.SCHEDULER, "Scheduler of an existing Dask cluster", optional=True
        )
        scheduler.setFlags(scheduler.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(scheduler)
        add_server_parameters(self)
        self.addParameter(
            QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, "Output folder")
        )
        self.addOutput(QgsProcessingOutputFile("MANIFEST", "Manifest (manifest.json)"))
        for key, label in (("DONE", "Scenes segmented"), ("SKIPPED", "Scenes already done"),
                           ("FAILED", "Scenes failed")):  # fmt: skip
            self.addOutput(QgsProcessingOutputNumber(key, label))

    def run_backend(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        """Run the batch with Processing's progress and cancel; report failed scenes."""
        from ...backend.batch import segment_batch
        from ...backend.inference.options import RunOptions, changed_run_options

        run = RunOptions(model=model_value(self, parameters, context),
                         **run_values(self, parameters, context))  # fmt: skip
        options = changed_run_options(run)  # the batch records what differs from defaults
        output = self.parameterAsString(parameters, self.OUTPUT_FOLDER, context)

        def progress(done: int, total: int, record: dict[str, Any]) -> None:
            feedback.setProgress(100.0 * done / max(total, 1))
            text = f"{record['scene']}: {record['status']}"
            if record.get("error"):
                feedback.reportError(f"{text}: {record['error']}")
            else:
                feedback.pushInfo(text)

        def started(dashboard: str | None) -> None:
            if dashboard:
                feedback.pushInfo(f"Dask dashboard: {dashboard}")

        result = segment_batch(
            [self.parameterAsFile(parameters, self.INPUT, context)],
            output,
            options,
            workers=self.parameterAsInt(parameters, self.WORKERS, context),
            scheduler=self.parameterAsString(parameters, self.SCHEDULER, context).strip() or None,
            progress=progress,
            cancelled=feedback.isCanceled,
            on_start=started,
            processes=False,  # QGIS's own interpreter is not a Python to start workers with
        )
        return self.outputs(output, result.manifest, result.counts())

    def outputs(self, output: str, manifest: str, counts: dict[str, int]) -> dict[str, Any]:
        """The algorithm's outputs: the folder, the manifest and the scenes by status."""
        return {
            self.OUTPUT_FOLDER: output,
            "MANIFEST": manifest,
            "DONE": counts.get("done", 0),
            "SKIPPED": counts.get("skipped", 0),
            "FAILED": counts.get("failed", 0),
        }

    def run_on_server(
        self,
        server: ServerChoice,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        """Segment each scene as a job on a cloudseg server, one after the other.

        The output folder is written as :func:`cloudseg.backend.batch.segment_batch`
        writes it: per scene ``<scene>.tif``, ``<scene>.stac.json`` and last its record
        ``<scene>.json``, each published whole from a staging folder, and
        ``manifest.json``; done scenes with the same settings are skipped, files no
        batch wrote are never replaced, and a scene whose job fails is recorded with
        its reason while the others go on. Cancel dismisses the current job and keeps
        the scenes finished. The server must answer (and take the token) first.
        """
        from ...backend.batch import BatchOutput, settings_key
        from ...backend.batch_records import (
            check_ownership,
            earlier_done,
            kept_records,
            write_manifest,
        )
        from ...backend.batch_scenes import (
            MANIFEST,
            check_not_input,
            find_scenes,
            local_identity,
        )
        from ...backend.errors import CancelledError
        from ...backend.remote import UnreachableError
        from ..servers import client_for

        started = time.perf_counter()
        options = {k: v for k, v in {"model": model_value(self, parameters, context),
                                     **run_values(self, parameters, context)}.items()
                   if v is not None}  # fmt: skip
        folder = self.parameterAsString(parameters, self.OUTPUT_FOLDER, context)
        inputs = [self.parameterAsFile(parameters, self.INPUT, context)]
        scenes = find_scenes(inputs, Path())
        output = str(Path(folder).expanduser().absolute())
        check_not_input(scenes, output, inputs)
        client = client_for(server)
        client.capabilities()  # unreachable, or a refused token: nothing written
        where = client.url
        key = settings_key(options, f"server {options.get('model') or 'auto'}")
        Path(output).mkdir(parents=True, exist_ok=True)
        destination = BatchOutput(output, None)
        records: list[dict[str, Any]] = []
        kept: list[dict[str, Any]] = []

        def save(complete: bool) -> str:
            """The manifest (and the STAC collection, where this QGIS has pystac)."""
            return write_manifest(destination, records, scenes, options | {"server": where},
                                  key, started, complete, kept)  # fmt: skip

        with destination.hold(MANIFEST):
            check_ownership(destination, scenes, overwrite=False)
            kept = kept_records(destination, scenes)
            for number, found in enumerate(scenes):
                scene = dataclasses.replace(
                    found, identity=found.identity or local_identity(found.source)
                )
                earlier = destination.read_json(f"{scene.scene}.json")
                done, redo = earlier_done(earlier, scene, key, destination)
                if done and earlier is not None:
                    record = earlier | {"status": "skipped", "seconds": 0.0}
                else:
                    try:
                        record = self._scene_on_server(
                            server, scene, options, key, destination, redo, feedback,
                            (100.0 * number / len(scenes), 100.0 / len(scenes)),
                        )  # fmt: skip
                    except (CancelledError, UnreachableError) as exc:
                        save(False)
                        kept = sum(r["status"] in ("done", "skipped") for r in records)
                        what = "cancelled" if isinstance(exc, CancelledError) else "stopped"
                        raise type(exc)(
                            f"batch {what} after {len(records)} of {len(scenes)} scenes "
                            f"({exc}); the {kept} finished are kept and a re-run skips them"
                        ) from None
                records.append(record)
                feedback.setProgress(100.0 * len(records) / len(scenes))
                text = f"{record['scene']}: {record['status']}"
                if record.get("error"):
                    feedback.reportError(f"{text}: {record['error']}")
                else:
                    feedback.pushInfo(text)
            manifest = save(True)
        counts: dict[str, int] = {}
        for record in records:
            counts[record["status"]] = counts.get(record["status"], 0) + 1
        return self.outputs(output, manifest, counts)

    def _scene_on_server(
        self,
        server: ServerChoice,
        scene: BatchScene,
        options: dict[str, Any],
        key: str,
        destination: Any,
        redo: str | None,
        feedback: QgsProcessingFeedback,
        share: tuple[float, float],
    ) -> dict[str, Any]:
        """One scene as a server job, its files published whole; its record.

        A job the server refuses or that fails gives a ``failed`` record (written);
        a cancel or a lost server raises (nothing of the scene published).
        """
        from ...backend.batch_records import record_bytes
        from ...backend.batch_scenes import ITEM_SUFFIX
        from ...backend.errors import CancelledError, CloudsegError
        from ...backend.remote import UnreachableError

        record: dict[str, Any] = {
            "scene": scene.scene, "source": scene.source, "key": key,
            "input": scene.identity,
        }  # fmt: skip
        if redo:
            record["redone"] = redo
        begun = time.perf_counter()
        low, width = share

        class Scaled(QgsProcessingFeedback):
            """The scene's share of the batch's progress; the batch's Cancel."""

            def setProgress(self, percent: float) -> None:
                feedback.setProgress(low + width * percent / 100.0)

            def setProgressText(self, text: str) -> None:
                feedback.setProgressText(f"{scene.scene}: {text}")

            def isCanceled(self) -> bool:
                return feedback.isCanceled()

            def pushInfo(self, info: str) -> None:
                if info.startswith("Ran on "):
                    feedback.pushInfo(f"{scene.scene}: {info}")

        with destination.staging() as tmp:
            staged = Path(tmp)
            mask = staged / f"{scene.scene}.tif"
            item_file = staged / f"{scene.scene}{ITEM_SUFFIX}"
            try:
                run = self.remote_run(
                    server, "segment", Path(scene.source), options,
                    {"mask": mask, "stac_item": item_file}, Scaled(),
                )  # fmt: skip
            except (CancelledError, UnreachableError):
                raise  # the batch stops: nothing of this scene is published
            except CloudsegError as exc:  # the server refused the scene, or its job failed
                record |= {"status": "failed", "error": str(exc).splitlines()[0]}
                record["seconds"] = round(time.perf_counter() - begun, 3)
                destination.put(f"{scene.scene}.json", record_bytes(record))
                return record
            item = batch_item(json.loads(item_file.read_text()), scene.scene, destination.url)
            item_file.write_text(json.dumps(item, indent=2) + "\n")
            record |= scene_record(run, item)
            record["output"] = destination.put(f"{scene.scene}.tif", mask)
            record["output_checksum"] = destination.checksum(f"{scene.scene}.tif")
            record["stac_item"] = destination.put(f"{scene.scene}{ITEM_SUFFIX}", item_file)
            record["seconds"] = round(time.perf_counter() - begun, 3)
            destination.put(f"{scene.scene}.json", record_bytes(record))  # last: done
        return record


def batch_item(item: dict[str, Any], scene: str, output: str) -> dict[str, Any]:
    """A server job's STAC Item as the batch's: its id the scene, its mask ``./<scene>.tif``.

    Assets the job kept on the server (relative hrefs other than the mask) are left
    out; the Item links the batch's collection, as a local batch's does.
    """
    from ...backend.batch_records import collection_id
    from ...backend.batch_scenes import COLLECTION

    assets = {}
    for name, asset in (item.get("assets") or {}).items():
        href = str(asset.get("href", ""))
        if href.rsplit("/", 1)[-1] == "mask.tif":
            assets[name] = asset | {"href": f"./{scene}.tif"}
        elif "://" in href:
            assets[name] = asset
    links = [link for link in item.get("links") or []
             if link.get("rel") not in ("self", "root", "parent", "collection")]  # fmt: skip
    links.append({"rel": "collection", "href": f"./{COLLECTION}", "type": "application/json"})
    return item | {"id": scene, "assets": assets, "links": links,
                   "collection": collection_id(output)}  # fmt: skip


def scene_record(run: RemoteRun, item: dict[str, Any]) -> dict[str, Any]:
    """What a done scene's record says of its server run (the fields a local batch's has)."""
    summary = run.summary
    properties = item.get("properties") or {}
    percent = summary.get("class_percent") or {}
    return {
        "status": "done",
        "model": summary.get("model"),
        "runner": run.where,
        "cloud_percent": properties.get("eo:cloud_cover", percent.get("cloud")),
        "shadow_percent": properties.get("cloudseg:shadow_cover", percent.get("cloud shadow")),
        "class_percent": percent,
        "error": None,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "bbox": item.get("bbox"),
        "datetime": properties.get("datetime"),
    }
