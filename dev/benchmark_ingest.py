#!/usr/bin/env python3
"""Benchmark ingestion throughput (MB/s) and window-read latency, on a folder and S3.

Throughput of ingesting to a folder and to an S3 endpoint, and the latency of reading
random 256 x 256 windows back from each.

The S3 endpoint is moto's server on 127.0.0.1 (started here, over HTTP, as MinIO would
be), so the figures include the HTTP round trips but no real network. The source is
the real CloudSEN12 patches (11 labeled, 509 x 509 x 3 float32), ingested ``--repeat``
times under different prefixes. Writes JSON with the figures, the machine and versions.

Usage: benchmark_ingest.py --data ../shared/data/real --out dev/results/ingest.json
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from benchmark_common import write_results


def start_moto() -> tuple[subprocess.Popen, str]:
    """Start moto's S3 server on a free local port; return it and its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
            return server, url
        except OSError:
            time.sleep(0.1)
    raise SystemExit("moto server did not start")


def measure(source: Path, stores: list[str], windows: int) -> dict:
    """Ingest into each store, then read random windows back."""
    from cloudseg.backend.store.dataset import open_dataset
    from cloudseg.backend.store.ingest import ingest

    megabytes, seconds = 0.0, 0.0
    for store in stores:
        result = ingest(source, store, env_file=None, report=False)
        megabytes += result.megabytes
        seconds += result.seconds
    dataset = open_dataset(stores[0], env_file=None)
    scenes = dataset.scenes()
    rng = np.random.default_rng(0)
    latencies = []
    for _ in range(windows):
        scene = scenes[rng.integers(len(scenes))]
        rows, cols = dataset.shape(scene)
        row, col = rng.integers(rows - 256), rng.integers(cols - 256)
        start = time.perf_counter()
        dataset.read(scene, window=(int(row), int(col), 256, 256))
        latencies.append((time.perf_counter() - start) * 1000)
    return {
        "scenes": len(scenes) * len(stores),
        "megabytes": round(megabytes, 1),
        "seconds": round(seconds, 2),
        "megabytes_per_second": round(megabytes / seconds, 1),
        "window_read_ms": {
            "median": round(statistics.median(latencies), 2),
            "p95": round(float(np.percentile(latencies, 95)), 2),
            "reads": windows,
        },
    }


def main() -> int:
    """Run the benchmark and write its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("dev/results/ingest.json"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--windows", type=int, default=200)
    args = parser.parse_args()
    source = args.data / "cloudsen12_figures"

    import boto3

    server, url = start_moto()
    try:
        os.environ.update(MINIO_ENDPOINT=url, MINIO_ACCESS_KEY="bench", MINIO_SECRET_KEY="bench")
        boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            region_name="us-east-1",
        ).create_bucket(Bucket="bench")
        with tempfile.TemporaryDirectory() as tmp:
            local = measure(source, [f"{tmp}/run{i}" for i in range(args.repeat)], args.windows)
        s3 = measure(source, [f"s3://bench/run{i}" for i in range(args.repeat)], args.windows)
    finally:
        server.terminate()
        server.wait()

    report = {
        "benchmark": "cloudseg ingest: CloudSEN12 figure patches (real), Zarr + STAC",
        "source": "cloudsen12_figures: 11 labeled patches, 509 x 509 x 3 float32 + uint8 mask",
        "local_folder": local,
        "s3_moto_server_http_127_0_0_1": s3,
        "notes": "MB = image + mask bytes before compression; windows are 256 x 256, "
        "all bands, random scene and position, one read each (no cache)",
    }
    write_results(report, ("cloudseg", "zarr", "numcodecs", "boto3", "moto", "pystac"), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
