"""Install a plugin zip into an empty profile as QGIS's "Install from ZIP" does, start it.

Run in a fresh interpreter (the test's own process already has cloudseg imported):
``python zip_install_helper.py ZIP PLUGINS_DIR``. Prints a JSON summary on stdout.
"""

import json
import sys
import zipfile
from pathlib import Path

sys.path[:0] = ["/usr/share/qgis/python", "/usr/share/qgis/python/plugins"]

from pytest_qgis.mock_qgis_classes import MockMessageBar  # noqa: E402
from pytest_qgis.qgis_interface import QgisInterface  # noqa: E402
from qgis.core import QgsApplication  # noqa: E402

app = QgsApplication([], True)
app.initQgis()

import qgis.utils  # noqa: E402
from processing.core.Processing import Processing  # noqa: E402
from pyplugin_installer.unzip import unzip  # noqa: E402
from qgis.core import Qgis  # noqa: E402
from qgis.gui import QgsMapCanvas  # noqa: E402
from qgis.PyQt.QtWidgets import QMainWindow  # noqa: E402

Processing.initialize()
zip_path, plugins_dir = Path(sys.argv[1]), Path(sys.argv[2])
window = QMainWindow()
bar = MockMessageBar()
qgis.utils.iface = QgisInterface(QgsMapCanvas(window), bar, window)

# The same steps as pyplugin_installer's installFromZipFile.
with zipfile.ZipFile(zip_path) as archive:
    metadata_files = sorted(n for n in archive.namelist() if n.endswith("metadata.txt"))
name = Path(metadata_files[0]).parent.name
unzip(str(zip_path), str(plugins_dir))
qgis.utils.plugin_paths = [str(plugins_dir)]
qgis.utils.home_plugin_path = str(plugins_dir)
sys.path.insert(0, str(plugins_dir))
qgis.utils.updateAvailablePlugins()
loaded = qgis.utils.loadPlugin(name)
started = qgis.utils.startPlugin(name)

registry = QgsApplication.processingRegistry()
provider = registry.providerById("cloudseg")
module = sys.modules.get(name)
summary = {
    "name": name,
    "available": name in qgis.utils.available_plugins,
    "loaded": loaded,
    "started": started,
    "module_file": getattr(module, "__file__", None),
    "metadata_version": qgis.utils.pluginMetadata(name, "version"),
    "algorithms": [a.id() for a in provider.algorithms()] if provider else [],
    "critical_messages": bar.get_messages(Qgis.Critical),
}
qgis.utils.unloadPlugin(name)
summary["provider_after_unload"] = registry.providerById("cloudseg") is not None
print(json.dumps(summary))
app.exitQgis()
