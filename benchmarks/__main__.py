"""Scrape cost and poll throughput with many jobs, exporter and simulator on 127.0.0.1.

    python -m benchmarks [--jobs 2000] [--scrapes 50]

Prints: the time to poll every job once, the size of /metrics, and scrape latency percentiles
(in-process render and over HTTP). Figures, not pass/fail: compare them across changes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import requests
from prometheus_client import generate_latest

from exporter import logging as exporter_logging
from exporter.app import Exporter
from exporter.config import parse_config
from exporter.server import HttpServer, make_app
from exporter.simulator import DEMO_JOBS, ManualClock, SimJob, Simulator, demo_config


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered) * 1000:7.1f} ms   p99 {p99 * 1000:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--jobs", type=int, default=2000, help="jobs to track (default %(default)s)"
    )
    parser.add_argument(
        "--scrapes", type=int, default=50, help="scrapes to time (default %(default)s)"
    )
    args = parser.parse_args()
    exporter_logging.configure("error", "console")

    templates = {job.api: job for job in DEMO_JOBS}
    per_source = args.jobs // len(templates)
    jobs = [
        SimJob(f"{api}-{i}", api, duration=template.duration, units=template.units)
        for api, template in templates.items()
        for i in range(per_source)
    ]
    with Simulator(jobs=tuple(jobs), clock=ManualClock(60.0)) as sim:
        raw = demo_config(sim.url)
        raw["global"]["max_concurrency"] = 16
        for source in raw["sources"]:
            api = {
                "azure_language_training": "training",
                "azure_language_analyze_text": "analyze_text",
                "azure_text_analytics_analyze": "text_analytics",
                "azure_document_translation": "translation",
                "stable_diffusion_finetune": "stable_diffusion",
            }[source["provider"]]
            source["job_ids"] = [job.job_id for job in jobs if job.api == api]
        exporter = Exporter(parse_config(raw, env={}))
        server = HttpServer(
            make_app(exporter.registry, "/metrics", exporter.not_ready), "127.0.0.1:0"
        )
        server.start()
        try:
            started = time.perf_counter()
            exporter.poll_once()
            poll_seconds = time.perf_counter() - started
            renders, scrapes = [], []
            for _ in range(args.scrapes):
                t0 = time.perf_counter()
                body = generate_latest(exporter.registry)
                renders.append(time.perf_counter() - t0)
            session = requests.Session()
            url = f"http://127.0.0.1:{server.port}/metrics"
            for _ in range(args.scrapes):
                t0 = time.perf_counter()
                response = session.get(url, timeout=30)
                scrapes.append(time.perf_counter() - t0)
                response.raise_for_status()
        finally:
            exporter.stop()
            server.stop()
    total = per_source * len(templates)
    print(f"jobs tracked            {total}")
    print(f"poll all once           {poll_seconds:7.2f} s  ({total / poll_seconds:,.0f} jobs/s)")
    lines = body.count(b"\n")
    print(f"/metrics size           {len(body) / 1024:7.0f} KiB, {lines:,} lines")
    print(f"render (in process)     {_percentiles(renders)}   over {args.scrapes} renders")
    print(f"scrape (HTTP, serial)   {_percentiles(scrapes)}   over {args.scrapes} scrapes")


if __name__ == "__main__":
    main()
