"""Paths to the plugin's resources (icons, styles)."""

from __future__ import annotations

from pathlib import Path

from qgis.PyQt.QtGui import QIcon

RESOURCES_DIR = Path(__file__).resolve().parents[1] / "resources"


def icon(name: str = "cloudseg.svg") -> QIcon:
    """Return an icon from ``resources/icons``.

    Args:
        name: File name of the icon.

    Returns:
        The icon (a null icon if the file is missing).
    """
    return QIcon(str(RESOURCES_DIR / "icons" / name))
