"""Anthropic Message Batches.

Request (the key in a header, never in the URL)::

    GET {endpoint}/messages/batches/{id}            endpoint: https://api.anthropic.com/v1
    x-api-key: ...
    anthropic-version: 2023-06-01                   (the source's `api_version` when set)

Answer: a `message_batch` with `processing_status` `in_progress`, `canceling` or `ended` (case
and `-`/`_`/space spellings tolerated; anything else is `unknown`) and `request_counts`
`processing`, `succeeded`, `errored`, `canceled`, `expired`. The counts add up to the batch's
requests at all times, and a request leaves `processing` only when the whole batch ends: while a
batch runs, `processing` is the total and the others are 0 (Anthropic's API reference; the
cookbook's recorded polls show it). So an `ended` batch's state comes from its counts:

- every request succeeded: `succeeded`;
- some succeeded: `partially_succeeded`;
- none succeeded, none errored and some canceled: `cancelled` (cancelled before any request had a
  result; expired requests beside the canceled ones had none either);
- none succeeded otherwise (errored or expired requests, canceled ones beside errors too, or no
  counts at all): `failed`. An errored request is a result someone must look at, and a cancel
  that came after it does not make it one to ignore.

`canceling` is `cancelling`; `in_progress` is `running`. Progress is the share of requests that
finished, succeeded or errored, which the API only tells at the end: while the batch runs or is
being cancelled there is none (no ratio is made up, and since nothing the API says moves, no
stall can be told: asyncjob_last_progress_change_timestamp_seconds is absent, and
AsyncJobStalled never fires for a running batch), the share at the end, 1 for a succeeded
batch. The API gives no estimate of when a batch will end.

Yields, for a batch that ended with 7 of 10 requests succeeded::

    asyncjob_info{...,vendor_status="ended",display_name=""} 1
    asyncjob_state{...,state="partially_succeeded"} 1
    asyncjob_progress_ratio{...,phase="overall"} 0.9
    asyncjob_tasks{...,state="completed"} 7
    asyncjob_tasks{...,state="failed"} 2
    asyncjob_tasks{...,state="in_progress"} 0
    asyncjob_tasks{...,state="cancelled"} 0
    asyncjob_tasks{...,state="expired"} 1
    asyncjob_created_timestamp_seconds{...} 1.7274e+09
    asyncjob_started_timestamp_seconds{...} 1.7274e+09
    asyncjob_expiration_timestamp_seconds{...} 1.7275e+09
    asyncjob_finished_timestamp_seconds{...} 1.7274e+09

Times are RFC 3339 strings. `created_at` is the creation and the start (a batch "begins
processing immediately"); `expires_at` (24 hours later: when an unfinished batch stops and its
remaining requests expire) is the expiration; `ended_at` is the finish, for an ended batch only;
the latest of `created_at`, `cancel_initiated_at`, `ended_at` and `archived_at` is the last
update. `results_url` is not exported.

Discovery lists `GET {endpoint}/messages/batches?limit=100`, newest first, following `last_id`
as `after_id` while `has_more`, as the official SDK does. The API has no date filter, so the
walk stops at the first batch created before the lookback; of those within it, every unfinished
batch is listed, and finished ones only when created or ended since the listing before (so that
a finished batch that retention dropped does not come back). Each entry is a whole batch, so the
listing is the poll of every batch on it.
"""

from __future__ import annotations

import re
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from exporter.model import JobSnapshot, State
from exporter.providers.base import (
    ApiKeyAuth,
    Listed,
    ListQuery,
    ListRequest,
    Located,
    Page,
    ParseError,
    Provider,
    SourceBase,
    UpstreamRequest,
    count,
    finish_time,
    finished_progress,
    listed,
    obj,
    path,
    ratio,
    route,
    text,
    timestamp,
)
from exporter.values import HttpUrl

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

DEFAULT_ENDPOINT = "https://api.anthropic.com/v1"
DEFAULT_API_VERSION = "2023-06-01"  # the version the API reference's examples send
PAGE_SIZE = 100  # the API allows up to 1000; 100 keeps one answer small, as the other listers
STATUSES = {
    "inprogress": State.RUNNING,
    "canceling": State.CANCELLING,
    "cancelling": State.CANCELLING,
}
ENDED = "ended"
# request_counts key -> task state; every one is exported, zeros included.
TASKS = {
    "processing": "in_progress",
    "succeeded": "completed",
    "errored": "failed",
    "canceled": "cancelled",
    "expired": "expired",
}
_NOT_LETTERS = re.compile(r"[^a-z]")


class Source(SourceBase):
    endpoint: HttpUrl = DEFAULT_ENDPOINT
    auth: ApiKeyAuth


# A batch's URL, or its results' (`results_url`), names the batch.
ROUTE = re.compile(r"/messages/batches/(?P<job_id>[^/]+)(?:/results)?")


def _get(source: Source, url: str) -> UpstreamRequest:
    """A GET to the API with the key and the API version in headers."""
    headers = {
        "x-api-key": source.auth.secret(),
        "anthropic-version": source.api_version or DEFAULT_API_VERSION,
    }
    return UpstreamRequest("GET", url, headers)


def _batches(source: Source, *segments: str, **query: str | int) -> str:
    url = f"{source.endpoint}/{path('messages', 'batches', *segments)}"
    return url + (f"?{urlencode(query)}" if query else "")


def request(source: Source, job_id: str, _project: str | None = None, /) -> UpstreamRequest:
    return _get(source, _batches(source, job_id))


def ended_state(counts: Mapping[str, int]) -> State:
    """The state of an ended batch, from its request counts (see the module's docstring)."""
    total = sum(counts.values())
    succeeded = counts["succeeded"]
    if succeeded and succeeded == total:
        return State.SUCCEEDED
    if succeeded:
        return State.PARTIALLY_SUCCEEDED
    if counts["canceled"] and not counts["errored"]:
        return State.CANCELLED
    return State.FAILED


def parse(payload: Any, polled_at: datetime) -> JobSnapshot:  # noqa: ARG001 - same signature for all
    batch = obj(payload, "message batch")
    text(batch, "id", required=True)  # a batch without its ID is not a batch
    vendor_status = text(batch, "processing_status", required=True)
    raw_counts = obj(batch.get("request_counts"), "request_counts")
    counts = {key: count(raw_counts, key) or 0 for key in TASKS}
    status = _NOT_LETTERS.sub("", vendor_status.casefold())
    state = ended_state(counts) if status == ENDED else STATUSES.get(status, State.UNKNOWN)
    # Nothing is known to be done until the batch ends: its counts only move then.
    done = counts["succeeded"] + counts["errored"]
    # While it runs the counts stay put (a request leaves `processing` when the batch ends), so
    # the API does not say how far it is: no ratio, rather than a made-up 0.
    overall = (
        finished_progress(state, ratio(done, sum(counts.values()))) if state.terminal else None
    )
    created = timestamp(batch, "created_at")
    ended = timestamp(batch, "ended_at")
    changes = (created, timestamp(batch, "cancel_initiated_at"), ended,
               timestamp(batch, "archived_at"))  # fmt: skip
    return JobSnapshot(
        state=state,
        vendor_status=vendor_status,
        progress={} if overall is None else {"overall": overall},
        tasks={TASKS[key]: value for key, value in counts.items()},
        created=created,
        started=created,  # a batch "begins processing immediately" once created
        last_update=max((when for when in changes if when is not None), default=None),
        expiration=timestamp(batch, "expires_at"),
        finished=finish_time(state, created, ended),
    )


def _read(source: Source, query: ListQuery, payload: Any, at: datetime) -> Page:
    page = obj(payload, "message batches")
    entries = page.get("data")
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise ParseError(f"data: expected a list, got {type(entries).__name__}")
    found: list[Listed] = []
    past_lookback = False
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        try:
            created = timestamp(entry, "created_at")
        except ParseError:
            created = None  # listed all the same: its own poll will say what is wrong
        if created is not None and created < query.since:
            past_lookback = True  # newest first: every batch after this one is older still
            continue
        job = listed(entry, parse, at, ("id",))
        if job is not None and _wanted(job, created, query):
            found.append(job)
    last_id = page.get("last_id")
    follow: tuple[ListRequest, ...] = ()
    if page.get("has_more") is True and entries and not past_lookback and isinstance(last_id, str):
        url = _batches(source, limit=PAGE_SIZE, after_id=last_id)
        follow = (ListRequest(_get(source, url), partial(_read, source, query)),)
    return Page(tuple(found), follow)


def _wanted(job: Listed, created: datetime | None, query: ListQuery) -> bool:
    """Unfinished batches over the lookback; finished ones that are new since the listing
    before: created or ended since then."""
    snapshot = job.snapshot
    if snapshot is None or not snapshot.state.terminal or created is None:
        return True
    latest = max(created, snapshot.finished or created)
    return latest >= query.any_state_since


def lister(source: Source, query: ListQuery) -> tuple[ListRequest, ...]:
    url = _batches(source, limit=PAGE_SIZE)
    return (ListRequest(_get(source, url), partial(_read, source, query)),)


def locate(source: Source, url: str) -> Located | None:
    found = route(source, url, ROUTE)
    return None if found is None else Located(found["job_id"])


PROVIDER = Provider("anthropic_message_batch", Source, request, parse, locate, lister=lister)
