"""cloudseg: cloud and cloud-shadow segmentation of Sentinel-2 imagery.

The repository root is the QGIS plugin folder. QGIS calls :func:`classFactory`;
everything else is imported lazily so that loading the plugin stays cheap and the
backend stays importable without QGIS (``import cloudseg.backend``).
"""

from __future__ import annotations

from typing import Any


def classFactory(iface: Any) -> Any:
    """Create the plugin instance for QGIS.

    Args:
        iface: The ``QgisInterface`` of the running QGIS.

    Returns:
        The :class:`~cloudseg.cloudseg_plugin.plugin.CloudSegPlugin` instance.
    """
    from .cloudseg_plugin.packages import activate_packages

    activate_packages()  # cloudseg's own packages, after QGIS's on sys.path
    from .cloudseg_plugin.plugin import CloudSegPlugin

    return CloudSegPlugin(iface)
