#!/usr/bin/env python3
"""``cloudseg serve``: time to a result through each face against the CLI, and throughput.

On one real Sentinel-2 L2A chip (On Cloud N ``adwp``, 512 x 512 px, its band files
stacked into one GeoTIFF with named bands), with the same run options everywhere
(``product_level`` L2A, every output the server's jobs write):

1. **CLI**: ``cloudseg segment CHIP OUT --json`` as a fresh process, ``--repeat`` times:
   the wall time a user waits (interpreter start, imports, model load, run, outputs)
   and the run's own ``seconds`` from ``--json``. A server job always writes
   probabilities, uncertainty, valid mask, polygons, statistics and a STAC Item, so the
   CLI writes them too (``--probabilities --uncertainty --valid --polygons --stats
   --stac-item``); the server also draws PNG previews and a GeoJSON, which the CLI does not.
2. **Server start**: process start to the "listening on" line, and to the first answered
   request (``GET /ogc/``), for each server started.
3. **OGC face** (server already started): the first job (cold: the model loads in the
   job thread) and ``--repeat`` warm jobs: ``POST /ogc/processes/segment/execution``
   (synchronous) until the result document with its links, plus fetching the mask.
4. **Web face**: headless Chromium (Debian's, as the tests drive it) opens the page,
   uploads the chip, picks L2A, clicks Segment and waits for "Done": page load and
   upload timed apart from click-to-Done. On its own server, so its first run is cold.
5. **Throughput**: ``--clients`` threads, each ``--jobs`` synchronous OGC jobs one after
   another (request + mask fetch), with ``--concurrency`` 1 and 2: jobs per minute and
   per-job latency. Each job thread keeps its own model, so the run starts after one
   untimed job per job thread.

Overhead = a face's median time to the mask minus the CLI's median wall time (what the
server saves or costs a user), and minus the job's own engine ``seconds`` (what HTTP,
the queue, the previews and the GeoJSON add to the run).

Usage: benchmark_serve.py --data ../shared/data/real --out dev/results/serve.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmark_common import write_results

ROOT = Path(__file__).resolve().parents[1]
# The test suite's browser and server helpers, and the page screenshot's sample stack.
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "scripts")]

from browser import chromium, upload, wait_for  # noqa: E402
from screenshot_serve import stack  # noqa: E402
from serving import Server, start_server  # noqa: E402

#: The real chip and the options every run uses.
CHIP = "oncloudn_l2a/adwp"
OPTIONS = {"product_level": "L2A"}
#: The flags of ``cloudseg segment`` that write what a server job writes, by the job's
#: result name (file names from the server's own table, ``SEGMENT_FILES``).
CLI_OUTPUTS = {
    "--probabilities": "probabilities",
    "--uncertainty": "uncertainty",
    "--valid": "valid",
    "--polygons": "polygons",
    "--stats": "statistics",
    "--stac-item": "stac_item",
}
TIMEOUT = 300


def spread(values: list[float]) -> dict[str, Any]:
    """Median, min and max of ``values`` (seconds), rounded, with every value."""
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "runs": [round(v, 3) for v in values],
    }


def p90(values: list[float]) -> float:
    """The 90th percentile of ``values`` (linear between the closest ranks)."""
    return round(statistics.quantiles(values, n=10, method="inclusive")[8], 3)


def cli_runs(cloudseg: Path, chip: Path, work: Path, repeat: int) -> dict[str, Any]:
    """``cloudseg segment`` as a fresh process: wall seconds and the run's own seconds."""
    walls, own = [], []
    for i in range(repeat + 1):  # the first warms the file cache and is not counted
        out = work / f"cli{i}"
        out.mkdir()
        extra = [x for flag, name in CLI_OUTPUTS.items() for x in (flag, str(files(out)[name]))]
        command = [str(cloudseg), "segment", str(chip), str(files(out)["mask"]), "--json", "-q",
                   "--product-level", OPTIONS["product_level"], *extra]  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - started
        result = json.loads(done.stdout)
        if i:
            walls.append(wall)
            own.append(result["seconds"])
    extra_work = server_extra_work(chip, [work / f"cli{i}" for i in range(1, repeat + 1)])
    return {
        "command": "cloudseg segment CHIP OUT --json -q --product-level L2A "
        + " ".join(f"{flag} PATH" for flag in CLI_OUTPUTS),
        "wall_seconds": spread(walls),
        "run_seconds": spread(own),
        "model": result["model"],
        "runner": result["runner"],
        "note": "wall = fresh process to exit (what a user waits); run = the result's "
        "'seconds'; one untimed run first warms the file cache",
        "server_extra_work_s": extra_work,
    }


def files(folder: Path) -> dict[str, Path]:
    """The result files of a segment job in ``folder``, by name (the server's own names)."""
    from cloudseg.backend.serve.processes import SEGMENT_FILES

    return {name: folder / file for name, (file, _) in SEGMENT_FILES.items()}


def server_extra_work(chip: Path, folders: list[Path]) -> dict[str, Any]:
    """Seconds of what a job does beyond ``segment``, on the CLI's outputs in ``folders``.

    The server's own functions, in this process: the GeoJSON of the polygons and the
    PNG previews (the first call, which imports matplotlib, is not counted).
    """
    import matplotlib

    matplotlib.use("Agg")
    from cloudseg.backend.serve.processes import segment_options
    from cloudseg.backend.serve.render import geojson_from_gpkg, segment_previews

    geojson, previews = [], []
    for i, folder in enumerate([folders[0], *folders]):
        results = files(folder)
        options = segment_options({"input": str(chip), **OPTIONS}, folder)
        started = time.perf_counter()
        geojson_from_gpkg(results["polygons"], results["polygons_geojson"])
        converted = time.perf_counter()
        segment_previews(str(chip), options, results, folder)
        drawn = time.perf_counter()
        if i:
            geojson.append(converted - started)
            previews.append(drawn - converted)
    return {
        "polygons_geojson": spread(geojson),
        "previews": spread(previews),
        "note": "the server's geojson_from_gpkg and segment_previews on the CLI's outputs, "
        "in one process: work a job does that the CLI does not",
    }


def start(cloudseg: Path, work: Path, root: Path, concurrency: int) -> Server:
    """A ``cloudseg serve`` on a free loopback port, and when it got ready."""
    import requests

    server = start_server(None, work, "--root", str(root), "--concurrency", str(concurrency),
                          command=cloudseg)  # fmt: skip
    asked = time.perf_counter()
    requests.get(f"{server.url}/ogc/?f=json", timeout=TIMEOUT).raise_for_status()
    server.startup = {  # type: ignore[attr-defined]
        "to_listening_line_s": round(server.started_s, 2),
        "to_first_answer_s": round(server.started_s + time.perf_counter() - asked, 2),
    }
    return server


def ogc_job(server: Server, chip: Path) -> dict[str, float]:
    """One synchronous OGC job and the mask fetched: seconds of each step."""
    import requests

    started = time.perf_counter()
    response = requests.post(
        f"{server.url}/ogc/processes/segment/execution",
        json={"inputs": {"input": str(chip), **OPTIONS}},
        timeout=TIMEOUT,
    )
    answered = time.perf_counter()
    if response.status_code != 200:
        raise SystemExit(f"job failed: {response.status_code} {response.text}")
    document = response.json()
    mask = requests.get(document["mask"]["href"], timeout=TIMEOUT)
    fetched = time.perf_counter()
    if mask.status_code != 200 or not mask.content.startswith((b"II*\x00", b"MM\x00*")):
        raise SystemExit(f"the mask did not come: {mask.status_code}")
    return {
        "request_s": answered - started,
        "mask_fetch_s": fetched - answered,
        "total_s": fetched - started,
        "run_s": document["summary"]["seconds"],
    }


def ogc_face(server: Server, chip: Path, repeat: int) -> dict[str, Any]:
    """The first (cold) job and ``repeat`` warm ones through OGC API - Processes."""
    cold = ogc_job(server, chip)
    warm = [ogc_job(server, chip) for _ in range(repeat)]
    return {
        "cold": {k: round(v, 3) for k, v in cold.items()},
        "warm": {k: spread([w[k] for w in warm]) for k in cold},
        "note": "request = POST .../segment/execution (synchronous) until the result "
        "document; mask_fetch = GET of its mask link; run = the job's own 'seconds'",
    }


def web_run(browser: Any, server: Server, chip: Path) -> dict[str, float]:
    """Open the page, pick L2A, upload, click Segment, wait for Done: seconds of each."""
    started = time.perf_counter()
    browser.get(server.url + "/")
    css = "#scene-upload input[type=file]"
    level = "#option-product_level input"
    # The page is built when its last controls are there (a file given to an input of a
    # page still being built can be dropped).
    wait_for(lambda: all(browser.find_elements("css selector", c) for c in (css, level, "#run")),
             60, "the page")  # fmt: skip
    loaded = time.perf_counter()
    browser.find_element("css selector", level).click()
    option = "//*[@role='option' and contains(normalize-space(), 'L2A')]"
    wait_for(lambda: browser.find_elements("xpath", option), 10, "the level choices")
    browser.find_element("xpath", option).click()
    uploading = time.perf_counter()
    upload(browser, "scene-upload", chip)
    uploaded_at = time.perf_counter()
    browser.find_element("id", "run").click()
    clicked = time.perf_counter()
    status = ""

    def done() -> bool:
        nonlocal status
        status = browser.find_element("id", "status").text
        if "Failed" in status or "Error" in status:
            raise SystemExit(f"the page's run failed: {status}")
        return "Done" in status

    wait_for(done, TIMEOUT, "Done")
    finished = time.perf_counter()
    summary = browser.find_element("id", "summary").text
    if "ukis-csmask-4b-l2a" not in summary:  # the page ran with the benchmark's options
        raise SystemExit(f"the page ran another model: {summary}")
    run = re.search(r"Done in ([\d.]+) s", status)
    return {
        "page_load_s": loaded - started,
        "upload_s": uploaded_at - uploading,
        "click_to_done_s": finished - clicked,
        "run_s": float(run[1]) if run else float("nan"),
    }


def web_face(server: Server, chip: Path, repeat: int) -> dict[str, Any]:
    """The page's first (cold) run and ``repeat`` warm ones, each on a freshly loaded page."""
    started = time.perf_counter()
    browser = chromium(1400, 1100)
    browser_s = time.perf_counter() - started
    try:
        cold = web_run(browser, server, chip)
        warm = [web_run(browser, server, chip) for _ in range(repeat)]
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        browser.quit()
    if errors:
        raise SystemExit(f"the page logged errors: {errors}")
    return {
        "browser_start_s": round(browser_s, 2),
        "cold": {k: round(v, 3) for k, v in cold.items()},
        "warm": {k: spread([w[k] for w in warm]) for k in cold},
        "note": "page_load = open the page until its upload control shows; upload = the "
        "chip sent until the page names it; click_to_done = Segment clicked until the "
        "status says Done (the page polls its job every 0.5 s); run = the seconds the "
        "page reports",
    }


def throughput(server: Server, chip: Path, clients: int, jobs: int, concurrency: int
               ) -> dict[str, Any]:  # fmt: skip
    """``clients`` threads, each ``jobs`` synchronous OGC jobs: jobs/min and latency."""
    with ThreadPoolExecutor(concurrency) as pool:  # one untimed job per job thread
        list(pool.map(lambda _: ogc_job(server, chip), range(concurrency)))

    def client(_: int) -> list[dict[str, float]]:
        return [ogc_job(server, chip) for _ in range(jobs)]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client, range(clients)) for r in rs]
    wall = time.perf_counter() - started
    latency = [r["total_s"] for r in results]
    return {
        "concurrency": concurrency,
        "clients": clients,
        "jobs": len(results),
        "wall_s": round(wall, 2),
        "jobs_per_minute": round(60 * len(results) / wall, 1),
        "latency_s": {"median": round(statistics.median(latency), 3), "p90": p90(latency),
                      "min": round(min(latency), 3), "max": round(max(latency), 3)},
        "run_s_median": round(statistics.median(r["run_s"] for r in results), 3),
    }  # fmt: skip


def table(report: dict[str, Any]) -> str:
    """The figures as a short text table."""
    cli, ogc, web = report["cli"], report["ogc"], report["web"]
    rows = [
        ("CLI, fresh process (wall)", cli["wall_seconds"]["median"], None),
        ("CLI, the run's own seconds", cli["run_seconds"]["median"], None),
        ("OGC, first job (cold)", ogc["cold"]["total_s"], None),
        ("OGC, warm job: the run's own seconds", ogc["warm"]["run_s"]["median"], None),
        ("server job's PNG previews (not in CLI)",
         cli["server_extra_work_s"]["previews"]["median"], None),
        ("OGC, warm job (request + mask)", ogc["warm"]["total_s"]["median"],
         report["overhead"]["ogc_warm_vs_cli_wall_s"]),
        ("web, first run click-to-Done (cold)", web["cold"]["click_to_done_s"], None),
        ("web, warm click-to-Done", web["warm"]["click_to_done_s"]["median"],
         report["overhead"]["web_warm_vs_cli_wall_s"]),
        ("web, upload (warm page)", web["warm"]["upload_s"]["median"], None),
    ]  # fmt: skip
    lines = [f"{'what':42} {'seconds':>8} {'vs CLI':>8}"]
    lines += [f"{name:42} {s:8.2f} {'' if d is None else f'{d:+8.2f}'}" for name, s, d in rows]
    for run in report["throughput"]:
        lines.append(
            f"{run['clients']} clients, --concurrency {run['concurrency']}: "
            f"{run['jobs_per_minute']} jobs/min, latency median {run['latency_s']['median']} s, "
            f"p90 {run['latency_s']['p90']} s"
        )
    return "\n".join(lines)


def main() -> int:
    """Run every measurement, write the JSON and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("dev/results/serve.json"))
    parser.add_argument("--repeat", type=int, default=5, help="warm runs of each face")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=5, help="jobs per client")
    args = parser.parse_args()
    cloudseg = Path(sys.executable).parent / "cloudseg"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "root").mkdir()
        chip = stack(args.data / CHIP, work / "root" / "adwp.tif")
        cli = cli_runs(cloudseg, chip, work, args.repeat)
        # Server 1 (--concurrency 1): OGC cold and warm, then throughput.
        first = start(cloudseg, work / "serve1", work / "root", 1)
        try:
            ogc = ogc_face(first, chip, args.repeat)
            runs = [throughput(first, chip, args.clients, args.jobs, 1)]
        finally:
            first.stop()
        # Server 2 (--concurrency 2): the web page cold and warm, then throughput.
        second = start(cloudseg, work / "serve2", work / "root", 2)
        try:
            web = web_face(second, chip, args.repeat)
            runs.append(throughput(second, chip, args.clients, args.jobs, 2))
        finally:
            second.stop()
    cli_wall = cli["wall_seconds"]["median"]
    beyond = ogc["warm"]["total_s"]["median"] - ogc["warm"]["run_s"]["median"]
    report = {
        "benchmark": "cloudseg serve on one real Sentinel-2 L2A chip (On Cloud N adwp, "
        "512 x 512 px, 4 bands), product_level L2A, on this machine: time to a result "
        "through the OGC API and the web page against the CLI, and throughput of "
        f"{args.clients} concurrent OGC clients",
        "chip": f"{CHIP} stacked into one GeoTIFF (B02, B03, B04, B08 named)",
        "outputs": "every run writes the mask, probabilities, uncertainty, valid mask, "
        "polygons, statistics and a STAC Item (the CLI with --probabilities --uncertainty "
        "--valid --polygons --stats --stac-item); server jobs also write PNG previews and "
        "a GeoJSON of the polygons",
        "cli": cli,
        "server_startup": [first.startup, second.startup],
        "ogc": ogc,
        "web": web,
        "overhead": {
            "ogc_cold_vs_cli_wall_s": round(ogc["cold"]["total_s"] - cli_wall, 3),
            "ogc_warm_vs_cli_wall_s": round(ogc["warm"]["total_s"]["median"] - cli_wall, 3),
            "web_cold_vs_cli_wall_s": round(web["cold"]["click_to_done_s"] - cli_wall, 3),
            "web_warm_vs_cli_wall_s": round(web["warm"]["click_to_done_s"]["median"] - cli_wall, 3),
            "ogc_warm_beyond_run_s": round(beyond, 3),
            "ogc_warm_http_and_queue_s": round(
                beyond
                - cli["server_extra_work_s"]["previews"]["median"]
                - cli["server_extra_work_s"]["polygons_geojson"]["median"],
                3,
            ),
            "note": "negative: the face gives the mask sooner than a fresh CLI process "
            "(the server has already imported everything and keeps the model loaded); "
            "beyond_run = a warm OGC job's request + mask fetch minus the job's own "
            "seconds (HTTP, queue, previews, GeoJSON); http_and_queue = that less the medians of "
            "the previews and the GeoJSON (cli.server_extra_work_s)",
        },
        "throughput": runs,
        "throughput_note": f"{args.clients} client threads, each {args.jobs} synchronous "
        "OGC jobs in a row (request + mask fetch); one untimed job per job thread first",
        "serial_cli_jobs_per_minute": round(60 / cli_wall, 1),
        "benchmark_seconds": round(time.perf_counter() - started, 1),
    }
    write_results(report, ("cloudseg", "gradio", "pygeoapi", "uvicorn", "openvino",
                           "onnxruntime", "selenium"), args.out)  # fmt: skip
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
