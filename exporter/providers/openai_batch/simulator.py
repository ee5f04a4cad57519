"""OpenAI and Azure OpenAI batches, as the simulator serves them.

    GET /v1/batches/{id}                  OpenAI
    GET /openai/v1/batches/{id}           Azure OpenAI's v1 route: its answers, with its quirks
    GET /v1/batches?limit=&after=         newest first: has_more, first_id, last_id (the same
                                          under /openai/v1)

The key comes as `Authorization: Bearer` (an API key; an Entra ID token on Azure). Every answer
carries OpenAI's rate-limit headers; in a job's `throttle` window it answers 429 with the
requests limit exhausted (`x-ratelimit-remaining-requests: 0`, its reset in
`x-ratelimit-reset-requests`) and no Retry-After, as Azure OpenAI can.

A batch validates for `start_delay` seconds, then runs its `units` requests over `duration`
seconds, spending the last tenth finalizing, and completes, `failed_units` of its requests
failed. With `outcome` "failed" it fails validation (at `stop_at` 0) or later; "expired", it
expires at `stop_at` with that share of its requests done; "cancelled", it is cancelling for
CANCEL_GRACE seconds from `stop_at`, then cancelled; "stalled", it stays in progress. On the
Azure route a batch shows Azure OpenAI's differences: its output and error file IDs are "" until
it ends, its `endpoint` a path without /v1, `in_progress_at` null throughout (a completed batch
too), its counts 0 until it completes (so it says finalizing with 0 of N completed), and no
`usage`. A job's `project` names the account it lives in: AZURE ones are listed on the Azure
route, the others on OpenAI's. OpenAI's answers carry every field the `openai` SDK declares.

What the fine-tuning part shares (the key check, the rate limits, the paging) is here: its part
imports it, and neither imports an API module.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, timedelta
from typing import TYPE_CHECKING, Any

from exporter.simulator.kit import (
    Answer,
    Call,
    Demo,
    Keys,
    Listing,
    ListRoute,
    Moment,
    Outcome,
    Route,
    SimJob,
    SimPart,
    json_answer,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import datetime

NAME = "openai_batch"
AZURE = "azure"  # the `project` of jobs that live on Azure OpenAI
BASE = r"(?:/(?P<variant>openai))?/v1"  # variant "openai": Azure OpenAI's /openai/v1 route
CANCEL_GRACE = 10.0  # seconds a batch is cancelling before it is cancelled
FINALIZING = 0.9  # the share of the run after which a batch is finalizing
RATE_LIMITS = {
    "x-ratelimit-limit-requests": "5000",
    "x-ratelimit-remaining-requests": "4999",
    "x-ratelimit-reset-requests": "12ms",
    "x-ratelimit-limit-tokens": "2000000",
    "x-ratelimit-remaining-tokens": "1999000",
    "x-ratelimit-reset-tokens": "30ms",
}
DEFAULT_LIMIT, MAX_LIMIT = 20, 100


# -- what the fine-tuning part shares -----------------------------------------------------------


def openai_error(status: int, message: str, kind: str, code: str | None) -> Answer:
    return json_answer(
        {"error": {"message": message, "type": kind, "param": None, "code": code}}, status
    )


def check_key(call: Call, keys: Keys) -> Answer | None:
    """An API key or an Entra ID token, as `Authorization: Bearer`."""
    bearer = call.headers.get("authorization", "").removeprefix("Bearer ")
    if bearer in keys.keys or bearer in keys.bearer_tokens:
        return None
    return openai_error(401, "Incorrect API key provided.", "invalid_request_error",
                        "invalid_api_key")  # fmt: skip


def throttled(job: SimJob, clock: datetime) -> Answer:
    """429 with the requests limit exhausted, resetting in the job's `retry_after` seconds."""
    del clock  # OpenAI names the reset as a duration, not a time
    status, headers, body = openai_error(
        429, "Rate limit reached for requests", "requests", "rate_limit_exceeded"
    )
    limits = {**RATE_LIMITS, "x-ratelimit-remaining-requests": "0",
              "x-ratelimit-reset-requests": f"{job.retry_after}s"}  # fmt: skip
    return status, {**headers, **limits}, body


def unix(when: datetime) -> int:
    return int(when.astimezone(UTC).timestamp())


def on_route(listing: Listing) -> list[SimJob]:
    """The jobs of the account the list's route is: Azure's on /openai/v1, OpenAI's on /v1."""
    azure = bool(listing.call.variant)
    return [job for job in listing.jobs if (job.project == AZURE) == azure]


def cursor_page(
    listing: Listing,
    items: Sequence[Any],
    item_id: Callable[[Any], str],
    show: Callable[[Any], dict[str, Any]],
    *,
    first_last: bool,
) -> Answer:
    """One page of `items` (in the order the API lists them): `limit` of them (1 to MAX_LIMIT,
    and no more than the simulator's page size) after the one whose ID is `after`, and
    `has_more`; with `first_last`, `first_id` and `last_id` too. An `after` that names none
    starts at the beginning."""
    query = listing.call.query
    written = query.get("limit", "")
    asked = int(written) if written.isdigit() else DEFAULT_LIMIT
    limit = max(1, min(asked, MAX_LIMIT, listing.max_page_size))
    ids = [item_id(item) for item in items]
    start = ids.index(query["after"]) + 1 if query.get("after") in ids else 0
    page = list(items[start : start + limit])
    body: dict[str, Any] = {"object": "list", "data": [show(item) for item in page]}
    if first_last:
        body["first_id"] = item_id(page[0]) if page else None
        body["last_id"] = item_id(page[-1]) if page else None
    body["has_more"] = start + limit < len(items)
    return json_answer(body)


def newest_first(jobs: Sequence[SimJob]) -> list[SimJob]:
    return sorted(jobs, key=lambda job: (-job.created_at, job.job_id))


def demo_endpoint(demo: Demo, azure: bool) -> str:
    return f"{demo.url}/openai/v1" if azure else f"{demo.url}/v1"


# -- a batch ------------------------------------------------------------------------------------


def _counts(job: SimJob, done: float) -> tuple[int, int]:
    """(completed, failed) requests once `done` of the run is over (all of them are done by the
    time it is finalizing); the failed ones are spread over the run."""
    processed = min(job.units, math.floor(done / FINALIZING * job.units))
    failed = math.floor(processed * job.failed_units / job.units) if job.units else 0
    return processed - failed, failed


def _timeline(
    job: SimJob, now: Moment, created: datetime, clock: datetime
) -> tuple[str, dict[str, datetime]]:
    """The batch's status now, and when it reached each of its states so far (`*_at`)."""
    began = created + timedelta(seconds=job.start_delay)
    stopped = began + timedelta(seconds=job.stop_at * job.duration)
    at: dict[str, datetime] = {}
    status = {"not_started": "validating", "running": "in_progress"}.get(now.phase, now.phase)
    if now.phase != "not_started" and not (now.phase == "failed" and job.stop_at == 0):
        at["in_progress_at"] = began
    if now.phase in {"running", "succeeded"} and now.done >= FINALIZING:
        status = "finalizing" if now.phase == "running" else "completed"
        at["finalizing_at"] = began + timedelta(seconds=FINALIZING * job.duration)
    if now.phase == "succeeded":
        at["completed_at"] = began + timedelta(seconds=job.duration)
    elif now.phase in {"failed", "expired"}:
        at[f"{now.phase}_at"] = stopped
    elif now.phase == "cancelled":
        at["cancelling_at"] = stopped
        if clock < stopped + timedelta(seconds=CANCEL_GRACE):
            status = "cancelling"
        else:
            at["cancelled_at"] = stopped + timedelta(seconds=CANCEL_GRACE)
    return status, at


TIMES = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
         "cancelling_at", "cancelled_at")  # fmt: skip


def render(
    job: SimJob, now: Moment, created: datetime, clock: datetime, variant: str
) -> dict[str, Any]:
    azure = bool(variant)
    status, at = _timeline(job, now, created, clock)
    completed, failed = _counts(job, now.done)
    ended = status in {"completed", "failed", "expired", "cancelled"}
    if azure:
        at.pop("in_progress_at", None)
        if status != "completed":
            completed, failed = 0, 0  # Azure's counts come at the end
    total = 0 if status == "validating" or (status == "failed" and job.stop_at == 0) else job.units
    expires = at.get("expired_at") or created + timedelta(hours=24)
    batch: dict[str, Any] = {
        "id": job.job_id,
        "object": "batch",
        "endpoint": "/chat/completions" if azure else "/v1/chat/completions",
        "model": None if azure else "gpt-4o-mini-2024-07-18",
        "errors": _errors(job) if status == "failed" else None,
        "input_file_id": f"file-in-{job.job_id}",
        "completion_window": "24h",
        "status": status,
        "output_file_id": f"file-out-{job.job_id}" if ended else ("" if azure else None),
        "error_file_id": f"file-err-{job.job_id}" if ended and failed else ("" if azure else None),
        "created_at": unix(created),
        "expires_at": None if status == "validating" else unix(expires),
        "request_counts": {"total": total, "completed": completed, "failed": failed},
        "metadata": {"batch_description": job.display_name} if job.display_name else {},
        **{key: unix(at[key]) if key in at else None for key in TIMES},
    }
    if not azure:
        batch["usage"] = _usage(completed)
    return batch


def _errors(job: SimJob) -> dict[str, Any]:
    message = f"Line 1 of {job.job_id}'s input file is not valid JSON (simulated)."
    error = {"code": "invalid_json_line", "line": 1, "param": None, "message": message}
    return {"object": "list", "data": [error]}


def _usage(completed: int) -> dict[str, Any]:
    """What `completed` requests of 120 input and 80 output tokens each used."""
    tokens_in, tokens_out = 120 * completed, 80 * completed
    return {"input_tokens": tokens_in, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": tokens_out, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": tokens_in + tokens_out}  # fmt: skip


def not_found() -> Answer:
    return openai_error(404, "No such batch.", "invalid_request_error", None)


def batches(listing: Listing) -> Answer:
    """The account's batches, newest first, paged by `after`."""
    return cursor_page(listing, newest_first(on_route(listing)), lambda job: job.job_id,
                       listing.rendered, first_last=True)  # fmt: skip


def demo_sources(demo: Demo) -> list[dict[str, Any]]:
    """OpenAI's batches listed by ID (or found by discovery); Azure's by ID."""
    return openai_and_azure(demo, NAME, "batches", DEMO_JOBS)


def openai_and_azure(
    demo: Demo, provider: str, what: str, jobs: Sequence[SimJob]
) -> list[dict[str, Any]]:
    """The demo's two sources of an OpenAI provider: `openai-{what}`, its jobs listed by ID
    (or found by discovery), and `azure-openai-{what}`, the jobs in the AZURE project by ID."""
    found: dict[str, Any] = {"job_ids": [job.job_id for job in jobs if job.project != AZURE]}
    if demo.discovery:
        found = {"discovery": {"interval": demo.poll_interval}}
    azure = [job.job_id for job in jobs if job.project == AZURE]
    return [
        {"name": f"openai-{what}", "provider": provider,
         "endpoint": demo_endpoint(demo, azure=False), "auth": {"api_key": demo.key}, **found},
        {"name": f"azure-openai-{what}", "provider": provider,
         "endpoint": demo_endpoint(demo, azure=True), "auth": {"api_key": demo.key},
         "job_ids": azure},
    ]  # fmt: skip


def arrival(n: int, every: float) -> SimJob:
    """The n-th batch (from 1) that starts by itself, every `every` seconds; one in five
    expires with a third of its requests done."""
    outcome: Outcome = "expired" if n % 5 == 0 else "succeeded"
    return SimJob(f"batch_new_{n}", NAME, duration=90, units=40, failed_units=n % 3,
                  outcome=outcome, stop_at=0.3, start_delay=3.0, created_at=n * every)  # fmt: skip


DEMO_JOBS = (
    SimJob("batch_demo_ok", NAME, duration=150, units=200, throttle=(30.0, 40.0), retry_after=2,
           display_name="nightly eval"),
    SimJob("batch_demo_partial", NAME, duration=100, units=50, failed_units=5),
    SimJob("batch_demo_expired", NAME, duration=200, units=100, outcome="expired", stop_at=0.35),
    SimJob("batch_demo_cancelled", NAME, duration=200, units=100, outcome="cancelled",
           stop_at=0.25),
    SimJob("batch_demo_invalid", NAME, duration=60, units=10, outcome="failed", stop_at=0.0),
    SimJob("batch_azure_demo", NAME, duration=120, units=2, project=AZURE),
)  # fmt: skip

PART = SimPart(
    NAME,
    routes=(Route("GET", re.compile(BASE + r"/batches/(?P<job_id>[^/]+)")),),
    render=render,
    check_key=check_key,
    listings=(ListRoute("GET", re.compile(BASE + r"/batches"), batches),),
    not_found=not_found,
    throttled=throttled,
    headers=RATE_LIMITS,
    demo_jobs=DEMO_JOBS,
    demo_sources=demo_sources,
    arrival=arrival,
)
