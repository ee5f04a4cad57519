"""What the exporter costs the Prometheus that scrapes it, measured in one run.

For N jobs (`scale.jobs_for`, found by discovery) a real exporter process serves /metrics, and
from one scrape of it: the samples that belong to jobs (the `asyncjob_` families' samples with
a `job_id` label) per tracked job, in all and per family. Then a real Prometheus (Debian's,
from .tools/bin or PATH) scrapes that exporter every 2 s, beside a second one scraping an
exporter that tracks no job (same flags). Once each has scraped its target three times and its
head stopped growing: the head series, and the growth per job of its RSS (VmRSS) and of its live
Go heap (in use right after a collection, which is steadier) over the second one's.

For the defaults, and for `LEAN`: the allowlist the README recommends (--metric-allowlist).
Loopback only, every wait bounded, every process stopped on the way out.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import urllib3
import yaml

from benchmarks import scale
from exporter.simulator import ManualClock, Simulator

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

# The lean configuration: what a user who watches jobs' state and progress keeps, and the two
# families the dashboards' variables list (one series per exporter and per source). The README
# recommends this list (a test keeps the two in step).
LEAN = ("asyncjob_info", "asyncjob_state", "asyncjob_progress_ratio", "asyncjob_up",
        "asyncjob_finished_timestamp_seconds", "asyncjob_last_poll_error_info",
        "asyncjob_build_info", "asyncjob_tracked_jobs")  # fmt: skip
CONFIGURATIONS: dict[str, tuple[str, ...]] = {
    "defaults": (),
    "lean": (f"--metric-allowlist={','.join(LEAN)}",),
}
SCRAPE_INTERVAL = 2  # seconds; also the scrape timeout (it may not be longer)
SCRAPES = 3  # scrapes before the head is read
SETTLE_TIMEOUT = 180.0  # seconds for Prometheus to be ready, scrape and settle
READINGS = 5  # memory readings, spread over one scrape interval; the median is reported
REPO = Path(__file__).parent.parent

# One `name="value"` pair of a sample's labels (a value may hold escaped quotes and commas).
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"(?:[^"\\]|\\.)*"\s*,?')


def job_series(text: str) -> tuple[int, dict[str, int]]:
    """(every sample of an exposition, the samples with a `job_id` label of each `asyncjob_`
    family, by the family's name as its `# TYPE` line spells it)."""
    samples = 0
    per_family: Counter[str] = Counter()
    family = ""
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            family = line.split()[2]
        elif line and not line.startswith("#"):
            samples += 1
            if family.startswith("asyncjob_") and "job_id" in _label_names(line):
                per_family[family] += 1
    return samples, dict(per_family)


def _label_names(line: str) -> set[str]:
    name_end = min(i for i in (line.find("{"), line.find(" "), len(line)) if i >= 0)
    if not line.startswith("{", name_end):
        return set()
    names, position = set(), name_end + 1
    while match := _LABEL.match(line, position):
        names.add(match[1])
        position = match.end()
    return names


@dataclass(frozen=True)
class Head:
    """A Prometheus after it settled: its head series, its RSS, and its Go heap in use right
    after a collection (the live heap; steadier than the RSS), in bytes."""

    series: int
    rss: int
    heap: int


@dataclass(frozen=True)
class Cost:
    """One configuration at `jobs` jobs: the exposition and what it cost a Prometheus."""

    jobs: int
    samples: int  # every sample of one /metrics
    per_family: Mapping[str, int]  # job samples (those with a job_id label) per family
    head: Head  # the Prometheus scraping the exporter tracking `jobs` jobs
    baseline: Head  # the one scraping an exporter tracking none, same flags
    exposition: str = field(repr=False)

    @property
    def series_per_job(self) -> float:
        return sum(self.per_family.values()) / self.jobs

    @property
    def head_per_job(self) -> float:
        return (self.head.series - self.baseline.series) / self.jobs

    @property
    def rss_per_job(self) -> float:
        return (self.head.rss - self.baseline.rss) / self.jobs

    @property
    def heap_per_job(self) -> float:
        return (self.head.heap - self.baseline.heap) / self.jobs


def binary() -> str:
    """Prometheus from .tools/bin (`make tools`), else PATH."""
    local = REPO / ".tools" / "bin" / "prometheus"
    found = str(local) if local.exists() else shutil.which("prometheus")
    if not found:
        raise SystemExit("prometheus not found: run `make tools` (scripts/fetch-tools.sh)")
    return found


@contextlib.contextmanager
def prometheus(target: scale.Process, directory: Path) -> Iterator[scale.Process]:
    """A Prometheus on 127.0.0.1 scraping `target` every SCRAPE_INTERVAL, its data and log in
    `directory`, once ready. Killed on the way out if it does not stop within 30 s."""
    directory.mkdir()
    every = f"{SCRAPE_INTERVAL}s"
    config = {
        "global": {"scrape_interval": every, "scrape_timeout": every},
        "scrape_configs": [{"job_name": "asyncjob",
                            "static_configs": [{"targets": [f"127.0.0.1:{target.port}"]}]}],
    }  # fmt: skip
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = scale.free_port()
    with (directory / "prometheus.log").open("wb") as log:
        popen = subprocess.Popen(
            [binary(), f"--config.file={directory / 'prometheus.yml'}",
             f"--storage.tsdb.path={directory / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        process = scale.Process(popen, port, urllib3.PoolManager(maxsize=2))
        try:
            _bounded(lambda: _ready(process), "Prometheus to be ready", directory)
            yield process
        finally:
            scale.stop(popen)


def _bounded(check: Callable[[], bool], what: str, directory: Path) -> None:
    """scale.until with SETTLE_TIMEOUT, and the end of Prometheus's log if it times out."""
    try:
        scale.until(check, what=what, timeout=SETTLE_TIMEOUT)
    except SystemExit as timeout:
        log = (directory / "prometheus.log").read_text(errors="replace").splitlines()[-10:]
        raise SystemExit("\n".join([str(timeout), *log])) from None


def _ready(process: scale.Process) -> bool:
    if process.popen.poll() is not None:
        raise RuntimeError(f"Prometheus exited with code {process.popen.returncode}")
    try:
        process.get("/-/ready")
    except (urllib3.exceptions.HTTPError, AssertionError):
        return False
    return True


def _query(process: scale.Process, promql: str) -> float | None:
    """The one value of an instant query, or None while it has none."""
    answer = json.loads(process.get(f"/api/v1/query?query={urllib.parse.quote(promql)}"))
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _own(process: scale.Process, name: str) -> float:
    """A sample without labels from Prometheus's own /metrics."""
    for line in process.get("/metrics").decode().splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise KeyError(name)


def settle(process: scale.Process, directory: Path) -> Head:
    """Wait until `process` has scraped its target successfully SCRAPES times, the last one
    too, and its head series did not change over the last scrape; then read its head and
    memory. A failed scrape (a timeout on a busy machine) only delays this, within the bound."""
    heads: dict[int, float] = {}  # head series, read last after each number of good scrapes

    def settled() -> bool:
        scrapes = int(_query(process, "sum_over_time(up[1h])") or 0)
        heads[scrapes] = _own(process, "prometheus_tsdb_head_series")
        last_good = _query(process, "up") == 1
        return last_good and scrapes >= SCRAPES and heads.get(scrapes - 1) == heads[scrapes]

    try:
        _bounded(settled, f"{SCRAPES} good scrapes and a steady head", directory)
    except SystemExit as timeout:
        targets = json.loads(process.get("/api/v1/targets"))["data"]["activeTargets"]
        raise SystemExit(f"{timeout}\nlast scrape error: {targets[0]['lastError']}") from None
    rss, heap = [], []
    for _ in range(READINGS):
        rss.append(process.status("VmRSS"))
        time.sleep(SCRAPE_INTERVAL / READINGS)
    for _ in range(READINGS):  # after the RSS: a collection does not give memory back at once
        process.get("/debug/pprof/heap?gc=1")  # Go's pprof collects first: the live heap
        heap.append(_own(process, "go_memstats_heap_inuse_bytes"))
        time.sleep(SCRAPE_INTERVAL / READINGS)
    series = _own(process, "prometheus_tsdb_head_series")
    return Head(int(series), int(statistics.median(rss)), int(statistics.median(heap)))


def measure(n: int, flags: Sequence[str] = ()) -> Cost:
    """The cost of n jobs to a Prometheus, with the exporter's `flags`."""
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        empty = stack.enter_context(Simulator(jobs=(), clock=ManualClock(60.0)))
        baseline = stack.enter_context(scale.exporter(scale.config(empty), *flags))
        sim = Simulator(jobs=scale.jobs_for(n), clock=ManualClock(60.0), max_page_size=100)
        stack.enter_context(sim)
        process = stack.enter_context(scale.exporter(scale.config(sim), *flags))
        scale.until(lambda: scale.tracked(process) >= n, what=f"{n} jobs discovered")
        baseline.get("/metrics")  # both render every family once before Prometheus asks
        exposition = process.get("/metrics").decode()
        quiet = stack.enter_context(prometheus(baseline, tmp / "baseline"))
        loaded = stack.enter_context(prometheus(process, tmp / "jobs"))
        head = settle(loaded, tmp / "jobs")
        base = settle(quiet, tmp / "baseline")
    samples, per_family = job_series(exposition)
    return Cost(n, samples, per_family, head, base, exposition)


def report(n: int) -> dict[str, Cost]:
    """Print the table for the defaults and for LEAN at n jobs; return the costs."""
    print(f"what {n:,} jobs cost the Prometheus that scrapes them ({binary()}, every "
          f"{SCRAPE_INTERVAL} s);")  # fmt: skip
    print("per job: the growth over a Prometheus scraping an exporter with no job, same flags; "
          "heap: in use after a collection")  # fmt: skip
    print(f"  {'config':<9} {'series/job':>10} {'/metrics samples':>16} {'head series':>11} "
          f"{'head/job':>8} {'RSS/job':>8} {'heap/job':>8}")  # fmt: skip
    costs: dict[str, Cost] = {}
    for name, flags in CONFIGURATIONS.items():
        cost = costs[name] = measure(n, flags)
        print(f"  {name:<9} {cost.series_per_job:>10.2f} {cost.samples:>16,} "
              f"{cost.head.series:>11,} {cost.head_per_job:>8.2f} "
              f"{cost.rss_per_job / 1024:>6.2f}KB {cost.heap_per_job / 1024:>6.2f}KB",
              flush=True)  # fmt: skip
    families = sorted({f for cost in costs.values() for f in cost.per_family},
                      key=lambda f: (-costs["defaults"].per_family.get(f, 0), f))  # fmt: skip
    print(f"  series per job, by family:{'':<25}{'  '.join(f'{name:>8}' for name in costs)}")
    for family in families:
        figures = [f"{cost.per_family.get(family, 0) / n:>8.2f}" for cost in costs.values()]
        print(f"    {family:<50} {'  '.join(figures)}")
    return costs
