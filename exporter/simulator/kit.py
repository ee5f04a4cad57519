"""The simulator kit: what a provider's part of the simulator is made of, and what parts share.

A `SimJob` is a timeline: it exists from `created_at` (seconds after the simulator started), and
`start_delay` seconds later it runs for `duration` seconds, then ends as its `outcome` says. Its
`api` is the name of the provider whose API serves it.

A `SimPart` is one provider's API as the simulator speaks it, in `exporter/providers/<name>/
simulator.py`: its routes (a job's status, its lists), how it renders a job at a moment (the
JSON the real API would send, in the API's own spelling: the shapes of the vendor's published
examples), how it checks a key, what it answers for an unknown job, what it adds to the demo,
and the role it takes in the benchmarks.
A part imports this module and nothing of its provider's API module, so the simulator stays an
independent oracle of what the APIs send. This module imports nothing of the simulator's core.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlencode

if TYPE_CHECKING:
    import re
    from collections.abc import Mapping, Sequence

Answer = tuple[int, dict[str, str], bytes]  # status, headers, body
# How a job ends: "stalled" never does (it stops moving at `stop_at`); "failed", "expired" and
# "cancelled" end at `stop_at` with that share of the work done.
Outcome = Literal["succeeded", "failed", "stalled", "expired", "cancelled"]
DEMO_KEY = "demo-key"
DEMO_WEBHOOK_TOKEN = "demo-webhook-token"  # noqa: S105 - the demo's, on loopback
DEFAULT_PAGE_SIZE = 50


@dataclass(frozen=True, slots=True)
class SimJob:
    job_id: str
    api: str  # the provider whose API serves the job, as the registry names it
    duration: float = 120.0
    outcome: Outcome = "succeeded"
    stop_at: float = 0.4  # fraction of the work done when a job that does not succeed stops
    start_delay: float = 5.0
    display_name: str = ""
    units: int = 4  # tasks, documents or steps: the job's work, as its API counts it
    failed_units: int = 0  # units that fail in a job that still succeeds
    characters_per_unit: int = 1500
    warnings: int = 0
    throttle: tuple[float, float] | None = None  # [from, to) seconds answering 429
    retry_after: int = 1
    worker_wording: bool = False  # log lines as a training worker writes them, where it logs
    created_at: float = 0.0  # seconds after the simulator started; unknown to the API before
    project: str = "LoanAgreements"  # the job's project, where its API has projects


@dataclass(frozen=True, slots=True)
class Moment:
    """Where a job is at one instant."""

    phase: Literal["not_started", "running", "succeeded", "failed", "expired", "cancelled"]
    done: float  # fraction of the work done, 0..1


def moment(job: SimJob, elapsed: float) -> Moment:
    """Where `job` is `elapsed` seconds after it was created."""
    if elapsed < job.start_delay:
        return Moment("not_started", 0.0)
    done = min((elapsed - job.start_delay) / job.duration, 1.0)
    if job.outcome != "succeeded" and done >= job.stop_at:
        return Moment("running" if job.outcome == "stalled" else job.outcome, job.stop_at)
    return Moment("succeeded" if done >= 1.0 else "running", done)


def terminal(job: SimJob, elapsed: float) -> bool:
    """Whether the job has ended (a stalled job never does)."""
    return moment(job, elapsed - job.created_at).phase not in {"not_started", "running"}


def created(job: SimJob, started_at: datetime) -> datetime:
    return started_at.astimezone(UTC) + timedelta(seconds=job.created_at)


def iso(when: datetime) -> str:
    # Seven fractional digits, as Azure writes them.
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


# (job, where it is, when it was created, the time now, the variant its route named)
Renderer = Callable[[SimJob, Moment, datetime, datetime, str], dict[str, Any]]


def rendered(
    render: Renderer, job: SimJob, elapsed: float, started_at: datetime, variant: str = ""
) -> dict[str, Any]:
    """What `render` answers for `job`, `elapsed` seconds after the simulator started."""
    now = moment(job, elapsed - job.created_at)
    clock = started_at.astimezone(UTC) + timedelta(seconds=elapsed)
    return render(job, now, created(job, started_at), clock, variant)


def json_answer(payload: Any, status: int = 200) -> Answer:
    return status, {}, json.dumps(payload).encode()


def error_answer(status: int, code: str, message: str) -> Answer:
    return json_answer({"error": {"code": code, "message": message}}, status)


def job_not_found() -> Answer:
    return error_answer(404, "NotFound", "Job ID not found.")


def too_many_requests(job: SimJob, clock: datetime) -> Answer:
    """The default answer of a job in its throttle window: a 429 with Retry-After (seconds) and
    the common error body; a part whose API answers otherwise brings its own."""
    del clock  # this answer names no time
    status, headers, body = error_answer(
        429, "RequestRateTooHigh", "User's request rate is too high"
    )
    return status, {**headers, "Retry-After": str(job.retry_after)}, body


@dataclass(frozen=True, slots=True)
class Call:
    """One request, as a part sees it."""

    method: str
    path: str
    query: Mapping[str, str]  # the last value of each parameter
    headers: Mapping[str, str]  # names in lower case
    body: bytes
    groups: Mapping[str, str]  # what the route's named groups matched

    @property
    def variant(self) -> str:
        """The API version or workload the route named, "" where it names none."""
        return self.groups.get("variant") or ""


@dataclass(frozen=True, slots=True)
class Keys:
    """The credentials the simulator accepts: keys (in whatever place an API takes its key),
    and Entra ID bearer tokens."""

    keys: frozenset[str]
    bearer_tokens: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Listing:
    """One list request: the part's jobs that exist now (oldest first), and how to page them."""

    call: Call
    jobs: Sequence[SimJob]
    render: Renderer
    elapsed: float
    started_at: datetime
    base_url: str  # the simulator's own, for next links
    max_page_size: int  # the most a page holds, whatever the client asks

    def rendered(self, job: SimJob) -> dict[str, Any]:
        """The job as its status answer shows it now, in the variant the list route named."""
        return rendered(self.render, job, self.elapsed, self.started_at, self.call.variant)

    def page(
        self,
        entries: Sequence[Any],
        link_key: str = "nextLink",
        show: Callable[[Any], Any] = lambda entry: entry,
    ) -> Answer:
        """One `value` page of `entries`, each shown by `show` (skip, then maxpagesize, with or
        without `$`), and under `link_key` the link to the next page while there is one."""
        q = self.call.query
        asked = int(q.get("maxpagesize") or q.get("$maxpagesize") or DEFAULT_PAGE_SIZE)
        size = max(1, min(asked, self.max_page_size))
        skip = int(q.get("skip") or q.get("$skip") or 0)
        body: dict[str, Any] = {"value": [show(entry) for entry in entries[skip : skip + size]]}
        if skip + size < len(entries):
            dollar = "$skip" in q or link_key == "@nextLink"
            follow = {**q, ("$skip" if dollar else "skip"): skip + size}
            body[link_key] = f"{self.base_url}{self.call.path}?{urlencode(follow, safe='$,:')}"
        else:
            body[link_key] = None
        return json_answer(body)


@dataclass(frozen=True, slots=True)
class Route:
    """A job's status: `path` (matched whole) names `job_id`, and may name a `variant` (an API
    version or a workload) that the renderer is given."""

    method: str
    path: re.Pattern[str]


@dataclass(frozen=True, slots=True)
class ListRoute:
    """A list endpoint: `path` (matched whole; its named groups are in `Call.groups`) and how
    to answer it."""

    method: str
    path: re.Pattern[str]
    answer: Callable[[Listing], Answer]


@dataclass(frozen=True, slots=True)
class Demo:
    """What the demo's sources point at, and whether they find their jobs by listing them
    (discovery), where their API lists jobs, instead of naming them."""

    url: str
    key: str = DEMO_KEY
    poll_interval: str = "5s"
    discovery: bool = False


@dataclass(frozen=True, slots=True)
class DemoCall:
    """A call the demo makes to the exporter as a client would (the jobs API, a webhook)."""

    path: str  # below the exporter's URL
    body: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


def no_sources(_demo: Demo) -> list[dict[str, Any]]:
    return []


@dataclass(frozen=True, slots=True)
class Bench:
    """A part's place in the benchmarks (benchmarks/), which pick parts by the roles they take
    here, never by name. A figure stays comparable while the parts in its role stay the same,
    so a provider takes a role on purpose, not by having a listing or a webhook."""

    source: Callable[[str, str], dict[str, Any]]  # (simulator URL, key): a sources[] entry, no jobs
    listed: bool = False  # half the jobs found by discovery in the scale figures, or so
    polled: bool = False  # the running jobs polled one by one in the per-job figures
    registered: bool = False  # the jobs the attacks register through the jobs API
    # The upstream of the attacks on what the API says (it must call back: they use its webhook
    # too): a 200 answer that says the poll failed with a message, and a running job's answer
    # whose status holds a text.
    failed_poll: Callable[[str], dict[str, Any]] | None = None
    status: Callable[[str], dict[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class SimPart:
    """One provider's API as the simulator speaks it."""

    name: str  # the provider's, as the registry names it: the `api` of its jobs
    routes: tuple[Route, ...]
    render: Renderer
    check_key: Callable[[Call, Keys], Answer | None]  # None: let in; else the API's refusal
    listings: tuple[ListRoute, ...] = ()
    not_found: Callable[[], Answer] = job_not_found  # the answer for a job it does not have
    # A job's answer inside its `throttle` window (the job, the simulator's time now).
    throttled: Callable[[SimJob, datetime], Answer] = too_many_requests
    headers: Mapping[str, str] = field(default_factory=dict)  # on its answers (rate limits)
    demo_jobs: tuple[SimJob, ...] = ()  # jobs the demo config names
    demo_sources: Callable[[Demo], list[dict[str, Any]]] = no_sources  # its `sources[]` entries
    demo_calls: tuple[DemoCall, ...] = ()  # what the demo sends the exporter for it
    called_jobs: tuple[SimJob, ...] = ()  # jobs only the demo's calls name
    arrival: Callable[[int, float], SimJob] | None = None  # the n-th job that starts by itself
    bench: Bench | None = None  # its role in the benchmarks, if any
