"""Anthropic Message Batches, as the simulator serves them.

    GET /v1/messages/batches/{id}
    GET /v1/messages/batches?limit=&after_id=&before_id=      (newest first)

A batch's work is `units` requests. As the API reference says and the cookbook's recorded polls
show, a request leaves `processing` only when the whole batch ends, and the counts always add up
to the requests: while a batch runs, `processing` is `units` and every other count 0. When it
ends, the counts say how: `succeeded` (and `failed_units` of them `errored`) for a batch that
succeeds; every request `errored` for one that fails; for one cancelled (`outcome="cancelled"`)
`canceling` first, with `cancel_initiated_at` and the counts unchanged, then `ended` with the
requests done before the cancel succeeded and the rest `canceled`; for one that runs out of time
(`outcome="expired"`) the requests done by then succeeded and the rest `expired`, its
`expires_at` being then (a real batch's is 24 hours after creation, as every other batch's here).
Times are RFC 3339 with microseconds and `Z`, as the API writes them.

Lists page newest first: `limit` (1 to 1000, default 20), `after_id` (the page after that batch:
older ones) or `before_id` (the page before it: newer ones); the answer has `data`, `has_more`,
`first_id` and `last_id`, and no `object`. The key is checked as the API takes it, `x-api-key`,
and as the official SDK sends it now, `Authorization: Bearer`; an `anthropic-version` header is
required. Errors come in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}`.
A batch in its `throttle` window is answered 429 `rate_limit_error` with `retry-after` and
`anthropic-ratelimit-requests-remaining: 0`, `anthropic-ratelimit-requests-reset: <RFC 3339>`.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from exporter.simulator.kit import (
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
    json_answer,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

NAME = "anthropic_message_batch"
SOURCE = "claude-batches"
EXPIRES_AFTER = timedelta(hours=24)  # "24 hours after creation"
CANCELLING_SECONDS = 15.0  # a cancelled batch says "canceling" this long, then ends
RATE_LIMIT = 50  # requests a minute, as the API's first usage tier allows
MAX_LIMIT = 1000
DEFAULT_LIMIT = 20
PUBLIC = "https://api.anthropic.com/v1/messages/batches"  # where results_url points


def time(when: datetime) -> str:
    """RFC 3339 with microseconds and Z, as the API writes times."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def error(status: int, kind: str, message: str) -> Answer:
    return json_answer({"type": "error", "error": {"type": kind, "message": message}}, status)


def _at(created: datetime, job: SimJob, fraction: float) -> datetime:
    """When `fraction` of the batch's work was done (it starts when created)."""
    return created + timedelta(seconds=job.start_delay + fraction * job.duration)


def render(
    job: SimJob, now: Moment, created: datetime, clock: datetime, _variant: str
) -> dict[str, Any]:
    phase: str = now.phase
    stopped = _at(created, job, job.stop_at)
    if phase == "cancelled" and clock < stopped + timedelta(seconds=CANCELLING_SECONDS):
        phase = "cancelling"  # the cancel is under way: the requests in flight are finishing
    counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
    status, ended, cancelled_at, expires = "ended", None, None, created + EXPIRES_AFTER
    done = math.floor(now.done * job.units)  # requests that had a result when the batch ended
    if phase in {"not_started", "running", "cancelling"}:
        status = "canceling" if phase == "cancelling" else "in_progress"
        counts["processing"] = job.units
    elif phase == "succeeded":
        ended = _at(created, job, 1.0)
        counts["errored"] = min(job.failed_units, job.units)
        counts["succeeded"] = job.units - counts["errored"]
    elif phase == "failed":  # a batch that fails: every request errored
        ended = _at(created, job, now.done)
        counts["errored"] = job.units
    else:  # cancelled or expired: those done by then succeeded, the rest did not run
        ended = _at(created, job, now.done)
        counts["succeeded"] = done
        counts["canceled" if phase == "cancelled" else "expired"] = job.units - done
        if phase == "expired":
            expires = ended
    if job.outcome == "cancelled" and phase in {"cancelling", "cancelled"}:
        cancelled_at = stopped
        if ended is not None:
            ended = max(ended, cancelled_at)
    return {
        "id": job.job_id,
        "type": "message_batch",
        "processing_status": status,
        "request_counts": counts,
        "ended_at": None if ended is None else time(ended),
        "created_at": time(created),
        "expires_at": time(expires),
        "archived_at": None,
        "cancel_initiated_at": None if cancelled_at is None else time(cancelled_at),
        "results_url": None if ended is None else f"{PUBLIC}/{job.job_id}/results",
    }


def check_key(call: Call, keys: Keys) -> Answer | None:
    """The key as `x-api-key` (the API's documented header) or as `Authorization: Bearer`
    (what the `anthropic` SDK sends since 2.x); and an `anthropic-version`, which every call
    must name."""
    scheme, _, bearer = call.headers.get("authorization", "").partition(" ")
    given = {call.headers.get("x-api-key"), bearer if scheme.lower() == "bearer" else None}
    if not given & keys.keys:
        return error(401, "authentication_error", "invalid x-api-key")
    if not call.headers.get("anthropic-version"):
        return error(400, "invalid_request_error", "anthropic-version: header is required")
    return None


def throttled(job: SimJob, clock: datetime) -> Answer:
    """A 429 as the API sends one: `rate_limit_error`, `retry-after` in seconds, and the
    exhausted limit with its reset as an RFC 3339 time."""
    status, headers, body = error(429, "rate_limit_error", "Number of request tokens has "
                                  "exceeded your per-minute rate limit (simulated).")  # fmt: skip
    reset = clock + timedelta(seconds=job.retry_after)
    return (
        status,
        {
            **headers,
            "retry-after": str(job.retry_after),
            "anthropic-ratelimit-requests-limit": str(RATE_LIMIT),
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": time(reset),
        },
        body,
    )


def not_found() -> Answer:
    return error(404, "not_found_error", "The requested resource could not be found.")


def _index(batches: Sequence[SimJob], job_id: str) -> int | None:
    return next((i for i, job in enumerate(batches) if job.job_id == job_id), None)


def batches(listing: Listing) -> Answer:
    """One page of the batches, newest first, as `limit`, `after_id` and `before_id` ask."""
    query = listing.call.query
    try:
        limit = int(query.get("limit", DEFAULT_LIMIT))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        return error(400, "invalid_request_error", f"limit: must be between 1 and {MAX_LIMIT}")
    size = min(limit, listing.max_page_size)
    newest = list(reversed(listing.jobs))
    if "before_id" in query:
        end = _index(newest, query["before_id"])
        if end is None:
            return not_found()
        page, more = newest[max(0, end - size) : end], end - size > 0
    else:
        start = 0
        if "after_id" in query:
            found = _index(newest, query["after_id"])
            if found is None:
                return not_found()
            start = found + 1
        page, more = newest[start : start + size], start + size < len(newest)
    data = [listing.rendered(job) for job in page]
    return json_answer({
        "data": data,
        "has_more": more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    })  # fmt: skip


def demo_sources(demo: Demo) -> list[dict[str, Any]]:
    """Named by ID, or (with discovery) found by listing the batches."""
    found: dict[str, Any] = {"job_ids": [job.job_id for job in DEMO_JOBS]}
    if demo.discovery:
        found = {"discovery": {"interval": demo.poll_interval}}
    return [{"name": SOURCE, "provider": NAME, "endpoint": f"{demo.url}/v1",
             "auth": {"api_key": demo.key}, **found}]  # fmt: skip


def arrival(n: int, every: float) -> SimJob:
    """The n-th batch (from 1) that starts by itself, every `every` seconds; one in four has
    requests that error."""
    return SimJob(f"msgbatch_new_{n}", NAME, duration=80, units=25,
                  failed_units=2 if n % 4 == 0 else 0, start_delay=0.0,
                  created_at=n * every)  # fmt: skip


DEMO_JOBS = (
    SimJob("msgbatch_demo_ok", NAME, duration=120, units=100, start_delay=0.0,
           throttle=(20.0, 30.0), retry_after=2),
    SimJob("msgbatch_demo_mixed", NAME, duration=90, units=40, failed_units=6, start_delay=0.0),
    SimJob("msgbatch_demo_canceled", NAME, duration=800, units=10, outcome="cancelled",
           stop_at=0.05, start_delay=0.0),
    SimJob("msgbatch_demo_expired", NAME, duration=300, units=30, outcome="expired",
           stop_at=0.4, start_delay=0.0),
    SimJob("msgbatch_demo_failed", NAME, duration=60, units=8, outcome="failed", stop_at=0.5,
           start_delay=0.0),
)  # fmt: skip

PART = SimPart(
    NAME,
    routes=(Route("GET", re.compile(r"/v1/messages/batches/(?P<job_id>[^/]+)")),),
    render=render,
    check_key=check_key,
    listings=(ListRoute("GET", re.compile(r"/v1/messages/batches"), batches),),
    not_found=not_found,
    throttled=throttled,
    demo_jobs=DEMO_JOBS,
    demo_sources=demo_sources,
    arrival=arrival,
)
