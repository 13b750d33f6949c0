"""cloudseg's Python packages inside QGIS: where they live, and the dialog that installs them.

A view over :mod:`cloudseg.backend.installer`: the folder is per QGIS profile and Python
version (``<profile>/cloudseg/python3.11``), so ``qgis_process`` with the same profile
finds the same packages, and a QGIS with another Python never loads them. The dialog
says what a step will download before it starts, runs pip in a :class:`QgsTask` with
progress and Cancel, and removes everything with *Uninstall*.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from qgis.core import Qgis, QgsApplication, QgsMessageLog
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..backend.dependencies import PLUGIN_STEPS, Group, group, missing_requirements
from ..backend.installer import PackageInstaller, Plan, activate, read_receipt
from ..backend.packaging_text import human
from .logbridge import LOG_TAG
from .tasks import BackendTask, TaskRunner


def packages_root() -> Path:
    """This profile's folder of cloudseg's packages, for this Python version."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return Path(QgsApplication.qgisSettingsDirPath()) / "cloudseg" / version


def activate_packages() -> list[Path]:
    """Put the installed steps at the end of ``sys.path`` (see :func:`~.installer.activate`)."""
    return activate(packages_root())


def qgis_python() -> str:
    """QGIS's own numpy, GDAL and PyQt, as they are now (said in the dialog)."""
    from osgeo import gdal
    from qgis.PyQt.QtCore import PYQT_VERSION_STR

    parts = [f"GDAL {gdal.__version__}", f"PyQt {PYQT_VERSION_STR}"]
    try:
        import numpy

        parts.insert(0, f"numpy {numpy.__version__}")
    except ImportError:  # pragma: no cover - QGIS always ships numpy
        pass
    return ", ".join(parts)


class InstallDialog(QDialog):
    """Install, check and remove cloudseg's packages: one box per step.

    Signals:
        installed: A step's name, once it is installed and importable.
    """

    installed = pyqtSignal(str)

    def __init__(self, parent: QWidget | None = None, focus: Group | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("cloudsegInstallDialog")
        self.setWindowTitle("cloudseg - Install packages")
        self.setMinimumWidth(640)
        self.focus = focus
        self.plans: dict[str, Plan] = {}
        layout = QVBoxLayout(self)
        intro = QLabel(
            "cloudseg installs the Python packages it needs into a folder of its own, "
            f"<tt>{packages_root()}</tt>, from its lock (exact versions, every file checked). "
            f"QGIS's own Python is not changed ({qgis_python()}); no terminal, no restart."
        )
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.boxes: dict[str, tuple[QLabel, QPushButton]] = {}
        for step in PLUGIN_STEPS:
            box = QGroupBox(step.title)
            box.setObjectName(f"cloudsegStep_{step.name}")
            row = QHBoxLayout(box)
            label = QLabel()
            label.setWordWrap(True)
            row.addWidget(label, 1)
            button = QPushButton("Install")
            button.setObjectName(f"cloudsegInstall_{step.name}")
            button.clicked.connect(lambda _=False, s=step: self.install(s))
            row.addWidget(button)
            self.boxes[step.name] = (label, button)
            layout.addWidget(box)
        wheels = QHBoxLayout()
        wheels.addWidget(QLabel("Offline, from a folder of wheels:"))
        self.wheel_folder = QgsFileWidget()
        self.wheel_folder.setStorageMode(QgsFileWidget.GetDirectory)
        self.wheel_folder.setToolTip(
            "Leave empty to download from the package index. Offline: a folder holding "
            "the locked wheels (see the README: pip download -r .../locks/segment.txt)."
        )
        self.wheel_folder.fileChanged.connect(lambda _path: self.refresh(plan=True))
        wheels.addWidget(self.wheel_folder, 1)
        layout.addLayout(wheels)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setObjectName("cloudsegInstallStatus")
        layout.addWidget(self.status)
        progress_row = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        progress_row.addWidget(self.progress, 1)
        self.cancel_button = QPushButton("Cancel")
        progress_row.addWidget(self.cancel_button)
        layout.addLayout(progress_row)
        buttons = QDialogButtonBox(QDialogButtonBox.Close)
        self.uninstall_button = buttons.addButton("Uninstall...", QDialogButtonBox.ResetRole)
        self.uninstall_button.setObjectName("cloudsegUninstall")
        self.uninstall_button.setToolTip(f"Remove {packages_root()} and everything in it")
        self.uninstall_button.clicked.connect(self.uninstall)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.runner = TaskRunner(self.say, self.progress, self.cancel_button, self.status)
        self.runner.guard(self.uninstall_button, lambda: packages_root().exists())
        self.runner.guard(self.wheel_folder)
        for _label, button in self.boxes.values():
            self.runner.guard(button)
        self.refresh(plan=True)

    # -- state -------------------------------------------------------------------------
    def installer(self) -> PackageInstaller:
        """The backend installer for this profile, with the chosen wheel folder."""
        wheels = self.wheel_folder.filePath().strip()
        return PackageInstaller(packages_root(), wheels=Path(wheels) if wheels else None)

    def say(self, text: str, level: Qgis.MessageLevel = Qgis.Info) -> None:
        """Show ``text`` in the dialog's status line and the cloudseg log."""
        self.status.setText(text)
        QgsMessageLog.logMessage(text, LOG_TAG, level)

    def refresh(self, plan: bool = False) -> None:
        """Say each step's state; with ``plan``, work out what missing steps download."""
        installer = self.installer()
        missing = []
        for step in PLUGIN_STEPS:
            label, button = self.boxes[step.name]
            state = installer.status(step)
            needed = bool(missing_requirements(step))
            known = self.plans.get(step.name)
            if known is not None and needed:
                state += f"<br>{known.headline()}"
                if step is not PLUGIN_STEPS[0] and missing:
                    state += f" (with {missing[0].title.split(' (')[0]}, installed first)"
            label.setText(f"<b>{state}</b>" if step is self.focus else state)
            label.setToolTip(known.summary() if known is not None and needed else "")
            button.setText("Install" if needed else "Reinstall")
            if needed:
                missing.append(step)
        self.runner.refresh()
        if plan and missing and not self.runner.busy:
            self.plan(missing)

    def plan(self, steps: list[Group]) -> BackendTask | None:
        """Work out, in a task, what each of ``steps`` will download (pip's dry run)."""
        self.plans.clear()
        installer = self.installer()

        def work(progress: Any, cancelled: Any) -> dict[str, Plan]:
            plans = {}
            for index, step in enumerate(steps):
                progress(
                    100 * index / len(steps),
                    f"checking what {step.title} needs (pip reads the package index: up to "
                    "a minute the first time)",
                )
                plans[step.name] = installer.plan(step)
            return plans

        def planned(task: BackendTask) -> None:
            self.plans = task.result
            self.progress.setValue(0)  # nothing installed yet
            self.refresh()
            wanted = self.focus or steps[0]
            if wanted.name in self.plans:
                plan = self.plans[wanted.name]
                self.status.setText(
                    f"{wanted.title}: {plan.headline()}. Hover over a step for the details."
                )

        task = BackendTask("cloudseg: what to install", work, planned)
        return self.runner.start(task, cancelled="cancelled")

    # -- actions -----------------------------------------------------------------------
    def install(self, step: Group | str) -> BackendTask | None:
        """Install ``step`` in a task: progress here and in QGIS's task manager.

        A later step whose earlier ones are missing installs those first, in the same
        task, each published on its own (a cancel keeps the ones already done).
        """
        step = group(step) if isinstance(step, str) else step
        installer = self.installer()
        chain = [
            earlier
            for earlier in PLUGIN_STEPS[: PLUGIN_STEPS.index(step)]
            if missing_requirements(earlier)
        ]

        def work(progress: Any, cancelled: Any) -> Path:
            for earlier in chain:
                installer.install(installer.plan(earlier), progress, cancelled)
            plan = installer.plan(step)
            progress(0, plan.headline())
            return installer.install(plan, progress, cancelled)

        def done(task: BackendTask) -> None:
            added = activate_packages()
            self.plans.pop(step.name, None)
            missing = missing_requirements(step)
            first = read_receipt(Path(task.result)).get("first", {})
            loaded = [  # this Python's own copy is in use already: ours from the next start
                name
                for name in first
                if name in sys.modules
                and str(packages_root()) not in str(getattr(sys.modules[name], "__file__", ""))
            ]
            if loaded:
                self.say(
                    f"{step.title}: installed; restart QGIS once to use it ({', '.join(loaded)} "
                    "of QGIS's Python are loaded already and must be replaced)",
                    Qgis.Warning,
                )
            elif missing:  # an older copy was loaded before: a restart loads the new one
                self.say(
                    f"{step.title}: installed; restart QGIS to load it "
                    f"({', '.join(r.label for r in missing)} not importable yet)",
                    Qgis.Warning,
                )
            else:
                self.say(f"{step.title}: installed in {task.result}; ready to use", Qgis.Success)
            self.refresh()
            if added or not missing:
                self.installed.emit(step.name)

        task = BackendTask(f"cloudseg: install {step.title}", work, done)
        return self.runner.start(task, cancelled="cancelled; nothing was changed")

    def uninstall(self) -> int:
        """Remove every installed step (after confirmation when shown); bytes freed."""
        from qgis.PyQt.QtWidgets import QMessageBox

        root = packages_root()
        if self.isVisible():
            answer = QMessageBox.question(
                self,
                "cloudseg - Uninstall",
                f"Remove cloudseg's packages ({root})? QGIS's own Python is not touched.",
            )
            if answer != QMessageBox.Yes:
                return 0
        return self.uninstall_now()

    def uninstall_now(self) -> int:
        """Remove every installed step without asking; returns the bytes freed."""
        root = packages_root()
        freed = PackageInstaller(root).uninstall()
        sys.path[:] = [p for p in sys.path if not p.startswith(str(root))]
        self.say(
            f"removed {root} ({human(freed)}); packages already loaded stay until QGIS restarts",
            Qgis.Info,
        )
        self.refresh()
        return freed


#: The one install dialog of this QGIS session (the plugin closes it when unloaded).
_dialog: InstallDialog | None = None


def open_dialog(parent: QWidget | None = None, focus: Group | None = None) -> InstallDialog:
    """Show the install dialog (one per session), with ``focus``'s step in bold."""
    global _dialog
    from qgis.PyQt import sip

    if _dialog is None or sip.isdeleted(_dialog):
        _dialog = InstallDialog(parent, focus)
    else:
        _dialog.focus = focus
        _dialog.refresh(plan=True)
    _dialog.show()
    _dialog.raise_()
    return _dialog


def close_dialog() -> None:
    """Close the install dialog, cancelling an install it runs (plugin unload)."""
    global _dialog
    from qgis.PyQt import sip

    if _dialog is not None and not sip.isdeleted(_dialog):
        _dialog.runner.cancel()
        _dialog.close()
        _dialog.deleteLater()
    _dialog = None


def ensure(step: Group, parent: QWidget | None = None) -> bool:
    """True when ``step``'s packages are there; else offer the dialog and return False."""
    if not missing_requirements(step):
        return True
    open_dialog(parent, step)
    return False
