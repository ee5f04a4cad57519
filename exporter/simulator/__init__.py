"""A loopback HTTP server that speaks the five job-status APIs, for --demo, tests and benchmarks.

Routes are the real ones (see each provider module), list endpoints included (paged, with the
Translator's `statuses` and `createdDateTimeUtcStart` filters, and both `nextLink` spellings).
Jobs move along `SimJob` timelines; time is whatever `clock()` returns (seconds since start), so
tests can hold or jump it. With `arrivals_every`, new translation batches and training jobs keep
appearing, one of each per period, as a pipeline would start them. Faults are
switched per job ID (or "*" for all): an HTTP status with Retry-After, a delay, a raw body, each
for a number of answers or until cleared. Every request is logged in `requests` for assertions.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import re
import socket
import struct
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import parse_qs, urlencode, urlsplit

from exporter.simulator.scenarios import (
    API_DEMO_JOB,
    DEMO_JOBS,
    WEBHOOK_DEMO_JOB,
    SimJob,
    arrival,
    created,
    iso,
    render,
    translation_status,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

DEMO_KEY = "demo-key"
_TRICKLE = "X-Simulator-Trickle"  # internal: the handler sends the body a byte at a time
_CUT = "X-Simulator-Cut"  # internal: the handler breaks off the body after this many bytes
_STALL = "X-Simulator-Stall"  # internal: ...and pauses this long instead of resetting
Answer = tuple[int, dict[str, str], bytes]

_AUTHORING = r"^/language/authoring/analyze-(text|conversations)/projects/[^/]+/train/jobs/([^/]+)$"
_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("GET", re.compile(_AUTHORING), "training"),
    ("GET", re.compile(r"^/language/analyze-(text|conversations)/jobs/([^/]+)$"), "analyze_text"),
    ("GET", re.compile(r"^/text/analytics/(v3\.[^/]+)/analyze/jobs/([^/]+)$"), "text_analytics"),
    ("GET", re.compile(r"^/translator/document/batches()/([^/]+)$"), "translation"),
    ("GET", re.compile(r"^/translator/text/batch/(v1\.[^/]+)/batches/([^/]+)$"), "translation"),
    ("POST", re.compile(r"^/api/v3/fine_tune_status()/([^/]+)$"), "stable_diffusion"),
)
_PROJECTS = r"^/language/authoring/analyze-(text|conversations)/projects"
_LISTS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("GET", re.compile(r"^/translator/document/batches()()$"), "translation"),
    ("GET", re.compile(r"^/translator/text/batch/(v1\.[^/]+)/batches()$"), "translation"),
    ("GET", re.compile(_PROJECTS + r"()$"), "projects"),
    ("GET", re.compile(_PROJECTS + r"/([^/]+)/train/jobs$"), "training"),
    ("POST", re.compile(r"^/api/v3/finetune_list()()$"), "stable_diffusion"),
)
LISTING = "(listing)"  # the fault key of every list request
DEFAULT_PAGE_SIZE = 50


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
    times: int | None = None  # answers left; None until cleared


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
    jobs: Iterable[SimJob] = (*DEMO_JOBS, API_DEMO_JOB, WEBHOOK_DEMO_JOB)
    key: str = DEMO_KEY
    keys: frozenset[str] = frozenset()  # more keys accepted like `key` (sources keyed apart)
    bearer_tokens: frozenset[str] = frozenset()  # Entra ID tokens accepted like the key
    clock: Callable[[], float] | None = None
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[Seen] = field(default_factory=list)  # answered, in the order answered
    arrivals: list[str] = field(default_factory=list)  # request paths as they arrive
    arrived_at: list[float] = field(default_factory=list)  # and when (time.monotonic())
    arrivals_every: float | None = None  # seconds between new batches and training jobs
    max_page_size: int = 100  # the most a list page holds, whatever the client asks

    def __post_init__(self) -> None:
        self._jobs = {job.job_id: job for job in self.jobs}
        self._arrived = 0  # jobs of each kind that arrived by themselves so far
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
        for route_method, pattern, api in _ROUTES:
            match = pattern.match(url.path)
            if match and route_method == method:
                return self._answer_job(api, match[1], match[2], headers, body)
        for route_method, pattern, kind in _LISTS:
            match = pattern.match(url.path)
            if match and route_method == method:
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                listing = _Listing(self, kind, match[1], match[2], url.path, query)
                api = "stable_diffusion" if kind == "stable_diffusion" else "azure"
                denied = self._check_key(api, headers, body)
                fault = None if denied else self._take_fault(LISTING)
                return denied or (fault and _fault_answer(fault)) or listing.answer()
        return _error(404, "NotFound", "No such route (simulator).")

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
                for api in ("translation", "training"):
                    job = arrival(api, self._arrived, every)
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

    def _answer_job(
        self, api: str, variant: str, job_id: str, headers: dict[str, str], body: bytes
    ) -> Answer:
        denied = self._check_key(api, headers, body)
        fault = None if denied else self._take_fault(job_id)
        answer = denied or (fault and _fault_answer(fault))
        if answer:
            return answer
        status, extra, out = self._job_status(api, variant, job_id)
        if fault and fault.retry_after:  # a normal answer that paces the client (Translator)
            extra = {**extra, "Retry-After": fault.retry_after}
        return status, extra, out

    def _job_status(self, api: str, variant: str, job_id: str) -> Answer:
        job = self._jobs.get(job_id)
        if job is None or job.api != api or job.created_at > self._clock():
            if api == "stable_diffusion":
                return 200, {}, _json({"status": "error", "messege": "No such training id"})
            return _error(404, "NotFound", "Job ID not found.")
        elapsed = self._clock()
        if job.throttle and job.throttle[0] <= elapsed < job.throttle[1]:
            status, hdrs, out = _error(429, "RequestRateTooHigh", "User's request rate is too high")
            return status, {**hdrs, "Retry-After": str(job.retry_after)}, out
        return 200, {}, _json(render(job, elapsed, self.started_at, variant))

    def _check_key(self, api: str, headers: dict[str, str], body: bytes) -> Answer | None:
        accepted = {self.key, *self.keys}
        if api != "stable_diffusion":
            bearer = headers.get("authorization", "").removeprefix("Bearer ")
            if headers.get("ocp-apim-subscription-key") in accepted or bearer in self.bearer_tokens:
                return None
            return _error(401, "Unauthorized", "User is not authorized")
        try:
            key = json.loads(body or b"{}").get("key")
        except (ValueError, AttributeError):
            key = None
        if key in accepted:
            return None
        # The Stable Diffusion API reports a bad key with HTTP 200.
        return 200, {}, _json({"status": "error", "message": "Invalid Api Key"})


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # an exporter opens max_concurrency connections at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (an exporter stopping) is no error of the simulator's."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass
class _Listing:
    """One list request: which jobs it names, filtered and paged as the real API does."""

    sim: Simulator
    kind: str
    variant: str  # the v1.x API version, or the workload
    project: str
    path: str
    query: dict[str, str]

    def answer(self) -> Answer:
        sim, elapsed = self.sim, self.sim.elapsed()
        jobs = sim.present()
        if self.kind == "stable_diffusion":
            listed = [
                {"model_id": j.job_id, "status": render(j, elapsed, sim.started_at)["messege"]}
                for j in jobs
                if j.api == "stable_diffusion"
            ]
            return 200, {}, _json({"status": "success", "data": listed})
        if self.kind == "projects":
            return self._page(self._projects(jobs), "nextLink")

        def rendered(job: SimJob) -> dict[str, Any]:
            return render(job, elapsed, sim.started_at, self.variant)

        if self.kind == "training":
            mine = [j for j in jobs if j.api == "training" and j.project == self.project]
            return self._page(mine, "nextLink", rendered)
        batches = [j for j in jobs if j.api == "translation"]
        start = self.query.get("createdDateTimeUtcStart")
        if start:
            since = datetime.fromisoformat(start)
            batches = [j for j in batches if created(j, sim.started_at) >= since]
        statuses = self.query.get("statuses")
        if statuses:
            wanted = {status.strip().casefold() for status in statuses.split(",")}
            batches = [j for j in batches if translation_status(j, elapsed).casefold() in wanted]
        link = "@nextLink" if self.variant.startswith("v1.") else "nextLink"
        return self._page(batches, link, rendered)

    def _projects(self, jobs: list[SimJob]) -> list[dict[str, Any]]:
        latest: dict[str, SimJob] = {}
        for job in jobs:
            if job.api == "training":
                latest[job.project] = job  # jobs are in creation order: the last is the latest
        return [
            {"projectName": name, "projectKind": "customNamedEntityRecognition", "language": "en",
             "createdDateTimeUtc": iso(self.sim.started_at),
             "lastModifiedDateTime": iso(created(job, self.sim.started_at)),
             "lastTrainedDateTime": iso(created(job, self.sim.started_at))}
            for name, job in sorted(latest.items())
        ]  # fmt: skip

    def _page(
        self, entries: list[Any], link_key: str, show: Callable[[Any], Any] = lambda e: e
    ) -> Answer:
        """One page of `entries`, each shown by `show` (skip, then maxpagesize, with or without
        `$`), and the link to the next page while there is one."""
        q = self.query
        asked = int(q.get("maxpagesize") or q.get("$maxpagesize") or DEFAULT_PAGE_SIZE)
        size = max(1, min(asked, self.sim.max_page_size))
        skip = int(q.get("skip") or q.get("$skip") or 0)
        body: dict[str, Any] = {"value": [show(entry) for entry in entries[skip : skip + size]]}
        if skip + size < len(entries):
            follow = {
                **q,
                ("$skip" if "$skip" in q or link_key == "@nextLink" else "skip"): skip + size,
            }
            body[link_key] = f"{self.sim.url}{self.path}?{urlencode(follow, safe='$,:')}"
        else:
            body[link_key] = None
        return 200, {}, _json(body)


def _fault_answer(fault: Fault) -> Answer | None:
    if fault.delay:
        time.sleep(fault.delay)
    if fault.cut_after is not None:
        body = fault.body or _json({"status": "running", "padding": "x" * 4096})
        return 200, {_CUT: str(fault.cut_after), _STALL: str(fault.stall)}, body
    if fault.trickle:
        body = fault.body or b'{"status": "running", "tasks": {}}'
        return fault.status or 200, {_TRICKLE: str(fault.trickle)}, body
    if fault.body is not None:
        return fault.status or 200, {"Content-Type": fault.content_type}, fault.body
    if fault.status is None:
        return None  # a pure delay: answer normally, late
    status, headers, out = _error(fault.status, "Simulated", f"Simulated HTTP {fault.status}")
    return (
        status,
        {**headers, **({"Retry-After": fault.retry_after} if fault.retry_after else {})},
        out,
    )


def _json(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def _error(status: int, code: str, message: str) -> Answer:
    return status, {}, _json({"error": {"code": code, "message": message}})


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
        # SO_LINGER 0: close with a reset, as a crashed server or a middlebox does.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    do_GET = do_POST = _serve  # noqa: N815 - BaseHTTPRequestHandler's naming

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def _handler(sim: Simulator) -> type[BaseHTTPRequestHandler]:
    return type("Handler", (_Handler,), {"sim": sim})


DEMO_WEBHOOK_TOKEN = "demo-webhook-token"  # noqa: S105 - the demo's, on loopback


def demo_arrivals(exporter_url: str) -> list[str]:
    """What `--demo` shows of jobs that arrive by themselves: it registers one analyze-text job
    through the exporter's jobs API, and calls the Stable Diffusion webhook for one fine-tune as
    ModelsLab would. Returns the lines to print: the curl commands that do the same."""
    register = {"source": "language-analyze", "job_id": API_DEMO_JOB.job_id}
    hook = f"{exporter_url}/api/v1/webhooks/stable-diffusion/stable-diffusion"
    payload = {
        "status": "success",
        "training_status": "deploying_gpu",
        "logs": "it will take upto 25 minutes",
        "model_id": WEBHOOK_DEMO_JOB.job_id,
    }
    calls: tuple[tuple[str, dict[str, str], dict[str, str]], ...] = (
        (f"{exporter_url}/api/v1/jobs", {}, register),
        (hook, {"X-Webhook-Token": DEMO_WEBHOOK_TOKEN}, payload),
    )
    lines = []
    for url, headers, body in calls:
        data = json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - the exporter's own loopback URL
            url, data=data, headers={"Content-Type": "application/json", **headers}
        )
        with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=5):  # noqa: S310
            pass
        header = "".join(f" -H '{k}: {v}'" for k, v in headers.items())
        lines.append(f"curl -X POST{header} {url} -d '{data.decode()}'")
    return lines


def demo_config(
    base_url: str, key: str = DEMO_KEY, poll_interval: str = "5s", *, discovery: bool = False
) -> dict[str, Any]:
    """The raw config --demo runs: one source per provider, all pointed at the simulator. With
    `discovery`, the Translator and training sources find their jobs themselves (the training
    source in every project) instead of listing them."""
    azure_auth = {"subscription_key": key}
    training: dict[str, Any] = {"project": "LoanAgreements", "job_ids": ["train-ok", "train-fail"]}
    translator: dict[str, Any] = {"job_ids": ["batch-ok", "batch-partial"]}
    if discovery:
        training = translator = {"discovery": {"interval": poll_interval}}
    return {
        "global": {"poll_interval": poll_interval, "timeout": "5s", "max_retry_wait": "5s"},
        "sources": [
            {"name": "language-training", "provider": "azure_language_training",
             "endpoint": base_url, "auth": azure_auth, **training},
            {"name": "language-analyze", "provider": "azure_language_analyze_text",
             "endpoint": base_url, "auth": azure_auth, "job_ids": ["analyze-ok"]},
            {"name": "text-analytics", "provider": "azure_text_analytics_analyze",
             "endpoint": base_url, "api_version": "v3.2-preview.2", "auth": azure_auth,
             "job_ids": ["ta-ok"]},
            {"name": "translator", "provider": "azure_document_translation",
             "endpoint": base_url, "auth": {**azure_auth, "region": "westeurope"}, **translator},
            {"name": "stable-diffusion", "provider": "stable_diffusion_finetune",
             "endpoint": base_url, "auth": {"api_key": key}, "job_ids": ["sd-ok", "sd-stalled"],
             "webhook_token": DEMO_WEBHOOK_TOKEN},
        ],
    }  # fmt: skip


__all__ = [
    "DEMO_JOBS",
    "DEMO_KEY",
    "DEMO_WEBHOOK_TOKEN",
    "Fault",
    "ManualClock",
    "Seen",
    "SimJob",
    "Simulator",
    "demo_arrivals",
    "demo_config",
]
