"""Screenshot of the Install packages dialog before the first install (docs/qgis-install.png).

Run by ``make screenshot`` in the real QGIS under Xvfb, with a fresh HOME and nothing of
the project's venv visible: QGIS's own Python, as a new analyst has it. The plugin
starts, offers the installer in the message bar; the script presses that button, waits
until the dialog has worked out what the segmentation step downloads, and saves the
dialog. Nothing is installed.

Environment: CLOUDSEG_SCREENSHOT (PNG path).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QPushButton
from qgis.utils import iface

OUT = Path(os.environ.get("CLOUDSEG_SCREENSHOT", "docs/qgis-install.png")).resolve()


def press_install_button() -> None:
    """The message bar's button, as the analyst presses it."""
    for item in iface.messageBar().items():
        button = item.findChild(QPushButton, "cloudsegInstallFromBar")
        if button is not None:
            button.click()
            QTimer.singleShot(500, lambda: wait_for_plan(240))
            return
    print("screenshot: the plugin offered no install (are packages visible?)", file=sys.stderr)
    QgsApplication.exit(1)


def wait_for_plan(tries: int) -> None:
    """Save the dialog once its plan is shown."""
    dialog = sys.modules["cloudseg.cloudseg_plugin.packages"]._dialog
    if dialog.runner.busy and tries > 0:
        QTimer.singleShot(500, lambda: wait_for_plan(tries - 1))
        return
    dialog.adjustSize()
    dialog.grab().save(str(OUT))
    print(f"screenshot: {OUT}", file=sys.stderr)
    QgsApplication.exit(0)


QTimer.singleShot(2000, press_install_button)
