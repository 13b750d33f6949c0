"""Many scenes from QGIS: Processing's batch mode over cloudseg:segment, and segment_batch."""

from __future__ import annotations

import json

import pytest
import rasterio
from qgis import processing
from qgis.core import QgsProcessingException, QgsProcessingFeedback

pytestmark = pytest.mark.real_data


@pytest.mark.slow
def test_processing_batch_mode_runs_segment_per_row(plugin, batch_scenes, tmp_path):
    """The Batch Processing dialog (QGIS's own) with three rows: two scenes and a bad one."""
    from processing.gui.BatchAlgorithmDialog import BatchAlgorithmDialog
    from processing.tools import dataobjects
    from qgis.core import QgsApplication, QgsProxyProgressTask
    from qgis.PyQt import sip

    algorithm = QgsApplication.processingRegistry().algorithmById("cloudseg:segment")
    dialog = BatchAlgorithmDialog(algorithm.create())
    panel = dialog.mainWidget()
    panel.checkLoadLayersOnCompletion.setChecked(False)
    context = dataobjects.createContext()
    rows = ["adwp-top", "adwu-bottom", "broken"]
    panel.addRow(len(rows) - 1)
    assert panel.batchRowCount() == 3
    for row, scene in enumerate(rows):
        columns = panel.parameter_to_column
        panel.wrappers[row][columns["INPUT"]].setParameterValue(
            str(batch_scenes / f"{scene}.tif"), context
        )
        panel.wrappers[row][columns["PRODUCT_LEVEL"]].setParameterValue("L2A", context)
        panel.tblParameters.cellWidget(row + 1, columns["OUTPUT"]).setValue(
            str(tmp_path / f"{scene}-mask.tif")
        )
    dialog.runAlgorithm()
    # QGIS 3.22's dialog keeps its progress task alive through a signal connection, so
    # the task never finishes and the thread pool waits for it at exit: end it here.
    for task in QgsApplication.taskManager().tasks():
        if task.description().startswith("Batch Processing"):
            sip.cast(task, QgsProxyProgressTask).finalize(True)
    for scene in rows[:2]:
        with rasterio.open(tmp_path / f"{scene}-mask.tif") as ds:
            assert ds.tags()["CLOUDSEG_MODEL"] == "ukis-csmask-4b-l2a"
    assert not (tmp_path / "broken-mask.tif").exists()  # its row failed; the others ran
    dialog.close()


@pytest.mark.slow
def test_segment_batch_through_processing_and_its_cancel(plugin, batch_scenes, tmp_path):
    out = tmp_path / "masks"
    result = processing.run(
        "cloudseg:segment_batch",
        {"INPUT": str(batch_scenes), "PRODUCT_LEVEL": "L2A", "OUTPUT_FOLDER": str(out)},
        feedback=QgsProcessingFeedback(),
    )
    assert (result["DONE"], result["SKIPPED"], result["FAILED"]) == (10, 0, 1)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["records"]) == 11
    # Cancelled after the first scene: what was done stays, a re-run goes on from there.
    fresh = tmp_path / "again"
    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(lambda value: value > 0 and feedback.cancel())
    with pytest.raises(QgsProcessingException, match="cancelled"):
        processing.run(
            "cloudseg:segment_batch",
            {"INPUT": str(batch_scenes), "PRODUCT_LEVEL": "L2A", "OUTPUT_FOLDER": str(fresh)},
            feedback=feedback,
        )
    kept = json.loads((fresh / "manifest.json").read_text())
    assert not kept["complete"] and 1 <= len(kept["records"]) < 11
    resumed = processing.run(
        "cloudseg:segment_batch",
        {"INPUT": str(batch_scenes), "PRODUCT_LEVEL": "L2A", "OUTPUT_FOLDER": str(fresh)},
        feedback=QgsProcessingFeedback(),
    )
    done_before = sum(r["status"] == "done" for r in kept["records"])
    assert resumed["SKIPPED"] >= done_before and resumed["DONE"] + resumed["SKIPPED"] == 10
