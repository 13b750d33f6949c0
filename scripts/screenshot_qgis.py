"""Screenshots of QGIS with cloudseg, as an analyst sees it (docs/qgis*.png).

Run by ``make screenshot``, which starts the real QGIS under Xvfb with this file as
``--code``: QGIS is up, the plugin is enabled, and ``iface`` is the real interface.
The script loads the On Cloud N chip ``adwp`` as a true-colour layer, opens the dock,
segments the chip there (a QgsTask, as a user would), and saves:

- ``qgis.png``: the window, with the dock after the run and the mask on the map;
- ``qgis-results.png``: the Layers panel, with the results group and its legends;
- ``qgis-dialog.png``: the Segment clouds dialog, opened as the layer's right-click
  action opens it, at its default size;
- ``qgis-labels.png``: the label dock after one active-learning round: boxes proposed
  where the model is unsure, three labeled from the model's mask and marked Done, a
  fine-tuned version with its held-out IoU in the round history, and the next box
  started from the model, ready to correct;
- ``qgis-review.png``: the label dock's "Suspicious labels" tab on a store ingested
  from a raw source with ``mask_values`` (the labeled Sentinel-2 scene, clouds missed
  in three windows; tests/review_store.py), checked with a relative ``--out``: the
  worst window open, its label polygons of cloud and shadow in the classes' colours
  and the missed cloud's flagged pixels (the label and model rasters listed, hidden);
- ``qgis-server.png``: the Cloud segmentation dock with *Run on: cloudseg server*
  after the same chip ran on a ``cloudseg serve`` started for it (on this machine's
  loopback, reading the chip's folder by path as from a shared drive): the server's
  URL and token rows, the device line and the recent runs saying where each run ran.

Environment: CLOUDSEG_REAL_DATA (the real data folder), CLOUDSEG_SCREENSHOT (PNG path).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from osgeo import gdal
from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QSize, QTimer
from qgis.PyQt.QtWidgets import QDockWidget
from qgis.utils import iface, plugins

OUT = Path(os.environ.get("CLOUDSEG_SCREENSHOT", "docs/qgis.png")).resolve()
CHIP = Path(os.environ["CLOUDSEG_REAL_DATA"]) / "oncloudn_l2a" / "adwp"
WORK = Path(tempfile.mkdtemp(prefix="cloudseg-screenshot-"))


LOG = Path(os.environ.get("CLOUDSEG_SCREENSHOT_LOG", WORK / "screenshot.log"))


def say(message: str) -> None:
    """Log a line (QGIS's own Python console swallows stdout)."""
    with LOG.open("a", encoding="utf-8") as log:
        log.write(message + "\n")
    print(f"screenshot: {message}", file=sys.stderr, flush=True)


def fail(message: str) -> None:
    """Say why, and leave QGIS with a non-zero status."""
    say(message)
    QgsApplication.exit(1)


def true_colour_layer() -> QgsRasterLayer:
    """B04/B03/B02 of the chip as one RGB layer (a VRT; QGIS stretches it for display)."""
    vrt = WORK / "adwp_rgb.vrt"
    gdal.BuildVRT(str(vrt), [str(CHIP / f"{b}.tif") for b in ("B04", "B03", "B02")], separate=True)
    return QgsRasterLayer(str(vrt), "adwp (true colour)")


def start() -> None:
    """Load the chip, open the dock and start a run on the B04 band of the chip folder."""
    say("loading the chip")
    try:
        plugin = plugins["cloudseg"]
        QgsProject.instance().addMapLayer(true_colour_layer())
        band = QgsRasterLayer(str(CHIP / "B04.tif"), "adwp B04")
        QgsProject.instance().addMapLayer(band)  # the run's input, hidden on the map
        QgsProject.instance().layerTreeRoot().findLayer(band.id()).setItemVisibilityChecked(False)
        iface.mainWindow().resize(QSize(1500, 900))
        plugin.panel_action.setChecked(True)
        dock = plugin.dock
        dock.output_dir.setFilePath(str(WORK / "runs"))
        dock.probabilities_check.setChecked(True)
        iface.setActiveLayer(band)
        task = dock.run_active_layer()
        say("run started")
        if task is None:
            fail(dock.status_label.text())
            return
        wait(dock)
    except Exception:
        fail("could not start the run:\n" + traceback.format_exc())


def wait(dock: object) -> None:
    """Poll the dock; when its run is done, hide the probability layer and take the picture."""
    try:
        _wait(dock)
    except Exception:
        fail("failed after the run:\n" + traceback.format_exc())


def _wait(dock: object) -> None:
    if dock.task is not None or not dock.runs:  # QGIS deletes a task once it is finished
        QTimer.singleShot(500, lambda: wait(dock))
        return
    if dock.runs[0].status != "done":
        fail(f"the run ended as {dock.runs[0].status}: {dock.runs[0].message}")
        return
    root = QgsProject.instance().layerTreeRoot()
    for node in root.findLayers():
        if "probability" in node.name():
            node.setItemVisibilityChecked(False)
    iface.mapCanvas().setExtent(iface.mapCanvas().fullExtent())
    iface.mapCanvas().refresh()
    QTimer.singleShot(3000, grab)


def save(widget: object, path: Path, width: int | None = None) -> bool:
    """Save a widget's picture as a small PNG (a 128-colour palette, for the README)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = widget.grab()
    if width:
        image = image.scaledToWidth(width)
    if not image.save(str(path)):
        fail(f"cannot write {path}")
        return False
    try:
        from PIL import Image

        with Image.open(path) as picture:
            small = picture.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
        small.save(path, optimize=True)
    except ImportError:
        pass
    say(f"wrote {path}")
    return True


def grab() -> None:
    """Save the window and the Layers panel, then open the dialog."""
    try:
        iface.messageBar().clearWidgets()  # QGIS's own "Task complete" notes
        if not save(iface.mainWindow(), OUT, 1000):
            return
        layers = iface.mainWindow().findChild(QDockWidget, "Layers")
        if layers is None or not save(layers, OUT.with_name("qgis-results.png")):
            fail("no Layers panel to grab")
            return
        band = next(
            layer
            for layer in QgsProject.instance().mapLayers().values()
            if layer.name() == "adwp B04"
        )
        dialog = plugins["cloudseg"].open_segment_dialog(band)
        QTimer.singleShot(2000, lambda: grab_dialog(dialog))
    except Exception:
        fail("failed while grabbing:\n" + traceback.format_exc())


def grab_dialog(dialog: object) -> None:
    """Save the Segment clouds dialog as it opens, close it and quit."""
    try:
        if save(dialog, OUT.with_name("qgis-dialog.png")):
            dialog.close()
            QTimer.singleShot(500, start_labels)
    except Exception:
        fail("failed while grabbing the dialog:\n" + traceback.format_exc())


def when_idle(dock: object, then: object) -> None:
    """Call ``then()`` once the label dock's task has finished (polling, QGIS stays live)."""
    if dock.task is not None:
        QTimer.singleShot(500, lambda: when_idle(dock, then))
        return
    try:
        then()
    except Exception:
        fail("the label dock failed:\n" + traceback.format_exc())


def start_labels() -> None:
    """Open the label dock on the chip and propose boxes, as an analyst starts a project."""
    try:
        plugin = plugins["cloudseg"]
        plugin.panel_action.setChecked(False)
        plugin.label_action.setChecked(True)
        dock = plugin.label_dock
        band = next(
            layer
            for layer in QgsProject.instance().mapLayers().values()
            if layer.name() == "adwp B04"
        )
        dock.scene_combo.setLayer(band)
        dock.model_combo.setCurrentIndex(dock.model_combo.findData("ukis-csmask-4b-l2a"))
        dock.box_spin.setValue(64)
        dock.count_spin.setValue(8)
        dock.steps_spin.setValue(10)
        dock.project_widget.setFilePath(str(WORK / "coast.gpkg"))
        if dock.propose() is None:
            fail(dock.status_label.text())
            return
        say("proposing")
        when_idle(dock, lambda: label_and_fine_tune(dock))
    except Exception:
        fail("could not open the label dock:\n" + traceback.format_exc())


def label_and_fine_tune(dock: object) -> None:
    """Label three boxes from the model's mask, mark them done, and fine-tune."""
    if dock.proposals is None:
        fail(f"no proposals: {dock.status_label.text()}")
        return
    dock.next_box()  # Propose areas shows no box: Next goes to box 1, as the analyst does
    for _ in range(3):
        dock.start_from_model()
        dock.mark("labeled")
    if dock.fine_tune() is None:
        fail(dock.status_label.text())
        return
    say("fine-tuning")
    when_idle(dock, lambda: next_box(dock))


def next_box(dock: object) -> None:
    """The next box, started from the model and zoomed out a little; then the picture."""
    if not dock.history_table.rowCount():
        fail(f"no round: {dock.status_label.text()}")
        return
    dock.start_from_model()
    dock.set_class(1)
    root = QgsProject.instance().layerTreeRoot()
    for node in root.findLayers():  # the image and the labels: no heat map, no mask
        if "uncertainty" in node.name() or " - clouds" in node.name():
            node.setItemVisibilityChecked(False)
    canvas = iface.mapCanvas()
    extent = canvas.extent()
    extent.scale(2.2)
    canvas.setExtent(extent)
    canvas.refresh()
    QTimer.singleShot(3000, grab_labels)


def grab_labels() -> None:
    """Save the window with the label dock; then the review of suspicious labels."""
    try:
        if save(iface.mainWindow(), OUT.with_name("qgis-labels.png"), 1000):
            start_review()
    except Exception:
        fail("failed while grabbing the label dock:\n" + traceback.format_exc())


def start_review() -> None:
    """Check a store ingested with mask_values; open a window with cloud and shadow."""
    # QGIS runs this file with no __file__: the tests folder is beside docs/.
    sys.path.insert(0, str(OUT.parents[1] / "tests"))
    from review_store import checked, mask_values_store

    QgsProject.instance().clear()
    iface.messageBar().clearWidgets()  # the label round's verdict: another tab's news
    work = WORK / "review"
    work.mkdir()
    report = checked(mask_values_store(Path(os.environ["CLOUDSEG_REAL_DATA"]), work), work)
    dock = plugins["cloudseg"].label_dock
    panel = dock.review
    dock.tabs.setCurrentWidget(panel)
    panel.show_dashboard = False
    panel.report_widget.setFilePath(str(report))
    if panel.open_selected() is None:  # the worst: a missed cloud beside cloud and shadow
        fail(f"no window to review: {panel.status_label.text()}")
        return
    say("opening a suspicious window")
    when_idle(panel, lambda: grab_review(panel))


def grab_review(panel: object) -> None:
    """Zoom out a little around the window, save the picture, and quit."""
    if panel.current is None:
        fail(f"the window did not open: {panel.status_label.text()}")
        return
    panel.class_combo.setCurrentIndex(panel.class_combo.findText("1 cloud"))
    root = QgsProject.instance().layerTreeRoot()
    for node in root.findLayers():  # listed, hidden: the polygons and flags show clearly
        if node.name().endswith(("model's classes", "stored label")):
            node.setItemVisibilityChecked(False)
    canvas = iface.mapCanvas()
    extent = canvas.extent()
    extent.scale(1.3)
    canvas.setExtent(extent)
    canvas.refresh()
    QTimer.singleShot(3000, finish)


def finish() -> None:
    """Save the review picture, then run the chip on a server from the dock."""
    try:
        if save(iface.mainWindow(), OUT.with_name("qgis-review.png"), 1000):
            QgsProject.instance().clear()
            QTimer.singleShot(500, start_server_run)
    except Exception:
        fail("failed while grabbing the review:\n" + traceback.format_exc())


SERVER: list[subprocess.Popen] = []


def start_server() -> str:
    """Start ``cloudseg serve`` on a free loopback port, reading the chip's folder; its URL."""
    command = OUT.parents[1] / ".venv" / "bin" / "cloudseg"
    shared = ("--root", str(CHIP.parent))  # the chip's folder, as on a shared drive
    server = subprocess.Popen(
        [str(command), "serve", "--port", "0", "--work", str(WORK / "serve"), *shared],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    SERVER.append(server)
    end = time.monotonic() + 120
    for line in server.stdout:  # type: ignore[union-attr]
        found = re.search(r"listening on (\S+)", line)
        if found:
            threading.Thread(target=server.stdout.read, daemon=True).start()  # drain it
            return found[1]
        if time.monotonic() > end:
            break
    raise RuntimeError("cloudseg serve did not start")


def start_server_run() -> None:
    """Run on a cloudseg server: the chip's band, from the dock, as an analyst would."""
    say("starting cloudseg serve")
    try:
        url = start_server()
        QgsProject.instance().addMapLayer(true_colour_layer())
        band = QgsRasterLayer(str(CHIP / "B04.tif"), "adwp B04")
        QgsProject.instance().addMapLayer(band)
        QgsProject.instance().layerTreeRoot().findLayer(band.id()).setItemVisibilityChecked(False)
        plugins["cloudseg"].label_dock.setVisible(False)  # the dock gets the full height
        dock = plugins["cloudseg"].dock
        dock.raise_()
        dock.run_on_combo.setCurrentIndex(dock.run_on_combo.findData("server"))
        dock.server_edit.setText(url)
        dock.server_edit.editingFinished.emit()
        dock.probabilities_check.setChecked(False)
        iface.setActiveLayer(band)
        if dock.run_active_layer() is None:
            fail(dock.status_label.text())
            return
        say(f"run started on {url}")
        server_wait(dock)
    except Exception:
        fail("could not run on the server:\n" + traceback.format_exc())


def server_wait(dock: object) -> None:
    """When the server's run is back, save the dock and quit."""
    if dock.task is not None:
        QTimer.singleShot(500, lambda: server_wait(dock))
        return
    try:
        if dock.runs[0].status != "done":
            fail(f"the server run ended as {dock.runs[0].status}: {dock.runs[0].message}")
            return
        iface.messageBar().clearWidgets()
        QTimer.singleShot(2000, grab_server)
    except Exception:
        fail("failed after the server run:\n" + traceback.format_exc())


def grab_server() -> None:
    """Save the dock with Run on: cloudseg server, stop the server and quit."""
    try:
        if save(plugins["cloudseg"].dock, OUT.with_name("qgis-server.png")):
            for server in SERVER:
                server.terminate()
            # Close the project first, as QGIS does when its window is closed: QGIS
            # 3.22 crashes when it is told to exit with layers still loaded (in its
            # layer styling dock, while the layer tree is torn down).
            QgsProject.instance().clear()
            QTimer.singleShot(500, lambda: QgsApplication.exit(0))
    except Exception:
        fail("failed while grabbing the server run:\n" + traceback.format_exc())


import faulthandler  # noqa: E402

_FAULTS = LOG.with_name("faults.txt").open("w", encoding="utf-8")
faulthandler.enable(_FAULTS, all_threads=True)  # a crash leaves the Python stacks here
say(f"started; plugins loaded: {sorted(plugins)}")
QTimer.singleShot(1000, start)
