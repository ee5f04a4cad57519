"""A loopback HTTP server that speaks every provider's job-status API, for --demo, tests and
benchmarks.

This is the core; each provider brings its own part (`exporter/providers/<name>/simulator.py`,
made of the kit in `kit.py`), found through the provider registry and imported on first use.
The core routes each request to the part whose route it matches, checks the key as that part
does, and answers a job's status or a list, filtered and paged as the part's API does. Jobs
move along `SimJob` timelines; time is whatever `clock()` returns (seconds since start), so
tests can hold or jump it. With `arrivals_every`, new jobs keep appearing, one per period for
each part that has arrivals, as a pipeline would start them. Faults are switched per job ID (or
"*" for all; `LISTING` for every list request): an HTTP status with Retry-After, a delay, a raw
body, each for a number of answers or until cleared. Every request is logged in `requests` for
assertions.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import json
import socket
import struct
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import import_module
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import parse_qs, urlsplit

from exporter.providers import PROVIDERS, package
from exporter.simulator.kit import (
    DEMO_KEY,
    DEMO_WEBHOOK_TOKEN,
    Answer,
    Call,
    Demo,
    Keys,
    Listing,
    ListRoute,
    Moment,
    Route,
    SimJob,
    SimPart,
    error_answer,
    json_answer,
    rendered,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

_TRICKLE = "X-Simulator-Trickle"  # internal: the handler sends the body a byte at a time
_CUT = "X-Simulator-Cut"  # internal: the handler breaks off the body after this many bytes
_STALL = "X-Simulator-Stall"  # internal: ...and pauses this long instead of resetting
_HANG_UP = "X-Simulator-Hang-Up"  # internal: the handler resets the connection, answering nothing
LISTING = "(listing)"  # the fault key of every list request


@functools.cache
def parts() -> tuple[SimPart, ...]:
    """Every provider's part of the simulator, in the registry's order; imported on first use,
    so that the exporter itself never imports simulator code."""
    found = []
    for name in PROVIDERS:
        part = import_module(f"{package(name)}.simulator").PART
        if not isinstance(part, SimPart) or part.name != name:
            raise TypeError(f"{package(name)}.simulator.PART is not the part of {name!r}")
        found.append(part)
    return tuple(found)


def part_of(api: str) -> SimPart:
    """The part that serves jobs of provider `api`."""
    return next(part for part in parts() if part.name == api)


def render(job: SimJob, elapsed: float, started_at: datetime, variant: str = "") -> dict[str, Any]:
    """The API's answer for `job`, `elapsed` seconds after the simulator started."""
    return rendered(part_of(job.api).render, job, elapsed, started_at, variant)


def __getattr__(name: str) -> tuple[SimJob, ...]:
    """DEMO_JOBS, built from the parts when first asked for. Not on import: a part imported
    first imports the kit, which runs this package first, and importing the parts then would
    meet that part half made."""
    if name == "DEMO_JOBS":
        return tuple(job for part in parts() for job in part.demo_jobs)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    DEMO_JOBS: tuple[SimJob, ...]  # the jobs the demo config names, every part's


@dataclass
class Fault:
    """How to misbehave: `status` with an error body, a `delay`, or a raw `body`."""

    status: int | None = None
    retry_after: str | None = None
    delay: float = 0.0
    body: bytes | None = None
    content_type: str = "application/json"
    trickle: float = 0.0  # seconds between the bytes of the body
    cut_after: int | None = None  # send this many body bytes, then reset the connection...
    stall: float = 0.0  # ...or, if set, pause this long there and then send the rest
    hang_up: bool = False  # read the request, then reset the connection without a word
    times: int | None = None  # answers left; None until cleared
    headers: Mapping[str, str] = field(default_factory=dict)  # sent with the answer, any status


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as the simulator received it."""

    at: float  # time.monotonic()
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


class ManualClock:
    """A clock the caller moves; lets a test put every job at a chosen moment."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Simulator:
    jobs: Iterable[SimJob] | None = None  # default: the demo's, those only its calls name too
    key: str = DEMO_KEY
    keys: frozenset[str] = frozenset()  # more keys accepted like `key` (sources keyed apart)
    bearer_tokens: frozenset[str] = frozenset()  # bearer tokens (Entra ID's) accepted like a key
    clock: Callable[[], float] | None = None
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[Seen] = field(default_factory=list)  # answered, in the order answered
    arrivals: list[str] = field(default_factory=list)  # request paths as they arrive
    arrived_at: list[float] = field(default_factory=list)  # and when (time.monotonic())
    arrivals_every: float | None = None  # seconds between the jobs that arrive by themselves
    max_page_size: int = 100  # the most a list page holds, whatever the client asks

    def __post_init__(self) -> None:
        jobs = self.jobs
        if jobs is None:
            jobs = [job for part in parts() for job in (*part.demo_jobs, *part.called_jobs)]
        self._jobs = {job.job_id: job for job in jobs}
        self._keys = Keys(frozenset({self.key, *self.keys}), self.bearer_tokens)
        self._arrived = 0  # periods whose arrivals have arrived so far
        self._ordered: list[SimJob] | None = None  # the jobs by creation, while none changes
        self._faults: dict[str, Fault] = {}
        self.connections: set[socket.socket] = set()  # open keep-alive connections
        self._lock = threading.Lock()
        self.started_at = datetime.now(UTC)
        started = time.monotonic()
        self._clock = self.clock or (lambda: time.monotonic() - started)
        self._server = _Server((self.host, self.port), _handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="simulator", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Simulator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.drop_connections()  # a stopped server must not go on answering kept-alive clients

    def drop_connections(self) -> None:
        """Close every open client connection, as a server restart or a load balancer would."""
        for conn in list(self.connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def set_fault(self, job_id: str, fault: Fault) -> None:
        with self._lock:
            self._faults[job_id] = fault

    def clear_fault(self, job_id: str) -> None:
        with self._lock:
            self._faults.pop(job_id, None)

    def seen(self, job_id: str) -> list[Seen]:
        return [r for r in list(self.requests) if r.path.split("?")[0].endswith(f"/{job_id}")]

    def _take_fault(self, job_id: str) -> Fault | None:
        with self._lock:
            fault = self._faults.get(job_id) or self._faults.get("*")
            if fault is None:
                return None
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults = {k: f for k, f in self._faults.items() if f is not fault}
            return fault

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        """Route one request: (status, headers, body)."""
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}

        def call(groups: dict[str, str | Any]) -> Call:
            found = {key: value for key, value in groups.items() if value is not None}
            return Call(method, url.path, query, headers, body, found)

        for part, route in _routes():
            match = route.path.fullmatch(url.path)
            if match is None or route.method != method:
                continue
            if isinstance(route, ListRoute):
                return self._answer_list(part, route, call(match.groupdict()))
            return self._answer_job(part, call(match.groupdict()))
        return error_answer(404, "NotFound", "No such route (simulator).")

    def elapsed(self) -> float:
        """Seconds since the simulator started, by its clock."""
        return self._clock()

    def present(self) -> list[SimJob]:
        """The jobs that exist now (created by now), oldest first, those that arrive by
        themselves too."""
        elapsed = self._clock()
        with self._lock:
            every = self.arrivals_every
            while every and (self._arrived + 1) * every <= elapsed:
                self._arrived += 1
                for part in parts():
                    if part.arrival is not None:
                        job = part.arrival(self._arrived, every)
                        self._jobs[job.job_id] = job
                        self._ordered = None
            if self._ordered is None:  # kept sorted between changes: listings page through it
                self._ordered = sorted(self._jobs.values(), key=lambda j: (j.created_at, j.job_id))
            jobs = self._ordered
        return jobs[: bisect.bisect_right(jobs, elapsed, key=lambda job: job.created_at)]

    def remove_jobs(self, job_ids: Iterable[str]) -> None:
        """Forget jobs, as the API does when they expire or are deleted."""
        with self._lock:
            for job_id in job_ids:
                self._jobs.pop(job_id, None)
            self._ordered = None

    def add_jobs(self, jobs: Iterable[SimJob]) -> None:
        """More jobs, as if started upstream now or when their `created_at` says."""
        with self._lock:
            self._jobs.update((job.job_id, job) for job in jobs)
            self._ordered = None

    def _answer_job(self, part: SimPart, call: Call) -> Answer:
        job_id = call.groups["job_id"]
        denied = part.check_key(call, self._keys)
        fault = None if denied else self._take_fault(job_id)
        answer = denied or (fault and _fault_answer(fault))
        if answer:
            return answer
        status, extra, out = self._job_status(part, call.variant, job_id)
        if fault and fault.retry_after:  # a normal answer that paces the client
            extra = {**extra, "Retry-After": fault.retry_after}
        if fault:
            extra = {**extra, **fault.headers}
        return status, {**part.headers, **extra}, out

    def _job_status(self, part: SimPart, variant: str, job_id: str) -> Answer:
        job = self._jobs.get(job_id)
        if job is None or job.api != part.name or job.created_at > self._clock():
            return part.not_found()
        elapsed = self._clock()
        if job.throttle and job.throttle[0] <= elapsed < job.throttle[1]:
            return part.throttled(job, self.started_at + timedelta(seconds=elapsed))
        return json_answer(rendered(part.render, job, elapsed, self.started_at, variant))

    def _answer_list(self, part: SimPart, route: ListRoute, call: Call) -> Answer:
        """One list request: which jobs it names, filtered and paged as the part's API does."""
        denied = part.check_key(call, self._keys)
        fault = None if denied else self._take_fault(LISTING)
        answer = denied or (fault and _fault_answer(fault))
        if answer:
            return answer
        elapsed = self.elapsed()
        jobs = [job for job in self.present() if job.api == part.name]
        listing = Listing(call, jobs, part.render, elapsed, self.started_at, self.url,
                          self.max_page_size)  # fmt: skip
        status, extra, out = route.answer(listing)
        return status, {**part.headers, **extra}, out


@functools.cache
def _routes() -> tuple[tuple[SimPart, Route | ListRoute], ...]:
    """Every part's routes: every job's status first, then every list."""
    found: list[tuple[SimPart, Route | ListRoute]] = []
    found += [(part, route) for part in parts() for route in part.routes]
    found += [(part, route) for part in parts() for route in part.listings]
    return tuple(found)


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # an exporter opens max_concurrency connections at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (an exporter stopping) is no error of the simulator's."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _fault_answer(fault: Fault) -> Answer | None:
    if fault.delay:
        time.sleep(fault.delay)
    if fault.hang_up:
        return 200, {_HANG_UP: "1"}, b""
    if fault.cut_after is not None:
        body = fault.body or json.dumps({"status": "running", "padding": "x" * 4096}).encode()
        return 200, {_CUT: str(fault.cut_after), _STALL: str(fault.stall)}, body
    if fault.trickle:
        body = fault.body or b'{"status": "running", "tasks": {}}'
        return fault.status or 200, {_TRICKLE: str(fault.trickle)}, body
    if fault.body is not None:
        return (
            fault.status or 200,
            {"Content-Type": fault.content_type, **fault.headers},
            fault.body,
        )
    if fault.status is None:
        return None  # a pure delay (or headers on a normal answer): answer normally
    status, headers, out = error_answer(fault.status, "Simulated", f"Simulated HTTP {fault.status}")
    waits = {"Retry-After": fault.retry_after} if fault.retry_after else {}
    return status, {**headers, **waits, **fault.headers}, out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stalls
    sim: Simulator  # set per server by _handler()

    def setup(self) -> None:
        super().setup()
        self.sim.connections.add(self.connection)

    def finish(self) -> None:
        self.sim.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.sim.arrived_at.append(time.monotonic())
        self.sim.arrivals.append(self.path)
        status, extra, out = self.sim.answer(self.command, self.path, headers, body)
        self.sim.requests.append(
            Seen(time.monotonic(), self.command, self.path, headers, body, status)
        )
        if extra.pop(_HANG_UP, None):
            self._reset()
            return
        self.send_response(status)
        self.send_header("Content-Type", extra.pop("Content-Type", "application/json"))
        trickle = float(extra.pop(_TRICKLE, 0))
        cut = extra.pop(_CUT, None)
        stall = float(extra.pop(_STALL, 0))
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        # A client that gave up (a timeout test) is told nothing more.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if cut is not None:
                self._break_off(out, int(cut), stall)
            else:
                self._write(out, trickle)

    def _write(self, out: bytes, trickle: float) -> None:
        if not trickle:
            self.wfile.write(out)
        for i in range(len(out) if trickle else 0):
            self.wfile.write(out[i : i + 1])
            self.wfile.flush()
            time.sleep(trickle)

    def _break_off(self, out: bytes, cut: int, stall: float) -> None:
        self.wfile.write(out[:cut])
        self.wfile.flush()
        if stall:
            time.sleep(stall)
            self.wfile.write(out[cut:])
            return
        self._reset()

    def _reset(self) -> None:
        """SO_LINGER 0: close with a reset, as a crashed server or a middlebox does."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    do_GET = do_POST = _serve  # noqa: N815 - BaseHTTPRequestHandler's naming

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def _handler(sim: Simulator) -> type[BaseHTTPRequestHandler]:
    return type("Handler", (_Handler,), {"sim": sim})


def demo_arrivals(exporter_url: str, every: float) -> list[str]:
    """What `--demo` shows of jobs that arrive by themselves: it makes each part's demo calls
    to the exporter (a job registered through its jobs API, a webhook called as the upstream
    would), and says which sources discover the jobs that start every `every` seconds. Returns
    the lines to print: the curl commands that do the same, then the discovery line."""
    lines = []
    for part in parts():
        for demo_call in part.demo_calls:
            url = f"{exporter_url}{demo_call.path}"
            headers = dict(demo_call.headers)
            data = json.dumps(demo_call.body).encode()
            request = urllib.request.Request(  # noqa: S310 - the exporter's own loopback URL
                url, data=data, headers={"Content-Type": "application/json", **headers}
            )
            with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=5):  # noqa: S310
                pass
            header = "".join(f" -H '{k}: {v}'" for k, v in headers.items())
            lines.append(f"curl -X POST{header} {url} -d '{data.decode()}'")
    demo = Demo("", discovery=True)
    discovering = [
        source["name"]
        for part in parts()
        if part.arrival is not None
        for source in part.demo_sources(demo)
        if "discovery" in source
    ]
    if discovering:
        lines.append(
            f"and discovery: sources {' and '.join(discovering)} list their APIs, where a new "
            f"job of each starts every {every:g}s"
        )
    return lines


def demo_config(
    base_url: str, key: str = DEMO_KEY, poll_interval: str = "5s", *, discovery: bool = False
) -> dict[str, Any]:
    """The raw config --demo runs: each part's demo sources, in the registry's order, all
    pointed at the simulator. With `discovery`, sources whose API lists jobs find them
    themselves instead of naming them."""
    demo = Demo(base_url, key, poll_interval, discovery)
    return {
        "global": {"poll_interval": poll_interval, "timeout": "5s", "max_retry_wait": "5s"},
        "sources": [source for part in parts() for source in part.demo_sources(demo)],
    }


__all__ = [
    "DEMO_JOBS",
    "DEMO_KEY",
    "DEMO_WEBHOOK_TOKEN",
    "LISTING",
    "Fault",
    "ManualClock",
    "Moment",
    "Seen",
    "SimJob",
    "SimPart",
    "Simulator",
    "demo_arrivals",
    "demo_config",
    "part_of",
    "parts",
    "render",
]
