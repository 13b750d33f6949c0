"""The server client runs in QGIS's own Python: it needs none of cloudseg's packages."""

from __future__ import annotations

import subprocess
import sys


def test_the_server_client_imports_nothing_beyond_the_standard_library():
    code = (
        "import sys, cloudseg.backend.remote\n"
        "heavy = {'numpy', 'rasterio', 'requests', 'onnxruntime', 'torch', 'pydantic'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
