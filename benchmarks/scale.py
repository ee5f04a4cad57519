"""How each cost grows with the number of jobs, side by side in one run, as ratios.

For each size N: a real exporter process (`python -m exporter`) tracks N jobs (shared out among
the providers whose part of the simulator takes the `listed` role, today Translator batches and
training jobs in ten projects; nine in ten finished), found by discovery from the simulator in
this process. Then:

- `/metrics` p50, identity and gzip, against a minimal Python server sending the same bytes
  (the exporter's own answer, captured), over the same loopback, scrapes of the two taken in
  turn: the ratio is what the exporter adds to sending its bytes. Nothing changes between these
  scrapes (discovery lists hourly).
- the exporter's peak RSS (VmHWM, after 8 concurrent scrapes too), and RSS per job over an
  exporter tracking no job. The scrapes start once the exporter is idle after discovery (its
  storage commits done), so that they measure the scrapes alone;
- the status page's p50;
- a restart from the store the first process left: the time from starting the process to a
  `/metrics` that holds all N jobs (interpreter start, imports, loading the store, the first
  render), and the restarted process's peak RSS (loading, then the same scrapes: one identity,
  one gzip, 8 concurrent).

Then, once: CPU per poll (the exporter's CPU time, all its background work counted, over the
polls it made: per-job polling of jobs of the provider in the `polled` role, today Translator
batches, one in ten running), and the first poll cycle against the ideal N x latency /
max_concurrency with the upstream answering in 20 ms.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import urllib3
import yaml

from exporter.simulator import DEMO_KEY, Fault, ManualClock, SimJob, Simulator, parts
from exporter.storage import FLUSH_EVERY

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from exporter.simulator.kit import Bench

LATENCY = 0.02  # the upstream's answer time for the first-cycle figure
IN_FLIGHT = 16  # max_concurrency
SCRAPES = 15


def roles(role: Callable[[Bench], bool]) -> list[tuple[str, Bench]]:
    """(provider, its bench) of every simulator part that takes `role`, in the registry's
    order: the benchmarks choose providers by role, never by name (kit.Bench)."""
    return [(part.name, part.bench) for part in parts() if part.bench and role(part.bench)]


def the_one(role: Callable[[Bench], bool]) -> tuple[str, Bench]:
    """The one part that takes `role`."""
    (found,) = roles(role)
    return found


def listed(bench: Bench) -> bool:
    return bench.listed


def polled(bench: Bench) -> bool:
    return bench.polled


def jobs_for(n: int, *, finished_every: int = 10) -> tuple[SimJob, ...]:
    """n jobs shared out among the listed providers (the first ones get n // k each, the last
    the rest), in ten projects where their API has projects; one in ten running. Each
    provider's IDs start with a letter of its own."""

    def duration(i: int) -> float:
        return 10.0**7 if i % finished_every == 0 else 5.0

    providers = [name for name, _ in roles(listed)]
    shares = [n // len(providers)] * (len(providers) - 1)
    shares.append(n - sum(shares))
    return tuple(
        SimJob(f"{letter}-{i}", provider, start_delay=0, units=4, created_at=-600 - i,
               duration=duration(i), project=f"p{i % 10}")
        for letter, provider, share in zip("abcdefgh", providers, shares, strict=False)
        for i in range(share)
    )  # fmt: skip


def config(sim: Simulator, **overrides: Any) -> dict[str, Any]:
    """A source of each listed provider that finds its jobs by discovery, hourly."""
    return {
        "global": {"poll_interval": "30s", "max_concurrency": IN_FLIGHT, **overrides},
        "sources": [
            {**bench.source(sim.url, DEMO_KEY), "discovery": {"interval": "1h"},
             "max_jobs": 100_000}
            for _, bench in roles(listed)
        ],
    }  # fmt: skip


@dataclass
class Process:
    """A real exporter process on loopback."""

    popen: subprocess.Popen[bytes]
    port: int
    http: urllib3.PoolManager
    config_file: Path | None = None  # the config it reads (a reload reads it again)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def status(self, key: str) -> int:
        """A /proc/PID/status figure in bytes (VmRSS, VmHWM)."""
        return self._status_field(key) * 1024

    def threads(self) -> int:
        """The process's threads now (/proc/PID/status)."""
        return self._status_field("Threads")

    def _status_field(self, key: str) -> int:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
        raise KeyError(key)

    def cpu(self) -> float:
        """CPU seconds used so far (user and system)."""
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def get(self, path: str, gzipped: bool = False) -> bytes:
        headers = {"Accept-Encoding": "gzip"} if gzipped else {}
        answer = self.http.request("GET", f"{self.url}{path}", headers=headers,
                                   decode_content=False, timeout=120)  # fmt: skip
        assert answer.status == 200, answer.status
        return bytes(answer.data)


def free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def exporter(
    raw: dict[str, Any],
    *extra: str,
    stderr: IO[bytes] | None = None,
    storage: str | None = None,
    port: int | None = None,
    timeout: float = 600.0,
) -> Iterator[Process]:
    """A real exporter process on 127.0.0.1 (`port`, or a free one) with `raw` as its config,
    the jobs API on, and `extra` flags after the others (a later flag wins). Its log goes to
    `stderr` (default: ours); its storage to `storage` (default: a temporary directory). Killed
    on the way out if it does not stop within 30 s of SIGTERM."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(raw))
        port = port or free_port()
        popen = subprocess.Popen(
            [sys.executable, "-m", "exporter", f"--config.file={path}", "--log.level=error",
             f"--web.listen-address=127.0.0.1:{port}", f"--storage.path={storage or f'{tmp}/data'}",
             "--web.enable-jobs-api", *extra],
            stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
        process = Process(popen, port, urllib3.PoolManager(maxsize=16), path)
        try:
            until(lambda: _answers(process), what="the exporter to listen", timeout=timeout)
            yield process
        finally:
            stop(popen)


def stop(popen: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if the process has not ended within 30 s."""
    popen.terminate()
    try:
        popen.wait(30)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(30)


def _answers(process: Process) -> bool:
    if process.popen.poll() is not None:
        raise RuntimeError(f"the exporter exited with code {process.popen.returncode}")
    try:
        process.get("/-/healthy")
    except (urllib3.exceptions.HTTPError, AssertionError):
        return False
    return True


def until(check: Any, what: str, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def settled(
    process: Process, idle: float = 0.1, window: float = 0.5, timeout: float = 60.0
) -> None:
    """Wait until the process has used less than `idle` of a CPU in each `window` for longer
    than the storage waits to commit (FLUSH_EVERY): what a discovery or a restart left to do
    (the storage's commit of every job found, the first listing) is done, so that the scrapes
    measured are not also measuring it. A single quiet window was not enough: the commit of
    10,000 discovered jobs (0.2 s of CPU, 20 MB written) came in the half second after it and
    ran beside the identity scrapes."""
    deadline = time.monotonic() + timeout
    quiet = 0.0
    while time.monotonic() < deadline and quiet <= FLUSH_EVERY:
        before = process.cpu()
        time.sleep(window)
        quiet = quiet + window if process.cpu() - before < idle * window else 0.0


def tracked(process: Process) -> int:
    import json  # noqa: PLC0415

    return int(json.loads(process.get("/api/v1/jobs?limit=1"))["total"])


def p50(fetch: Any, count: int = SCRAPES) -> float:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        fetch()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@contextlib.contextmanager
def static_server(identity: bytes, zipped: bytes) -> Iterator[str]:
    """The minimal server: the same bytes, prepared, with the same headers' worth of work."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            gz = "gzip" in self.headers.get("Accept-Encoding", "")
            body = zipped if gz else identity
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            if gz:
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def fetch(http: urllib3.PoolManager, url: str, *, gzipped: bool) -> bytes:
    headers = {"Accept-Encoding": "gzip"} if gzipped else {}
    return bytes(http.request("GET", url, headers=headers, decode_content=False, timeout=120).data)


@dataclass
class Size:
    jobs: int
    metrics_bytes: int
    identity: float
    identity_static: float
    gzipped: float
    gzipped_static: float
    first_scrape: float
    status_page: float
    rss: int
    peak_rss: int
    restart: float
    restart_peak_rss: int


def jobs_in(body: bytes) -> int:
    """The jobs a /metrics body holds: every tracked job has an asyncjob_up sample."""
    return body.count(b"\nasyncjob_up{")


def concurrent_scrapes(process: Process, count: int = 8) -> None:
    threads = [threading.Thread(target=process.get, args=("/metrics",)) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def restart(sim: Simulator, storage: str, n: int) -> tuple[float, int]:
    """(seconds from process start to a /metrics holding all n jobs, peak RSS) of an exporter
    resuming from `storage`; then the same scrapes as `measure` before its peak is read."""
    started = time.perf_counter()
    with exporter(config(sim), storage=storage) as process:
        while jobs_in(process.get("/metrics")) < n:
            if time.perf_counter() - started > 600:
                raise SystemExit(f"timed out waiting for a /metrics holding {n} jobs")
        took = time.perf_counter() - started
        process.get("/metrics", gzipped=True)
        concurrent_scrapes(process)
        settled(process)  # the first listing, which runs meanwhile, counts in the peak too
        return took, process.status("VmHWM")


def measure(n: int, empty_rss: int) -> Size:
    sim = Simulator(jobs=jobs_for(n), clock=ManualClock(60.0), max_page_size=100)
    http = urllib3.PoolManager(maxsize=4)
    with sim, tempfile.TemporaryDirectory() as storage:
        with exporter(config(sim), storage=storage) as process:
            until(lambda: tracked(process) >= n, what=f"{n} jobs discovered")
            settled(process)
            started = time.perf_counter()
            identity = process.get("/metrics")
            first = time.perf_counter() - started
            zipped = process.get("/metrics", gzipped=True)
            with static_server(identity, zipped) as url:
                exporter_identity, static_identity = side_by_side(
                    lambda: process.get("/metrics"),
                    lambda: fetch(http, f"{url}/metrics", gzipped=False),
                )
                exporter_gzip, static_gzip = side_by_side(
                    lambda: process.get("/metrics", gzipped=True),
                    lambda: fetch(http, f"{url}/metrics", gzipped=True),
                )
            concurrent_scrapes(process)
            page = p50(lambda: process.get("/"), count=10)
            rss, peak = process.status("VmRSS"), process.status("VmHWM")
        restarted, restart_peak = restart(sim, storage, n)
    return Size(n, len(identity), exporter_identity, static_identity, exporter_gzip, static_gzip,
                first, page, rss - empty_rss, peak, restarted, restart_peak)  # fmt: skip


def side_by_side(
    one: Callable[[], object], other: Callable[[], object], count: int = SCRAPES
) -> tuple[float, float]:
    """The p50s of two fetches taken in turn, so that both see the same machine: measured a
    minute apart, the static server's p50 at 10,000 jobs ranged over 8-12 ms in one hour."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(count):
        for fetch_it, into in ((one, times[0]), (other, times[1])):
            started = time.perf_counter()
            fetch_it()
            into.append(time.perf_counter() - started)
    return statistics.median(times[0]), statistics.median(times[1])


def empty_rss() -> int:
    with Simulator(jobs=(), clock=ManualClock(60.0)) as sim, exporter(config(sim)) as process:
        process.get("/metrics")
        return process.status("VmRSS")


def running_jobs(n: int) -> tuple[SimJob, ...]:
    """n running jobs of the polled provider."""
    provider, _ = the_one(polled)
    return tuple(SimJob(f"r-{i}", provider, start_delay=0, duration=10.0**7, units=4)
                 for i in range(n))  # fmt: skip


def per_job(sim: Simulator, jobs: Sequence[SimJob], **overrides: Any) -> dict[str, Any]:
    """The config of one source of the polled provider that lists `jobs` (no discovery):
    each polled alone."""
    raw = config(sim, **overrides)
    _, bench = the_one(polled)
    source = {**bench.source(sim.url, DEMO_KEY), "max_jobs": 100_000}
    raw["sources"] = [{**source, "job_ids": [job.job_id for job in jobs]}]
    return raw


def cpu_per_poll(n: int = 10_000, seconds: float = 10.0) -> tuple[float, int]:
    """The exporter's CPU seconds per upstream poll, all its work counted (scheduling, the
    store, storage, retention, the threads that wait), tracking n jobs of the polled provider
    of which one in ten runs, each polled alone every second (no scrapes meanwhile), after the
    first cycle."""
    provider, _ = the_one(polled)
    jobs = tuple(SimJob(f"r-{i}", provider, start_delay=0, units=4,
                        duration=10.0**7 if i % 10 == 0 else 5.0)
                 for i in range(n))  # fmt: skip
    sim = Simulator(jobs=jobs, clock=ManualClock(60.0))
    with sim, exporter(per_job(sim, jobs, poll_interval="1s")) as process:
        until(lambda: len(sim.requests) >= n, what="the first cycle")
        time.sleep(2.0)
        cpu, polls = process.cpu(), len(sim.requests)
        time.sleep(seconds)
        cpu, polls = process.cpu() - cpu, len(sim.requests) - polls
    return cpu / max(polls, 1), polls


def first_cycle(n: int) -> tuple[float, float]:
    """(seconds, ideal seconds) of `--once` over n running jobs, upstream at LATENCY each."""
    running = running_jobs(n)
    with Simulator(jobs=running, clock=ManualClock(60.0)) as sim:
        sim.set_fault("*", Fault(delay=LATENCY))
        raw = per_job(sim, running, timeout="30s")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(yaml.safe_dump(raw))
            command = [sys.executable, "-m", "exporter", f"--config.file={path}", "--once",
                       "--log.level=error"]  # fmt: skip
            started = time.perf_counter()
            subprocess.run(command, stdout=subprocess.DEVNULL, check=True, timeout=600)
            took = time.perf_counter() - started
            started = time.perf_counter()
            raw["sources"][0]["job_ids"] = []
            path.write_text(yaml.safe_dump(raw))
            subprocess.run(command, stdout=subprocess.DEVNULL, check=True, timeout=600)
            startup = time.perf_counter() - started
    return took - startup, n * LATENCY / IN_FLIGHT


def report(sizes: Sequence[int], cycle_jobs: int, cpu_jobs: int = 10_000) -> None:
    base = empty_rss()
    print(f"exporter RSS tracking no job: {base / 2**20:.0f} MiB")
    print(f"{'jobs':>7} {'/metrics':>9} {'identity p50':>22} {'gzip p50':>22} {'1st scrape':>10} "
          f"{'status /':>9} {'RSS/job':>8} {'peak RSS':>9} {'restart':>8} "
          f"{'its peak':>8}")  # fmt: skip
    for n in sizes:
        s = measure(n, base)
        print(
            f"{s.jobs:>7,} {s.metrics_bytes / 2**20:>7.1f}MB "
            f"{s.identity * 1000:>7.1f}ms = {s.identity / s.identity_static:4.1f}x static "
            f"{s.gzipped * 1000:>7.1f}ms = {s.gzipped / s.gzipped_static:4.1f}x static "
            f"{s.first_scrape * 1000:>8.0f}ms {s.status_page * 1000:>7.1f}ms "
            f"{s.rss / s.jobs / 1024:>6.1f}KB {s.peak_rss / 2**20:>7.0f}MB "
            f"{s.restart:>7.2f}s {s.restart_peak_rss / 2**20:>6.0f}MB",
            flush=True,
        )
    print("restart: from process start to a /metrics holding every job, resumed from the store")
    per_poll, polls = cpu_per_poll(cpu_jobs)
    print(f"CPU per poll: {per_poll * 1000:.2f} ms, all background work counted ({polls} polls "
          f"of the running tenth of {cpu_jobs:,} jobs, every 1 s)")  # fmt: skip
    took, ideal = first_cycle(cycle_jobs)
    print(f"first cycle, {cycle_jobs:,} jobs, upstream at {LATENCY * 1000:.0f} ms, {IN_FLIGHT} "
          f"in flight: {took:.2f} s = {took / ideal:.2f}x the ideal {ideal:.2f} s")  # fmt: skip
