"""The Dask cluster of a batch: an existing one, or a local one sized to the machine.

A local cluster has one worker process per GPU (each sees its own GPU alone), else one
per 4 cores, each running one scene at a time with its share of the cores
(:func:`machine_workers`, :func:`worker_environments`). It listens on the loopback
interface only, with TLS and a key made for the run where ``cryptography`` is installed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import InputError

#: Where the local cluster listens: this machine only.
LOOPBACK = "127.0.0.1"


def gpu_count() -> int:
    """NVIDIA GPUs on this machine (NVML), 0 where there are none or no driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no library, no driver, no GPU: the CPU runs the models
        return 0


def machine_workers(
    workers: int | None, cores: int | None = None, gpus: int = 0
) -> tuple[int, int]:
    """(workers, inference threads per worker) for a local cluster.

    By default one worker per GPU where there are GPUs, else one per 4 cores. Each
    worker runs one scene at a time; its inference uses its share of the cores.
    """
    if cores is None:
        affinity = getattr(os, "sched_getaffinity", None)
        cores = len(affinity(0)) if affinity else os.cpu_count() or 1
    if workers is not None and workers < 1:
        raise InputError(f"--workers {workers}: give at least 1")
    count = workers or gpus or max(1, cores // 4)
    return count, max(1, cores // count)


def worker_environments(workers: int, threads: int, gpus: int) -> list[dict[str, str]]:
    """Each local worker's environment: its share of the cores, and its own GPU.

    With GPUs, worker i sees GPU ``i % gpus`` alone (``CUDA_VISIBLE_DEVICES``), so
    every GPU segments one scene at a time.
    """
    base = {"CLOUDSEG_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    if not gpus:
        return [dict(base) for _ in range(workers)]
    return [base | {"CUDA_VISIBLE_DEVICES": str(i % gpus)} for i in range(workers)]


def _local_security() -> Any:
    """TLS with a key and certificate made for this run, or None without ``cryptography``.

    With it, only this process and its workers hold the key: another user of the machine
    cannot join the cluster or run code in its workers, although it listens on loopback.
    """
    try:
        from distributed.security import Security

        return Security.temporary()
    except ImportError:  # cryptography is not installed: loopback alone
        return None


def _quiet_dask() -> None:
    """Dask's own logging: errors in the workers are reported as scene records instead."""
    for name in ("distributed", "tornado", "bokeh"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


@contextlib.contextmanager
def dask_client(
    scheduler: str | None, workers: int, threads: int, processes: bool = True
) -> Iterator[Any]:
    """A Dask client: of an existing cluster (``scheduler``), else of a local cluster.

    The local cluster listens on ``127.0.0.1`` only (scheduler, workers, dashboard), with
    TLS where ``cryptography`` is installed; its workers are processes, or threads of
    this one (``processes`` False: inside QGIS, whose interpreter cannot start worker
    processes; they then talk in memory, with no port at all). An existing cluster is
    reached with Dask's own security configuration (``distributed.comm.tls``: see
    docs/batch.md).

    Raises:
        InputError: If the scheduler cannot be reached or refuses the connection.
    """
    from distributed import Client, LocalCluster

    silent = logging.CRITICAL
    if scheduler:
        try:
            client = (
                Client(scheduler_file=scheduler) if Path(scheduler).is_file() else Client(scheduler)
            )
        except Exception as exc:  # OSError, TimeoutError, ssl and TypeError for TLS set-ups
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(
                f"cannot reach the Dask scheduler {scheduler} ({reason}); check the address, "
                "and for tls:// the certificates in Dask's distributed.comm.tls settings "
                "(see docs/batch.md)"
            ) from None
        try:
            yield client
        finally:
            client.close()
        return
    if processes:  # one process per worker, one scene at a time each (and per GPU)
        from distributed import Nanny, Scheduler, SpecCluster

        security = _local_security()
        protocol = "tls://" if security else "tcp://"
        listen = {"host": LOOPBACK, "protocol": protocol, "security": security}
        environments = worker_environments(workers, threads, gpu_count())
        spec = {
            i: {"cls": Nanny, "options": listen | {
                "nthreads": 1, "env": env, "silence_logs": silent,
                "dashboard_address": f"{LOOPBACK}:0",
            }}
            for i, env in enumerate(environments)
        }  # fmt: skip
        scheduler_spec = {
            "cls": Scheduler,
            "options": listen | {"dashboard_address": f"{LOOPBACK}:0"},
        }
        cluster: Any = SpecCluster(
            workers=spec, scheduler=scheduler_spec, silence_logs=silent, security=security
        )
    else:  # one worker of ``workers`` threads in this process, in memory (inproc://)
        cluster = LocalCluster(
            processes=False, n_workers=1, threads_per_worker=workers,
            dashboard_address=f"{LOOPBACK}:0", worker_dashboard_address=f"{LOOPBACK}:0",
            silence_logs=silent,
        )  # fmt: skip
    _quiet_dask()
    with cluster, Client(cluster, security=getattr(cluster, "security", None)) as client:
        yield client
