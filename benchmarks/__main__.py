"""Scrape cost and a concurrent-scrape load test, exporter and simulator on 127.0.0.1 only.

    python -m benchmarks [--jobs 2000] [--scrapers 100] [--rounds 3]

Prints: the time to poll every job once, the size of /metrics, serial scrape latency, and the
latency of `--scrapers` concurrent scrapers over `--rounds` rounds while the exporter keeps
polling. Bounded: scrapers x rounds requests, each with a 60 s timeout. Exits 1 if any scrape
failed; otherwise the figures are for reading, not pass/fail.

Then the upstream cost of `--cost-jobs` jobs of the provider whose part of the simulator takes
the `polled` role (Translator batches today; one in ten running), counted at the simulator in
the same run: requests per tracked job per interval when each job is polled alone, and when the
source lists its jobs (discovery), side by side.

The providers are chosen by the roles their simulator parts take (exporter/simulator/kit.py,
`Bench`), never by name; the load test takes every provider's demo source.

Last, what `--prometheus-jobs` jobs cost the Prometheus that scrapes them (benchmarks/
prometheus_cost.py); `--only prometheus` runs that part alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from typing import Any

import requests

from benchmarks import prometheus_cost, scale
from exporter import logging as exporter_logging
from exporter.app import Exporter
from exporter.config import parse_config
from exporter.server import HttpServer, make_app
from exporter.simulator import DEMO_JOBS, ManualClock, SimJob, Simulator, demo_config


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    median, worst = statistics.median(ordered) * 1000, ordered[-1] * 1000
    return f"p50 {median:8.1f} ms   p99 {p99 * 1000:8.1f} ms   max {worst:8.1f} ms"


def _concurrent(url: str, scrapers: int, rounds: int) -> tuple[list[float], int]:
    """`scrapers` threads scrape together, `rounds` times; returns latencies and failures."""
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    barrier = threading.Barrier(scrapers)

    def scrape() -> None:
        nonlocal failures
        session = requests.Session()
        for _ in range(rounds):
            barrier.wait(timeout=120)
            started = time.perf_counter()
            try:
                ok = session.get(url, timeout=60).status_code == 200
            except requests.RequestException:
                ok = False
            with lock:
                latencies.append(time.perf_counter() - started)
                failures += not ok

    threads = [threading.Thread(target=scrape) for _ in range(scrapers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, failures


COST_INTERVAL = 5.0  # seconds: the poll interval of the per-job side of the cost figure


def _cost_jobs(n: int) -> tuple[SimJob, ...]:
    """n jobs of the polled provider created 5 s apart (all within a day), one in ten still
    running."""
    provider, _ = scale.the_one(scale.polled)
    return tuple(
        SimJob(f"b-{i}", provider, start_delay=0, units=2, created_at=-600 - 5 * i,
               duration=10**7 if i % 10 == 0 else 5)
        for i in range(n)
    )  # fmt: skip


def _polled_source(sim: Simulator) -> dict[str, Any]:
    """The demo's source of the polled provider."""
    provider, _ = scale.the_one(scale.polled)
    raw = demo_config(sim.url, poll_interval=f"{COST_INTERVAL:g}s")
    return next(source for source in raw["sources"] if source["provider"] == provider)


def _cost_exporter(sim: Simulator, **keys: object) -> Exporter:
    raw = demo_config(sim.url, poll_interval=f"{COST_INTERVAL:g}s")
    raw["global"]["max_concurrency"] = 16
    raw["sources"] = [{**_polled_source(sim), **keys}]
    return Exporter(parse_config(raw, env={}))


def request_cost(n: int) -> tuple[float, float]:
    """Upstream requests per tracked job per interval, (per-job polling, list mode), at n jobs,
    in the steady state (after the first cycle)."""
    jobs = _cost_jobs(n)
    with Simulator(jobs=jobs, clock=ManualClock(60.0)) as sim:
        exporter = _cost_exporter(sim, job_ids=[job.job_id for job in jobs], max_jobs=n)
        try:
            exporter.poll_once()  # the first cycle: every job once
            exporter.start()
            before = len(sim.requests)
            time.sleep(3 * COST_INTERVAL)
            per_job = (len(sim.requests) - before) / 3 / n
        finally:
            exporter.stop()
    with Simulator(jobs=jobs, clock=ManualClock(60.0)) as sim:
        exporter = _cost_exporter(sim, job_ids=[], discovery={}, max_jobs=n)
        try:
            poller = exporter.pollers[_polled_source(sim)["name"]]
            poller.list_now()  # the first listing: the whole lookback
            before = len(sim.requests)
            for _ in range(3):
                poller.list_now()
            listed = (len(sim.requests) - before) / 3 / len(exporter.store.jobs())
        finally:
            exporter.stop()
    return per_job, listed


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--jobs", type=int, default=2000, help="jobs to track (default %(default)s)"
    )
    parser.add_argument(
        "--scrapers", type=int, default=100, help="concurrent scrapers (default %(default)s)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="scrapes per scraper (default %(default)s)"
    )
    parser.add_argument(
        "--sizes", default="1000,10000,50000",
        help="job counts for the scale figures, comma-separated (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--cycle-jobs", type=int, default=10_000,
        help="jobs for the first-cycle figure (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--cost-jobs", type=int, default=10_000,
        help="jobs of the polled provider (one in ten running) for the request-cost and the "
        "CPU-per-poll figures (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--prometheus-jobs", type=int, default=10_000,
        help="jobs for the cost to a scraping Prometheus (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--only", choices=("prometheus",),
        help="run only this part: the cost to a scraping Prometheus",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true",
        help="the CI form, under two minutes: 200 jobs, 20 scrapers, sizes 1000 and 5000, "
        "2000 jobs for the first cycle, the request cost and CPU per poll, 1000 for the "
        "Prometheus cost",
    )  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.scrapers, args.rounds = 200, 20, 1
        args.sizes, args.cycle_jobs, args.cost_jobs = "1000,5000", 2000, 2000
        args.prometheus_jobs = 1000
    return args


def main() -> int:
    args = _arguments()
    exporter_logging.configure("error", "console")
    if args.only == "prometheus":
        prometheus_cost.report(args.prometheus_jobs)
        return 0

    templates = {job.api: job for job in DEMO_JOBS}  # the last demo job of each provider
    per_source = args.jobs // len(templates)
    with Simulator(jobs=(), clock=ManualClock(60.0)) as sim:
        raw = demo_config(sim.url, poll_interval="30s")  # the default interval
        raw["global"]["max_concurrency"] = 16
        for source in raw["sources"]:  # each demo source's jobs, named after it
            template = templates[source["provider"]]
            jobs = [SimJob(f"{source['name']}-{i}", template.api, duration=template.duration,
                           units=template.units) for i in range(per_source)]  # fmt: skip
            source["job_ids"] = [job.job_id for job in jobs]
            sim.add_jobs(jobs)
        exporter = Exporter(parse_config(raw, env={}))
        app = make_app(exporter.exposition, "/metrics", exporter.not_ready, exporter.store.jobs)
        server = HttpServer(app, "127.0.0.1:0")
        server.start()
        url = f"http://127.0.0.1:{server.port}/metrics"
        try:
            started = time.perf_counter()
            exporter.poll_once()
            poll_seconds = time.perf_counter() - started
            exporter.start()  # keep polling in the background during the load, as in production
            session = requests.Session()
            serial = []
            for _ in range(10):
                t0 = time.perf_counter()
                body = session.get(url, timeout=60).content
                serial.append(time.perf_counter() - t0)
            latencies, failures = _concurrent(url, args.scrapers, args.rounds)
        finally:
            exporter.stop()
            server.stop()
    total = per_source * len(raw["sources"])
    print(f"jobs tracked              {total}")
    print(f"poll all once             {poll_seconds:8.2f} s  ({total / poll_seconds:,.0f} jobs/s)")
    lines = body.count(b"\n")
    print(f"/metrics size             {len(body) / 1024:8.0f} KiB, {lines:,} lines")
    print(f"scrape, one at a time     {_percentiles(serial)}   (10 scrapes)")
    print(
        f"scrape, {args.scrapers} at once    {_percentiles(latencies)}   "
        f"({len(latencies)} scrapes, {failures} failed)"
    )
    scale.report([int(n) for n in args.sizes.split(",")], args.cycle_jobs, args.cost_jobs)
    per_job, listed = request_cost(args.cost_jobs)
    provider, _ = scale.the_one(scale.polled)
    print(f"upstream requests per tracked job per interval, {args.cost_jobs:,} jobs of {provider} "
          "(one in ten running):")  # fmt: skip
    print(f"  polled one by one       {per_job:8.4f}   (1.0 per running job; finished: none)")
    print(f"  listed (discovery)      {listed:8.4f}   ({per_job / listed:,.0f}x fewer)")
    prometheus_cost.report(args.prometheus_jobs)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
