"""The Overview dashboard at 10,000 jobs, measured in a real Prometheus.

An exporter in this process (the real store, exposition and HTTP server; nothing polled) holds
10,000 jobs across the five providers, nine in ten finished, a few dozen whose polls fail, as
the outcomes of one poll each. Prometheus scrapes it every 2 s with the recording rules loaded.
Then each Overview query is asked as Grafana asks it, with every variable at "All": a table or
stat as an instant query over the dashboard's 24 hours, a time series over the stored samples at
1,000 steps (what a full-width panel asks for; a day of real data at Grafana's step touches no
more), a per-day or per-hour panel over its own range at its own step. Each must answer within
1 s and return at most 100 series; the slowest are printed.

Until the exporter side of issue 15 is merged, `asyncjob_finished_timestamp_seconds` and
`asyncjob_characters_charged_total` are served by a stand-in collector in the same registry, so
that Prometheus holds them at their real cardinality (one series per finished job, one per
source).
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
import requests
from conftest import REPO, Processes, start_prometheus, wait_until
from promql import (
    OVERVIEW,
    RECORDING_RULES,
    board,
    recording_rules,
    targets,
    variable_queries,
)

from exporter.api import Api
from exporter.app import Exporter
from exporter.config import parse_config
from exporter.model import Attempt, ErrorReason, JobSnapshot, PollOutcome, State
from exporter.server import HttpServer, make_app
from exporter.simulator import demo_config

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from promql import Target

pytestmark = pytest.mark.e2e

JOBS = 10_000
SHARE = {"translator": 4, "language-training": 2, "language-analyze": 2, "text-analytics": 1,
         "stable-diffusion": 1}  # tenths of the jobs  # fmt: skip
SCRAPE_SECONDS = 2
SCRAPES = 12  # stored before measuring
# What a query costs Prometheus is the series it reads and returns, which this test bounds; its
# wall-clock time on a shared machine is a figure to read (printed below), never an assertion.
MAX_SERIES = 100
NOW = datetime.now(UTC)
FINISHED = [State.SUCCEEDED] * 14 + [State.FAILED, State.PARTIALLY_SUCCEEDED, State.CANCELLED]
UNFINISHED = [State.RUNNING] * 3 + [State.NOT_STARTED]


def snapshot(source: str, i: int) -> JobSnapshot:
    """Job i of a source: finished nine times in ten, with what its provider reports."""
    created = NOW - timedelta(minutes=10 + i % 5000)
    state = UNFINISHED[i % 4] if i % 10 == 0 else FINISHED[i % len(FINISHED)]
    done = 1.0 if state is State.SUCCEEDED else (i % 97) / 100
    ended = created + timedelta(minutes=5 + i % 300)
    common: dict[str, Any] = {
        "state": state, "vendor_status": state.value, "created": created,
        "last_update": ended if state.terminal else NOW,
        "expiration": created + timedelta(days=7),
    }  # fmt: skip
    if source == "translator":
        total = 10
        succeeded = round(done * total)
        counts = {"succeeded": succeeded, "failed": total - succeeded if state.terminal else 0,
                  "in_progress": 0 if state.terminal else total - succeeded}  # fmt: skip
        return JobSnapshot(progress={"overall": done}, documents=counts,
                           characters_charged=1000 * succeeded, **common)  # fmt: skip
    if source == "language-training":
        return JobSnapshot(
            progress={"overall": done, "training": done, "evaluation": done if done == 1 else 0.0},
            started=created, display_name=f"model-{i}", warnings=0, errors=0,
            estimated_completion=None if state.terminal else NOW + timedelta(hours=1), **common,
        )  # fmt: skip
    if source in {"language-analyze", "text-analytics"}:
        completed = round(done * 4)
        tasks = {"completed": completed, "failed": 4 - completed if state.terminal else 0,
                 "in_progress": 0 if state.terminal else 4 - completed}  # fmt: skip
        return JobSnapshot(progress={"overall": done}, tasks=tasks, **common)
    return JobSnapshot(
        progress={"overall": done}, display_name=f"fine-tune-{i}",
        estimated_completion=None if state.terminal else NOW + timedelta(hours=2), **common,
    )  # fmt: skip


def exporter_with_jobs() -> Exporter:
    raw = demo_config("http://127.0.0.1:9")  # never asked: nothing polls
    counts = {name: JOBS * tenths // 10 for name, tenths in SHARE.items()}
    for source in raw["sources"]:
        jobs = counts.get(source["name"], 0)  # a source the shares leave out has none
        source["job_ids"] = [f"{source['name']}-{i}" for i in range(jobs)]
        source.pop("discovery", None)
    exporter = Exporter(parse_config(raw, env={}))
    attempt = (Attempt(0.2),)
    for source in raw["sources"]:
        for i, job_id in enumerate(source["job_ids"]):
            name = source["name"]
            if i % 250 == 7:  # never polled successfully: asyncjob_up 0 and a reason alone
                exporter.store.update(PollOutcome(name, job_id, NOW, (Attempt(0.1, ErrorReason.AUTH),),
                                                 error=ErrorReason.AUTH))  # fmt: skip
                continue
            exporter.store.update(
                PollOutcome(name, job_id, NOW, attempt, snapshot=snapshot(name, i))
            )
            if i % 100 == 10:  # running, and its latest poll failed
                exporter.store.update(PollOutcome(name, job_id, NOW, (Attempt(5.0, ErrorReason.TIMEOUT),),
                                                 error=ErrorReason.TIMEOUT))  # fmt: skip
    assert len(exporter.store.jobs()) == JOBS
    return exporter


def churn(exporter: Exporter, stop: threading.Event) -> None:
    """Twenty unfinished jobs finish every second, one in five failed, one poll in three
    retried after a 429: the counters, histograms and lists move as in a working day."""
    unfinished = [r for r in exporter.store.jobs() if r.snapshot and not r.snapshot.state.terminal]
    for k, record in enumerate(unfinished):
        if stop.wait(0.05):
            return
        assert record.snapshot is not None
        now = datetime.now(UTC)
        state = State.FAILED if k % 5 == 0 else State.SUCCEEDED
        done = replace(record.snapshot, state=state, vendor_status=state.value, last_update=now,
                       progress={**record.snapshot.progress, "overall": 1.0},
                       estimated_completion=None)  # fmt: skip
        attempts = (Attempt(0.3),) if k % 3 else (Attempt(0.1, ErrorReason.THROTTLED), Attempt(0.3))
        exporter.store.update(
            PollOutcome(record.source, record.job_id, now, attempts, snapshot=done)
        )


def grafana_requests(
    scraped_from: float, now: float
) -> Iterator[tuple[Target, str, dict[str, Any]]]:
    """Each Overview target as the request Grafana sends: (target, path, parameters)."""
    data = board(OVERVIEW)
    day = 86400.0
    values = {"$job": ".+", "$instance": ".+", "$provider": ".+", "$source": ".+",
              "$__rate_interval": "1m", "$__range": "86400s",
              "$price_per_million_characters": "15"}  # fmt: skip
    for t in targets(data):
        interval = t.panel.get("interval")
        expr = t.expr.replace("$__interval", interval or "1m")
        for name, value in values.items():
            expr = expr.replace(name, value)
        assert "$" not in expr, expr
        if t.instant:
            yield t, "query", {"query": expr, "time": now}
        elif interval:  # per day over the panel's own range, per hour over the dashboard's
            seconds = {"1d": day, "1h": 3600.0}[interval]
            span = 7 * day if t.panel.get("timeFrom") == "7d" else day
            yield (
                t,
                "query_range",
                {"query": expr, "start": now - span, "end": now, "step": seconds},
            )
        else:
            step = (now - scraped_from) / 1000
            yield t, "query_range", {"query": expr, "start": scraped_from, "end": now, "step": step}


def timed(url: str, path: str, params: dict[str, Any]) -> tuple[float, int]:
    """The median of three answers' wall time, and how many series (or values) came back."""
    times, count = [], 0
    for _ in range(3):
        started = time.perf_counter()
        answer = requests.get(f"{url}/api/v1/{path}", params=params, timeout=30)
        times.append(time.perf_counter() - started)
        assert answer.status_code == 200, (params, answer.text)
        count = len(
            answer.json()["data"] if path.startswith("label") else answer.json()["data"]["result"]
        )
    return statistics.median(times), count


def prometheus(processes: Processes, tmp_path: Path, port: int) -> str:
    """Prometheus scraping the exporter on `port` as job "asyncjob", with the recording rules."""
    return start_prometheus(processes, tmp_path, {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "scrape_timeout": f"{SCRAPE_SECONDS}s",
                   "evaluation_interval": f"{SCRAPE_SECONDS}s"},
        "rule_files": [str(RECORDING_RULES)],
        "scrape_configs": [{"job_name": "asyncjob",
                            "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
    })  # fmt: skip


Measured = list[tuple[float, int, str]]  # (seconds, series, what)


def measure(url: str, now: float) -> tuple[Measured, Measured, int]:
    """Every Overview query and variable as Grafana asks it at `now`, and each recording
    rule's expression; and the samples per scrape."""

    def instant(expr: str) -> list[dict[str, Any]]:
        answer = requests.get(f"{url}/api/v1/query", params={"query": expr, "time": str(now)},
                              timeout=30)  # fmt: skip
        result: list[dict[str, Any]] = answer.json()["data"]["result"]
        return result

    scraped_from = float(
        instant('min_over_time(timestamp(up{job="asyncjob"})[10m:1s])')[0]["value"][1]
    )
    samples = int(float(instant('scrape_samples_scraped{job="asyncjob"}')[0]["value"][1]))
    assert samples > 15 * JOBS  # every job's series are there
    measured: Measured = []
    for t, path, params in grafana_requests(scraped_from, now):
        seconds, count = timed(url, path, params)
        measured.append(
            (seconds, count, f"{t.where} ({'instant' if path == 'query' else 'range'})")
        )
    for name, selector, label in variable_queries(board(OVERVIEW)):
        expr = selector.replace("$job", ".+").replace("$instance", ".+").replace("$provider", ".+")
        seconds, count = timed(url, f"label/{label}/values",
                               {"match[]": expr, "start": now - 86400, "end": now})  # fmt: skip
        measured.append((seconds, count, f"variable {name}"))
    rules = [(*timed(url, "query", {"query": expr, "time": now}), f"rule {name}")
             for name, expr in recording_rules().items()]  # fmt: skip
    return sorted(measured, reverse=True), rules, samples


def test_every_overview_query_is_small_at_10000_jobs(
    processes: Processes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert 'job="asyncjob"' in (REPO / "monitoring.yaml").read_text()  # the job scraped here
    exporter = exporter_with_jobs()
    app = make_app(exporter.exposition, "/metrics", exporter.not_ready, exporter.store.jobs,
                   api=Api(exporter, jobs=False))  # fmt: skip
    server = HttpServer(app, "127.0.0.1:0")
    server.start()
    stop = threading.Event()
    moving = threading.Thread(target=churn, args=(exporter, stop), daemon=True)
    try:
        url = prometheus(processes, tmp_path, server.port)
        moving.start()

        def stored() -> float | None:
            answer = requests.get(f"{url}/api/v1/query", timeout=30, params={
                "query": 'count_over_time(up{job="asyncjob"}[10m]) and on () '
                         'count(job_id:asyncjob_created_timestamp_seconds:unfinished) > 0'})  # fmt: skip
            result = answer.json()["data"]["result"]
            return float(result[0]["value"][1]) if result else None

        wait_until(
            lambda: (stored() or 0) >= SCRAPES, timeout=90, what=f"{SCRAPES} scrapes of 10,000 jobs"
        )
        groups = requests.get(f"{url}/api/v1/rules", timeout=30).json()["data"]["groups"]
        (recording,) = [g for g in groups if g["name"] == "asyncjob-recording"]
        assert all(rule["health"] == "ok" for rule in recording["rules"]), recording
        # Then the scrapes stop: every 2 s, 10,000 jobs' series are seven times what a 15 s
        # interval ingests, and what is measured is what the queries cost, at that moment.
        stop.set()
        moving.join(10)
        now = time.time()
        server.stop()

        measured, rules, samples = measure(url, now)
        with capsys.disabled():
            report(measured, samples, rules)
        assert [m for m in measured if m[1] > MAX_SERIES] == []
        empty = [m for m in measured if m[1] == 0]
        assert len(empty) <= 2, empty  # a list with nothing to show is allowed, not a dashboard
    finally:
        stop.set()
        if moving.is_alive():
            moving.join(10)
        server.stop()  # again, if the test failed before: it returns at once


def report(
    measured: list[tuple[float, int, str]], samples: int, rules: list[tuple[float, int, str]]
) -> None:
    print(f"\nOverview at {JOBS} jobs ({samples} samples per scrape): {len(measured)} queries, "
          "slowest first (median of 3)")  # fmt: skip
    for seconds, count, where in measured[:8]:
        print(f"  {seconds * 1000:7.1f} ms  {count:4d} series  {where}")
    print(f"  most series from one query: {max(m[1] for m in measured)}")
    print("The recording rules' expressions, asked as queries:")
    for seconds, count, where in rules:
        print(f"  {seconds * 1000:7.1f} ms  {count:4d} series  {where}")
