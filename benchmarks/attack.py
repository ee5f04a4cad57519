"""The attacks of issue 14, run against real exporter processes on 127.0.0.1, as one table.

    python -m benchmarks.attack [--quick] [--json PATH]

Each attack starts its own exporter (`python -m exporter`, through `benchmarks.scale`) against
the simulator in this process, attacks it over loopback, bounded in count and in time, and stops
it. Then one table: attack | measured | target | held?. Exit code 0 only if every row held.

The full form has the issue's numbers (3,000 trickling-header connections for 40 s, 600 body
tricklers, 400 looping clients, 8,000 registrations on a 2 MB disk, 50 tries); `--quick` is a
short form of every row, for the test suite. The disk row mounts a tmpfs and needs root.

The upstreams are chosen by the roles their simulator parts take (exporter/simulator/kit.py,
`Bench`), never by name: the provider whose jobs are registered through the jobs API, and the
one that calls back (a webhook, its key in the request body) and whose answers echo the key.
"""

from __future__ import annotations

import argparse
import base64
import collections
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import re
import secrets
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import bcrypt
import urllib3
import yaml

from benchmarks import flood, scale
from exporter.providers import PROVIDERS
from exporter.sharding import Shard
from exporter.simulator import DEMO_KEY, Fault, ManualClock, SimJob, Simulator

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from exporter.simulator.kit import Bench

JOBS = 2000  # the jobs the exporter tracks under the floods (its /metrics is about 5 MB)
FRAGMENT = 8  # the shortest piece of a key that counts as a leak
DEADLINE = 10.0  # the overall request deadline the issue asks for (the default)
SLACK = 1.5  # seconds allowed past a deadline for the server to act on it
WEBHOOK_TOKEN = "attack-webhook-token"  # noqa: S105 - a loopback exporter's, made up here


@dataclass(frozen=True, slots=True)
class Form:
    """How hard each attack pushes; the defaults are the issue's numbers."""

    header_connections: int = 3000
    header_seconds: float = 40.0
    body_connections: int = 600
    body_seconds: float = 40.0
    loopers: int = 400
    loop_seconds: float = 30.0
    registrations: int = 8000
    disk: str = "2m"
    tries: int = 50
    settle: float = 10.0  # the longest wait for threads to come back after a flood
    shutdown_cap: float = 40.0  # the longest wait for an exit after SIGTERM
    token_cap: float = 5.0  # the longest wait for a wrong-token webhook's answer


QUICK = Form(
    header_connections=300, header_seconds=8.0, body_connections=60,
    body_seconds=DEADLINE + 4.0, loopers=100, loop_seconds=8.0, registrations=1500,
    disk="512k", tries=10, settle=5.0, shutdown_cap=12.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Row:
    id: str
    attack: str
    measured: str
    target: str
    held: bool


@dataclass
class Run:
    """What the attacks share: a scratch directory for logs and configs, the flood process."""

    form: Form
    tmp: Path
    pool: concurrent.futures.ProcessPoolExecutor

    def log(self, name: str) -> IO[bytes]:
        return (self.tmp / f"{name}.log").open("wb")

    def flood(self, function: Callable[..., Any], *args: Any) -> Any:
        return self.pool.submit(function, *args).result(timeout=600)


# -- helpers ------------------------------------------------------------------------------------


def new_key() -> str:
    """A key no log line holds by chance: 32 letters and digits."""
    alphabet = string.ascii_letters + string.digits
    return "k" + "".join(secrets.choice(alphabet) for _ in range(31))


def longest_fragment(text: str, key: str) -> int:
    """The longest piece of `key` (FRAGMENT characters or more) that `text` holds; 0: none."""
    best = 0
    for start in range(len(key) - FRAGMENT + 1):
        end = start + FRAGMENT
        if key[start:end] not in text:
            continue
        while end < len(key) and key[start : end + 1] in text:
            end += 1
        best = max(best, end - start)
    return best


def leak(text: str, key: str) -> str:
    """How much of `key` is in `text`: the whole key (how many times), or its longest fragment
    and how many of its FRAGMENT-character pieces; "no fragment" when none."""
    whole = text.count(key)
    if whole:
        return f"full key x{whole}"
    pieces = sum(1 for at in range(len(key) - FRAGMENT + 1) if key[at : at + FRAGMENT] in text)
    if not pieces:
        return "no fragment"
    return f"{longest_fragment(text, key)} chars of the key ({pieces} {FRAGMENT}-char pieces)"


def registered() -> tuple[str, Bench]:
    """The provider whose jobs the attacks register through the jobs API, and its bench."""
    return scale.the_one(lambda bench: bench.registered)


def caller() -> tuple[str, Bench]:
    """The provider that calls back and whose answers the attacks make echo a key."""
    return scale.the_one(lambda bench: bench.failed_poll is not None and bench.status is not None)


def webhook_path(source: str) -> str:
    """The caller's webhook for `source`."""
    webhook = PROVIDERS[caller()[0]].webhook
    assert webhook is not None, "the caller must have a webhook"
    return f"/api/v1/webhooks/{webhook.slug}/{source}"


def registered_source(sim: Simulator, key: str = DEMO_KEY, **keys: Any) -> dict[str, Any]:
    """A source of the registered provider on the simulator (no name, no job)."""
    source = registered()[1].source(sim.url, key)
    return {**{k: v for k, v in source.items() if k != "name"}, **keys}


def small_config(sim: Simulator, key: str = DEMO_KEY, **extra: Any) -> dict[str, Any]:
    """One source `lang` of the registered provider, no job, plus `extra` sources by name."""
    sources = [{"name": "lang", **registered_source(sim, key)}]
    sources += [{"name": name, **source} for name, source in extra.items()]
    return {"global": {"poll_interval": "1h", "timeout": "5s", "max_retry_wait": "1s"},
            "sources": sources}  # fmt: skip


def caller_source(sim: Simulator, key: str = DEMO_KEY, **keys: Any) -> dict[str, Any]:
    """A source of the caller on the simulator (no name)."""
    source = caller()[1].source(sim.url, key)
    return {**{k: v for k, v in source.items() if k != "name"}, **keys}


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def wait_for(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def request(
    process: scale.Process, method: str, path: str, body: Any = None, **headers: str
) -> urllib3.BaseHTTPResponse:
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers.setdefault("Content-Type", "application/json")
    return process.http.request(method, f"{process.url}{path}", body=data, headers=headers,
                                timeout=30, retries=False, redirect=False)  # fmt: skip


def tracebacks(*logs: Path) -> int:
    return sum(text(log).count("Traceback") for log in logs if log.exists())


def warnings(log: str, word: str) -> int:
    """Log lines at warning level or above that mention `word`."""
    level = re.compile(r'"level": ?"(warn|warning|error|critical)"')
    return sum(1 for line in log.splitlines() if word in line and level.search(line))


# -- 1-3: a key must not leak -------------------------------------------------------------------


def key_in_config(run: Run) -> tuple[str, bool]:
    """A key pasted into fields that fail validation (an endpoint's query, a duration, a job
    ID), then POST /-/reload and --config.check."""
    key = new_key()
    with Simulator(jobs=(), key=key, clock=ManualClock(60.0)) as sim:
        good = small_config(sim, key)
        source = good["sources"][0]
        bad = {**good, "sources": [{**source, "endpoint": f"{sim.url}/?subscription-key={key}",
                                    "poll_interval": key, "job_ids": [f"{key}/x"]}]}  # fmt: skip
        log_path = run.tmp / "config-key.log"
        with run.log("config-key") as log, scale.exporter(
            good, "--web.enable-lifecycle", "--log.level=info", "--log.format=json", stderr=log,
            timeout=60,
        ) as process:  # fmt: skip
            assert process.config_file is not None
            process.config_file.write_text(yaml.safe_dump(bad))
            answer = request(process, "POST", "/-/reload")
            reply = answer.data.decode(errors="replace")
            time.sleep(0.5)  # the log line is written as the answer goes
            check = subprocess.run(
                [sys.executable, "-m", "exporter", f"--config.file={process.config_file}",
                 "--config.check"], capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
    checked = check.stdout + check.stderr
    outputs = (reply, text(log_path), checked)
    measured = (f"reload ({answer.status}): {leak(reply, key)}; log: {leak(outputs[1], key)}; "
                f"--config.check: {leak(checked, key)}")  # fmt: skip
    failed = answer.status != 200 and check.returncode != 0  # else the attack did not happen
    return measured, failed and not any(longest_fragment(o, key) for o in outputs)


OFFSETS = (95, 100, 105, 110)


def key_in_error_message(run: Run) -> tuple[str, bool]:
    """The caller answers errors (in a 200) whose message holds the key from character 95-110."""
    key = new_key()
    provider, bench = caller()
    assert bench.failed_poll is not None
    jobs = tuple(SimJob(f"sd-{at}", provider, duration=1e7) for at in OFFSETS)
    with Simulator(jobs=jobs, key=key, clock=ManualClock(60.0)) as sim:
        for at in OFFSETS:
            message = ("The training worker could not load the dataset; it was called with "
                       "these arguments: ").ljust(at, ".") + key + " (request refused)"  # fmt: skip
            sim.set_fault(f"sd-{at}", Fault(body=json.dumps(bench.failed_poll(message)).encode()))
        raw = small_config(sim, sd=caller_source(sim, key, job_ids=[job.job_id for job in jobs]))
        log_path = run.tmp / "sd-error.log"
        with (
            run.log("sd-error") as log,
            scale.exporter(raw, "--log.level=info", "--log.format=json", stderr=log, timeout=60),
        ):
            wait_for(lambda: text(log_path).count('"warning"') >= len(jobs), 15.0)
            time.sleep(0.5)
    logged = text(log_path)
    lines = sum(1 for line in logged.splitlines() if '"warning"' in line)
    return f"{leak(logged, key)} in the log ({lines} warning lines)", (
        lines > 0 and not longest_fragment(logged, key)
    )


def key_in_status(run: Run) -> tuple[str, bool]:
    """A status string of the caller's (the vendor status, a label) that holds the key."""
    key = new_key()
    provider, bench = caller()
    assert bench.status is not None
    with Simulator(jobs=(SimJob("sd-stage", provider, duration=1e7),), key=key,
                   clock=ManualClock(60.0)) as sim:  # fmt: skip
        sim.set_fault("sd-stage", Fault(body=json.dumps(bench.status(key)).encode()))
        raw = small_config(sim, key, sd=caller_source(sim, key, job_ids=["sd-stage"]))
        with run.log("sd-stage") as log, scale.exporter(raw, stderr=log, timeout=60) as process:
            polled = wait_for(lambda: b'job_id="sd-stage"' in process.get("/metrics")
                              and bool(sim.seen("sd-stage")), 15.0)  # fmt: skip
            time.sleep(0.3)
            metrics = process.get("/metrics").decode(errors="replace")
            page = process.get("/").decode(errors="replace")
    measured = f"/metrics: {leak(metrics, key)}; status page: {leak(page, key)}"
    if not polled:
        measured += " (the job was never exported)"
    return measured, polled and not longest_fragment(metrics + page, key)


# -- 4: basic auth timing -----------------------------------------------------------------------


def auth_timing(run: Run) -> tuple[str, bool]:
    """Unknown user against known user with a wrong password, each try a new pair (no cache)."""
    hashed = bcrypt.hashpw(b"the right password", bcrypt.gensalt(12)).decode()
    web = run.tmp / "web.yml"
    web.write_text(yaml.safe_dump({"basic_auth_users": {"admin": hashed}}))
    times: dict[str, list[float]] = {"unknown": [], "known": []}
    statuses: set[int] = set()
    with Simulator(jobs=()) as sim, run.log("auth") as log, scale.exporter(
        small_config(sim), f"--web.config.file={web}", stderr=log, timeout=60
    ) as process:  # fmt: skip
        for i in range(run.form.tries):
            for kind, user in (("unknown", f"nobody{i}"), ("known", "admin")):
                token = base64.b64encode(f"{user}:guess-{i}".encode()).decode()
                for _ in range(3):  # a 429 (checks busy) is retried, not timed
                    started = time.perf_counter()
                    answer = request(process, "GET", "/metrics", Authorization=f"Basic {token}")
                    took = time.perf_counter() - started
                    if answer.status != 429:
                        break
                    time.sleep(0.3)
                statuses.add(answer.status)
                times[kind].append(took)
    unknown, known = (statistics.median(times[k]) for k in ("unknown", "known"))
    ratio = max(unknown, known) / max(min(unknown, known), 1e-9)
    measured = (f"medians {unknown * 1000:.0f} ms (unknown user) vs {known * 1000:.0f} ms "
                f"(wrong password), {run.form.tries} tries each, "
                f"answers {sorted(statuses)}")  # fmt: skip
    return measured, ratio <= 1.2 and statuses == {401}


# -- 5: a full disk -----------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],  # noqa: S607
                   check=True, capture_output=True, timeout=30)  # fmt: skip
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True, timeout=30)  # noqa: S607


def full_disk(run: Run) -> tuple[str, bool]:
    """Registrations through the jobs API onto a small tmpfs, kill -9, restart: is every
    acknowledged job there?"""
    if os.geteuid() != 0:
        return "not run: mounting a tmpfs needs root", False
    n = run.form.registrations
    ids = [f"r-{i}" for i in range(n)]
    jobs = tuple(SimJob(job_id, registered()[0], duration=1e7) for job_id in ids)
    with Simulator(jobs=jobs, clock=ManualClock(60.0)) as sim, tmpfs(
        run.tmp / "disk", run.form.disk
    ) as disk:  # fmt: skip
        raw = small_config(sim)
        raw["sources"][0]["max_jobs"] = n + 10
        storage = str(disk / "data")
        with run.log("disk") as log, scale.exporter(
            raw, stderr=log, storage=storage, timeout=60
        ) as process:  # fmt: skip
            with _watching_ready(process) as ready_503:
                statuses = _register_all(process, ids)
            process.popen.kill()
            process.popen.wait(30)
        present: set[str] = set()
        restarted = "restarted"
        try:
            with run.log("disk-restart") as log, scale.exporter(
                raw, stderr=log, storage=storage, timeout=60
            ) as process:  # fmt: skip
                listing = f"/api/v1/jobs?source=lang&limit={min(n, 10_000)}"
                listed = json.loads(request(process, "GET", listing).data)
                present = {job["job_id"] for job in listed["jobs"]}
        except (RuntimeError, SystemExit) as exc:
            restarted = f"restart failed ({exc})"
    acked = {job_id for job_id, status in statuses.items() if status in {200, 201}}
    answers = collections.Counter(statuses.values())
    lost = len(acked - present)
    traced = tracebacks(run.tmp / "disk.log", run.tmp / "disk-restart.log")
    refused = n - len(acked)
    measured = (f"{len(acked)} of {n} acknowledged ({_counts(answers)}); {restarted} after "
                f"kill -9: {len(acked & present)} present, {lost} lost; {traced} tracebacks; "
                f"/-/ready {'went 503' if ready_503.is_set() else 'stayed 200'}")  # fmt: skip
    # A disk that filled must show: refusals and /-/ready 503. One that never filled proves
    # nothing about a full disk, so it does not hold either.
    return measured, lost == 0 and traced == 0 and refused > 0 and ready_503.is_set()


def _counts(answers: collections.Counter[int]) -> str:
    return ", ".join(f"{count} x {status}" for status, count in sorted(answers.items()))


def _register_all(process: scale.Process, ids: list[str]) -> dict[str, int]:
    """Register `ids` from 8 clients at once; the answer's status for each (0: none)."""
    lock = threading.Lock()
    todo = iter(ids)
    statuses: dict[str, int] = {}

    def register() -> None:
        while True:
            with lock:
                job_id = next(todo, None)
            if job_id is None:
                return
            try:
                status = request(process, "POST", "/api/v1/jobs",
                                 {"source": "lang", "job_id": job_id}).status  # fmt: skip
            except urllib3.exceptions.HTTPError:
                status = 0
            statuses[job_id] = status

    clients = [threading.Thread(target=register) for _ in range(8)]
    for client in clients:
        client.start()
    for client in clients:
        client.join(600)
    return statuses


@contextlib.contextmanager
def _watching_ready(process: scale.Process) -> Iterator[threading.Event]:
    """An event set if /-/ready answers 503 while inside (and a moment after)."""
    went_503, done = threading.Event(), threading.Event()

    def watch() -> None:
        while not done.is_set():
            with contextlib.suppress(urllib3.exceptions.HTTPError):
                if request(process, "GET", "/-/ready").status == 503:
                    went_503.set()
            done.wait(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield went_503
        time.sleep(1.0)
    finally:
        done.set()
        watcher.join(10)


# -- 6-8: floods --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Flooded:
    probes: str
    probes_ok: bool
    threads: tuple[int, int, int]  # before, peak, after
    rss: tuple[int, int, int]  # bytes: before, peak (during and after), after
    outcome: Any
    before: Any  # what `first` measured before the flood


def flooded(
    run: Run,
    name: str,
    attack: Callable[..., Any],
    *args: Any,
    first: Callable[[scale.Process], Any] | None = None,
) -> Flooded:
    """An exporter tracking JOBS jobs under `attack(port, *args)` (in the flood process), probed
    on /-/healthy and /metrics meanwhile, its threads and RSS sampled before, during and after."""
    sim = Simulator(jobs=scale.jobs_for(JOBS), clock=ManualClock(60.0), max_page_size=100)
    raw = scale.config(sim)
    raw["sources"].append({"name": "sd", **caller_source(sim, webhook_token=WEBHOOK_TOKEN)})
    with sim, run.log(name) as log, scale.exporter(raw, stderr=log, timeout=120) as process:
        scale.until(lambda: scale.tracked(process) >= JOBS, what=f"{JOBS} jobs", timeout=120)
        process.get("/metrics")
        before = first(process) if first else None

        def sample() -> tuple[int, int]:
            return process.threads(), process.status("VmRSS")

        threads, rss = sample()
        with flood.Watch(process.port, ("/-/healthy", "/metrics"), sample) as watch:
            outcome = run.flood(attack, process.port, *args)
        wait_for(lambda: process.threads() <= threads * 1.2, run.form.settle)
        after = sample()
        seen = [*watch.samples, after]
        probes, ok = watch.summary()
    return Flooded(probes, ok, (threads, max(s[0] for s in seen), after[0]),
                   (rss, max(s[1] for s in seen), after[1]), outcome, before)  # fmt: skip


def _footprint(result: Flooded) -> tuple[str, bool]:
    (t0, tp, t1), (r0, rp, r1) = result.threads, result.rss
    mb = 2**20
    text = (f"threads {t0} -> {tp} -> {t1}; RSS {r0 / mb:.0f} -> {rp / mb:.0f} -> "
            f"{r1 / mb:.0f} MB")  # fmt: skip
    return text, t1 <= t0 * 1.2 and rp < 2 * r0 and r1 < 2 * r0


def header_flood(run: Run) -> tuple[str, bool]:
    """Connections trickling their request head, a byte every 3 s, replaced when cut."""
    form = run.form
    head = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Trickle: " + b"a" * 4096
    result = flooded(run, "headers", flood.trickle, form.header_connections,
                     form.header_seconds, (b"",), head, 3.0)  # fmt: skip
    footprint, small = _footprint(result)
    peak = result.outcome.peak_open
    return (f"{form.header_connections} x {form.header_seconds:.0f} s (peak {peak} open): "
            f"{result.probes}; {footprint}"), result.probes_ok and small  # fmt: skip


def _post_head(path: str, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             "Content-Length: 60000", *(f"{k}: {v}" for k, v in headers.items())]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def body_flood(run: Run) -> tuple[str, bool]:
    """Connections that send a whole head with Content-Length: 60000, then a byte of body
    every 5 s, half to the jobs API and half to a webhook (with its token)."""
    form = run.form
    right = {"X-Webhook-Token": WEBHOOK_TOKEN}
    openings = (_post_head("/api/v1/jobs"), _post_head(webhook_path("sd"), **right))

    def wrong_token(process: scale.Process) -> float | None:
        head = _post_head(webhook_path("sd"), **{"X-Webhook-Token": "wrong"})
        return flood.first_answer(process.port, head + b"{", form.token_cap)

    result = flooded(run, "bodies", flood.trickle, form.body_connections, form.body_seconds,
                     openings, b"{" + b" " * 4096, 5.0, first=wrong_token)  # fmt: skip
    trickled: flood.Trickled = result.outcome
    # A connection still open is counted once it is old enough to have been cut.
    decided = [*trickled.held, *(age for age in trickled.still_open if age > DEADLINE + SLACK)]
    median = statistics.median(decided) if decided else 0.0
    longest = max(decided, default=0.0)
    answered = result.before
    wrong = "not answered" if answered is None else f"answered in {answered:.2f} s"
    footprint, small = _footprint(result)
    measured = (f"{form.body_connections} x {form.body_seconds:.0f} s: held p50 {median:.1f} s, "
                f"max {longest:.1f} s ({len(trickled.held)} let go, {len(trickled.still_open)} "
                f"open at the end); {result.probes}; wrong-token webhook with a trickling body "
                f"{wrong} (cap {form.token_cap:.0f} s); {footprint}")  # fmt: skip
    # The longest may include a wait in the listen backlog before the deadline started.
    cut = bool(decided) and median <= DEADLINE + SLACK and longest <= 2 * (DEADLINE + SLACK)
    at_once = answered is not None and answered < 1.0
    return measured, cut and at_once and result.probes_ok and small


def loop_flood(run: Run) -> tuple[str, bool]:
    """Clients requesting the status page over and over, each on its kept-alive connection."""
    form = run.form
    result = flooded(run, "loop", flood.loop, form.loopers, form.loop_seconds, "/")
    answers, failures = result.outcome
    return (f"{form.loopers} x {form.loop_seconds:.0f} s ({answers} pages, {failures} failed): "
            f"{result.probes}"), result.probes_ok  # fmt: skip


# -- 9: SIGTERM ---------------------------------------------------------------------------------


def sigterm(run: Run) -> tuple[str, bool]:
    """SIGTERM while a client has asked for /metrics (about 5 MB) and reads none of it."""
    sim = Simulator(jobs=scale.jobs_for(JOBS), clock=ManualClock(60.0), max_page_size=100)
    log_path = run.tmp / "sigterm.log"
    with sim, run.log("sigterm") as log, scale.exporter(
        scale.config(sim), stderr=log, timeout=120
    ) as process:  # fmt: skip
        scale.until(lambda: scale.tracked(process) >= JOBS, what=f"{JOBS} jobs", timeout=120)
        size = len(process.get("/metrics"))
        with socket.socket() as stuck:
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stuck.connect(("127.0.0.1", process.port))
            stuck.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            time.sleep(1.0)  # the answer is being written, and blocks
            started = time.perf_counter()
            process.popen.send_signal(signal.SIGTERM)
            try:
                process.popen.wait(run.form.shutdown_cap)
                took: float | None = time.perf_counter() - started
            except subprocess.TimeoutExpired:
                took = None
                process.popen.kill()
                process.popen.wait(30)
    traced = tracebacks(log_path)
    exit_text = (f"not within {run.form.shutdown_cap:.0f} s (killed)" if took is None
                 else f"{took:.1f} s")  # fmt: skip
    return (f"/metrics {size / 2**20:.1f} MB unread: exit {exit_text}, {traced} tracebacks",
            took is not None and took <= 5.0 and traced == 0)  # fmt: skip


# -- the smaller ones ---------------------------------------------------------------------------


@contextlib.contextmanager
def small_exporter(run: Run, name: str, *extra: str) -> Iterator[tuple[Simulator, scale.Process]]:
    """An exporter with a source `lang` of the registered provider, one `limited` to 3 jobs and a
    Diffusion source `sd` that takes webhooks; log in JSON at info."""
    jobs = tuple(SimJob(f"l-{i}", registered()[0], duration=1e7) for i in range(40))
    with Simulator(jobs=jobs, clock=ManualClock(60.0)) as sim:
        raw = small_config(sim, sd=caller_source(sim, webhook_token=WEBHOOK_TOKEN),
                           limited=registered_source(sim, max_jobs=3))  # fmt: skip
        with run.log(name) as log, scale.exporter(
            raw, "--log.level=info", "--log.format=json", *extra, stderr=log, timeout=60
        ) as process:  # fmt: skip
            yield sim, process


def name_filter(run: Run) -> tuple[str, bool]:
    with small_exporter(run, "name") as (_, process):
        body = process.get("/metrics?name[]=process_cpu_seconds_total")
    found = b"process_cpu_seconds_total" in body
    return f"{len(body)} bytes, {'with' if found else 'without'} the family", found


def methods(run: Run) -> tuple[str, bool]:
    seen, ok = [], True
    with small_exporter(run, "methods") as (_, process):
        for path in ("/metrics", "/"):
            for method in ("DELETE", "FOO"):
                answer = request(process, method, path)
                allow = answer.headers.get("Allow")
                seen.append(f"{method} {path} {answer.status}{f' Allow: {allow}' if allow else ''}")
                ok = ok and answer.status == 405 and bool(allow)
    return ", ".join(seen), ok


def webhook_probe(run: Run) -> tuple[str, bool]:
    payload = {"status": "success", "id": "sd-x"}  # refused for its token, whatever it says
    with small_exporter(run, "webhook") as (_, process):
        unknown = request(process, "POST", webhook_path("no-such-source"), payload,
                          **{"X-Webhook-Token": "wrong"})  # fmt: skip
        wrong = request(
            process, "POST", webhook_path("sd"), payload, **{"X-Webhook-Token": "wrong"}
        )
    same = (unknown.status, unknown.data) == (wrong.status, wrong.data)
    return (f"unknown source {unknown.status} {unknown.data.decode().strip()!r}, wrong token "
            f"{wrong.status} {wrong.data.decode().strip()!r}"), same  # fmt: skip


def refusals(run: Run) -> tuple[str, bool]:
    log_path = run.tmp / "refusals.log"
    with small_exporter(run, "refusals") as (_, process):
        statuses = [request(process, "POST", "/api/v1/jobs", {"source": "limited",
                    "job_id": f"l-{i}"}).status for i in range(40)]  # fmt: skip
        time.sleep(0.5)
    refused = sum(1 for status in statuses if status == 429)
    lines = warnings(text(log_path), "limited")
    return f"{refused} refused in one streak: {lines} warning lines", refused > 0 and lines == 1


def forwarded_delete(run: Run) -> tuple[str, bool]:
    """DELETE /api/v1/jobs/lang/<id> at shard 0 for a job shard 1 owns, the ID holding %23 or
    %3F; the ID is chosen so that shard 0 owns what is left of it if the peer gets it decoded
    (cut at # or ?), and the peer then answers 421 instead of 404."""
    shard = Shard(0, 2)

    def job_id(cut: str) -> str:
        return next(f"x{i}{cut}y" for i in range(10_000)
                    if shard.owner("lang", f"x{i}{cut}y") == 1
                    and shard.owner("lang", f"x{i}") == 0)  # fmt: skip

    base = _free_pair()
    peers = f"--shard.peer-url=http://127.0.0.1:{base}{{shard}}"
    seen, ok = [], True
    with Simulator(jobs=()) as sim, run.log("shard0") as log0, run.log("shard1") as log1:
        raw = small_config(sim)
        with scale.exporter(raw, "--total-shards=2", "--shard=0", peers, stderr=log0,
                            port=base * 10, timeout=60) as first, scale.exporter(
            raw, "--total-shards=2", "--shard=1", peers, stderr=log1, port=base * 10 + 1,
            timeout=60,
        ):  # fmt: skip
            for cut, encoded in (("#", "%23"), ("?", "%3F")):
                path = f"/api/v1/jobs/lang/{job_id(cut).replace(cut, encoded)}"
                answer = request(first, "DELETE", path)
                seen.append(f"{encoded}: {answer.status}")
                ok = ok and answer.status in {400, 404}
    return ", ".join(seen) + " (404: the peer got the ID whole; 421: decoded)", ok


def _free_pair() -> int:
    """A number B such that ports B0 and B1 are both free (the peer template is B{shard})."""
    for _ in range(200):
        base = 2000 + secrets.randbelow(4000)
        with contextlib.ExitStack() as held:
            try:
                for port in (base * 10, base * 10 + 1):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return base
    raise RuntimeError("no two free consecutive ports")


def dangling_storage(run: Run) -> tuple[str, bool]:
    link = run.tmp / "store"  # a name no message can match by chance
    link.symlink_to(run.tmp / "nowhere" / "data")
    log_path = run.tmp / "dangling.log"
    with Simulator(jobs=()) as sim:
        try:
            with run.log("dangling") as log, scale.exporter(
                small_config(sim), "--log.format=json", stderr=log, storage=str(link), timeout=30
            ):  # fmt: skip
                started = True
        except RuntimeError:
            started = False
    said = text(log_path).strip().splitlines()
    message = said[-1] if said else "(nothing)"
    if started:
        return "started, storage at the link's target", (run.tmp / "nowhere").exists()
    message = json.loads(message).get("error", message) if message.startswith("{") else message
    says_so = re.search(r"symlink|symbolic link|dangling", message, re.IGNORECASE)
    return f"says {message!r}", bool(says_so)


# -- the table ----------------------------------------------------------------------------------

ATTACKS: tuple[tuple[str, str, str, Callable[[Run], tuple[str, bool]]], ...] = (
    ("config-key", "a key in a config field that fails validation, then POST /-/reload",
     "0 fragments (8+ chars) in answer, log, --config.check", key_in_config),
    ("error-message-key", "an upstream error message (in a 200) with the key at characters 95-110",
     "0 fragments in the log", key_in_error_message),
    ("status-key", "an upstream status string holding the key",
     "0 fragments in /metrics and the status page", key_in_status),
    ("auth-timing", "basic auth: unknown user vs known user with a wrong password (cost 12)",
     "medians within 20%", auth_timing),
    ("full-disk", "--storage.path on a small tmpfs, registrations, kill -9, restart",
     "none lost, no traceback, /-/ready 503 while full", full_disk),
    ("header-flood", "connections trickling their headers (1 byte every 3 s), 2,000 jobs",
     "p99 < 1 s, no failure; threads after <= 1.2x before; RSS < 2x", header_flood),
    ("body-flood", "connections sending Content-Length: 60000, then 1 byte every 5 s",
     f"cut at the {DEADLINE:.0f} s deadline; p99 < 1 s; wrong token answered < 1 s", body_flood),
    ("loop-flood", "clients looping on / (status page), 2,000 jobs",
     "p99 < 1 s, no failure", loop_flood),
    ("sigterm", "SIGTERM while a client requested /metrics and does not read",
     "exit <= 5 s, no traceback", sigterm),
    ("name-filter", "?name[]=process_cpu_seconds_total", "non-empty", name_filter),
    ("methods", "DELETE and FOO on /metrics and /", "405 with Allow", methods),
    ("webhook-probe", "webhook: unknown source vs wrong token", "the same answer",
     webhook_probe),
    ("refusal-log", "refused registrations (max_jobs) in one streak", "1 log line",
     refusals),
    ("forwarded-delete", "DELETE forwarded to its shard, the ID holding %23 / %3F",
     "kept encoded (peer answers 404)", forwarded_delete),
    ("dangling-storage", "a dangling symlink as --storage.path", "says so",
     dangling_storage),
)  # fmt: skip


def attack_all(form: Form, only: set[str] | None = None) -> list[Row]:
    rows = []
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="attack-") as tmp, \
            concurrent.futures.ProcessPoolExecutor(
            1, mp_context=context, initializer=flood.raise_open_files
        ) as pool:  # fmt: skip
        pool.submit(time.sleep, 0).result(timeout=60)  # the flood process, started beforehand
        run = Run(form, Path(tmp), pool)
        for key, attack, target, function in ATTACKS:
            if only and key not in only:
                continue
            started = time.perf_counter()
            try:
                measured, held = function(run)
            except (Exception, SystemExit) as exc:
                measured, held = f"error: {type(exc).__name__}: {exc}", False
            rows.append(Row(key, attack, measured, target, held))
            print(f"[{time.perf_counter() - started:5.1f} s] {key}: {'held' if held else 'FAILED'}",
                  file=sys.stderr, flush=True)  # fmt: skip
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| attack | measured | target | held? |", "|---|---|---|---|"]
    lines += [f"| {r.attack} | {r.measured} | {r.target} | {'yes' if r.held else 'NO'} |"
              for r in rows]  # fmt: skip
    return "\n".join(lines)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a short form of every attack, for the test suite "
                        "(about 2 min)")  # fmt: skip
    parser.add_argument("--json", metavar="PATH", help="also write the rows to PATH as JSON")
    ids = ", ".join(attack[0] for attack in ATTACKS)
    parser.add_argument("--only", metavar="ID,...", help=f"run only these attacks: {ids}")
    return parser.parse_args()


def main() -> int:
    args = _arguments()
    form = QUICK if args.quick else Form()
    rows = attack_all(form, set(args.only.split(",")) if args.only else None)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")
    return 0 if rows and all(row.held for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
