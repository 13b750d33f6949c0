"""The real ``cloudseg serve`` process, started by the tests on a free port."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import BANDS, stack_bands
from ..serving import Server, start_server


@pytest.fixture(scope="session")
def serve_files(real_data, tmp_path_factory) -> Path:
    """A folder the server may read: the real chip as one multi-band GeoTIFF."""
    root = tmp_path_factory.mktemp("serve-root")
    stack_bands(real_data / "oncloudn_l2a/adwp", root / "chip.tif", BANDS)
    return root


@pytest.fixture(scope="session")
def server(venv_env, serve_files, tmp_path_factory) -> Iterator[Server]:
    """One loopback server reading ``serve_files``, for the session's tests."""
    env = dict(venv_env)
    env.pop("CLOUDSEG_SERVE_TOKEN", None)
    proc = start_server(env, tmp_path_factory.mktemp("serve-work"), "--root", str(serve_files))
    yield proc
    proc.stop()


def cli_segment(env: dict[str, str], scene: Path, out: Path, *flags: str) -> Path:
    """The mask ``cloudseg segment`` writes for ``scene`` with ``flags``."""
    subprocess.run(["cloudseg", "segment", str(scene), str(out), "-q", *flags], env=env, check=True)
    return out


def same_mask(a: Path, b: Path) -> None:
    """Assert two class rasters are the same: pixels, grid, classes and provenance.

    Two runs of ``cloudseg segment`` on the same input never give the same bytes: the
    raster records when it was made and how long each stage took
    (``CLOUDSEG_CREATED``, ``CLOUDSEG_ACCOUNTING``), and where its bands were read
    (``CLOUDSEG_BAND_MAPPING``: an upload lies in the server's folder). Everything else
    must match, the band mapping's file names and band numbers included.
    """
    import json

    import numpy as np
    import rasterio

    def bands(tags: dict[str, str]) -> dict[str, str]:
        return {k: Path(v).name for k, v in json.loads(tags.pop("CLOUDSEG_BAND_MAPPING")).items()}

    with rasterio.open(a) as x, rasterio.open(b) as y:
        assert np.array_equal(x.read(), y.read())
        assert x.profile == y.profile
        assert x.colormap(1) == y.colormap(1)
        timing = ("CLOUDSEG_CREATED", "CLOUDSEG_ACCOUNTING")
        tags = [{k: v for k, v in d.tags().items() if k not in timing} for d in (x, y)]
        assert bands(tags[0]) == bands(tags[1])
        assert tags[0] == tags[1]
        assert [x.overviews(1), x.block_shapes] == [y.overviews(1), y.block_shapes]


os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
