"""OpenAI and Azure OpenAI fine-tuning jobs: the same API bases, keys and webhooks as batches.

Requests (the source and its `auth` are the batch provider's, see `openai_batch`)::

    GET {endpoint}/fine_tuning/jobs/{id}
    GET {endpoint}/fine_tuning/jobs/{id}/events?limit=50      (only while the job runs)
    Authorization: Bearer ...   OpenAI-Organization: ...   OpenAI-Project: ...

Statuses: `validating_files`, `queued`, `pending` (Azure) and `created` (older answers) are not
started; `running` is running; `succeeded`, `failed` and `cancelled` are what they say. `paused`
(after the pause endpoint; resume makes it `queued` again) is running too: the job holds its
place and is not finished, but an operator holds it, so it makes no progress. Nothing tells a
paused job from a stuck one but `vendor_status="paused"`, so AsyncJobStalled fires for a job
paused longer than its threshold (30 minutes), as for any running job that stops moving: a pause
nobody resumes is a stall. Silence it for that job, or resume or cancel the job.

While a job runs (or is paused) each poll makes one more request, for its newest events: the
`metrics` event with the highest step (`data.step`, `data.train_loss`, and `data.valid_loss`
where there is validation data) gives asyncjob_training_step and
asyncjob_training_loss{split="train"|"valid"}. The total number of steps is only in the
message: OpenAI writes `Step 10/100: training loss=0.40`, and progress is step over total;
Azure writes `Step 100: ...` without one, and then the job has no progress ratio while it runs
(there is no honest one to give: the step says how far it is, and a new step is progress for the
stall alert). A running job with no metrics event yet has none either. A finished job's answer
has no steps, so its progress is 1 when it succeeded and 0 otherwise, and no request is made for
its events.

`created_at` is the creation; `finished_at` the finish, of a finished job only (Azure's pause
and cancel answers carry one too); `estimated_finish` the estimated completion while the job
has not finished (finished jobs say 0 or a past time); the latest of these and the newest
event's time the last update. `trained_tokens` is asyncjob_tokens_total{kind="trained"}; an
`error` with a message or code counts one error (`{}` and all-null errors are none).
`user_provided_suffix` is the display name.

Yields, for a job at step 20 of 100 (OpenAI's real answer of 2023-08-27)::

    asyncjob_info{...,vendor_status="running",display_name=""} 1
    asyncjob_state{...,state="running"} 1
    asyncjob_progress_ratio{...,phase="overall"} 0.2
    asyncjob_training_step{...} 20
    asyncjob_training_loss{...,split="train"} 0.152922585606575
    asyncjob_created_timestamp_seconds{...} 1.693157226e+09

Discovery lists `GET {endpoint}/fine_tuning/jobs?limit=100&after=...`, newest first, back to
the lookback (the list has no `last_id`: `after` is the last job's ID, as the SDK pages). Each
entry is a whole job, so the listing is the poll of every job on it, but a running one: that
needs its events, so it is listed by ID and polled alone while it runs.

OpenAI's webhooks `fine_tuning.job.succeeded`, `.failed` and `.cancelled` name the job in
`data.id`, signed with the source's `webhook_secret`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import TYPE_CHECKING, Any

from exporter.model import JobSnapshot, State
from exporter.providers.base import (
    FollowUp,
    Listed,
    ListQuery,
    ListRequest,
    Located,
    ParseError,
    Provider,
    UpstreamRequest,
    Webhook,
    count,
    finish_time,
    finished_progress,
    map_status,
    obj,
    ratio,
    route,
    text,
)
from exporter.providers.openai_batch.api import (
    Source,
    cursor_listing,
    error_message,
    event_job_id,
    unix_time,
)
from exporter.values import is_path_safe_id

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

STATUSES = {
    "validating_files": State.NOT_STARTED,
    "queued": State.NOT_STARTED,
    "pending": State.NOT_STARTED,  # Azure
    "created": State.NOT_STARTED,  # answers of 2023
    "running": State.RUNNING,
    "paused": State.RUNNING,  # held by an operator; resumes to queued
    "succeeded": State.SUCCEEDED,
    "failed": State.FAILED,
    "cancelled": State.CANCELLED,
}
EVENTS_PAGE = 50  # the newest events; a metrics event is among them while a job trains
_STEP = re.compile(r"^\s*step\s+(\d+)\s*(?:/\s*(\d+))?", re.IGNORECASE)
LOSSES = (("train", ("train_loss",)), ("valid", ("valid_loss", "full_valid_loss")))


def parse(payload: Any, polled_at: datetime) -> JobSnapshot:  # noqa: ARG001 - same signature for all
    job = obj(payload, "fine-tuning job")
    vendor_status = text(job, "status", required=True)
    state = map_status(vendor_status, STATUSES)
    created, finished_at = unix_time(job, "created_at"), unix_time(job, "finished_at")
    estimate = unix_time(job, "estimated_finish")
    if state.terminal or (estimate is not None and created is not None and estimate < created):
        estimate = None  # 0 or a past time once finished; before the creation, a placeholder
    trained = count(job, "trained_tokens", default=None)
    return JobSnapshot(
        state=state,
        vendor_status=vendor_status,
        # Running: how far only its newest metrics event can say (`with_events`); none yet.
        progress={} if state is State.RUNNING else {"overall": finished_progress(state, 0.0)},
        display_name=text(job, "user_provided_suffix"),
        errors=1 if error_message(job) else 0,
        created=created,
        last_update=max((t for t in (created, finished_at) if t is not None), default=None),
        estimated_completion=estimate,
        finished=finish_time(state, created, finished_at),
        tokens={} if trained is None else {"trained": trained},
    )


# -- the newest metrics event: the follow-up of a running job's poll ----------------------------


def _loss(data: Mapping[str, Any], keys: tuple[str, ...]) -> float | None:
    """The first of `keys` that holds a finite number; a missing or odd value is no loss."""
    for key in keys:
        value = data.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def _step(event: Mapping[str, Any]) -> tuple[int, int | None] | None:
    """(step, total steps or None) of a metrics event; None if it is not one with a step."""
    kind = event.get("type")
    if (kind is not None and kind != "metrics") or not isinstance(event.get("data"), dict):
        return None
    data = event["data"]
    message = event.get("message")
    said = _STEP.match(message) if isinstance(message, str) else None
    try:
        step = count(data, "step", default=None)
    except ParseError:
        step = None
    if step is None and said is not None:
        step = int(said[1])
    if step is None or step > 2**63 - 1:
        return None
    total = int(said[2]) if said is not None and said[2] else None
    return step, total


def read_events(payload: Any, snapshot: JobSnapshot, _at: datetime) -> JobSnapshot:
    """The snapshot completed with the newest metrics event on an events page: its step, its
    losses, and progress step/total where the message gives a total. The page's order is not
    relied on (OpenAI lists newest first; Azure's example, oldest first): the highest step wins."""
    page = obj(payload, "events")
    data = page.get("data")
    if not isinstance(data, list):
        raise ParseError(f"data: expected a list of events, got {type(data).__name__}")
    events = [event for event in data if isinstance(event, dict)]
    times = []
    for event in events:
        try:
            times.append(unix_time(event, "created_at"))
        except ParseError:
            continue
    last_update = max((t for t in (snapshot.last_update, *times) if t is not None), default=None)
    metrics = [(found, event) for event in events if (found := _step(event)) is not None]
    if not metrics:
        return dataclasses.replace(snapshot, last_update=last_update)
    (step, total), event = max(metrics, key=lambda pair: pair[0][0])
    losses = {
        split: loss for split, keys in LOSSES if (loss := _loss(event["data"], keys)) is not None
    }
    progress = dict(snapshot.progress)  # running with no total: none, the step says how far
    if total:
        progress["overall"] = finished_progress(snapshot.state, ratio(step, total))
    return dataclasses.replace(
        snapshot,
        progress=progress,
        training_step=step,
        training_loss=losses,
        last_update=last_update,
    )


def follow_up(
    source: Source, job_id: str, _project: str | None, snapshot: JobSnapshot
) -> FollowUp | None:
    """The newest events of a running (or paused) job; nothing more for any other."""
    if snapshot.state is not State.RUNNING:
        return None
    url = source.url("fine_tuning", "jobs", job_id, "events", limit=EVENTS_PAGE)
    return FollowUp(source.get(url), read_events)


# -- request, listing, locating, webhooks -------------------------------------------------------


def request(source: Source, job_id: str, _project: str | None = None, /) -> UpstreamRequest:
    return source.get(source.url("fine_tuning", "jobs", job_id))


def _listed(entry: Mapping[str, Any], at: datetime) -> Listed | None:
    """A listed job with its status, but a running one: its poll reads its events too."""
    job_id = entry.get("id")
    if not isinstance(job_id, str) or not is_path_safe_id(job_id):
        return None
    try:
        snapshot = parse(entry, at)
    except (ParseError, ValueError):
        return Listed(job_id)
    return Listed(job_id) if snapshot.state is State.RUNNING else Listed(job_id, None, snapshot)


def lister(source: Source, query: ListQuery) -> tuple[ListRequest, ...]:
    return (cursor_listing(source, ("fine_tuning", "jobs"), query.since, _listed),)


ROUTE = re.compile(r"/fine_tuning/jobs/(?P<job_id>[^/]+)")


def locate(source: Source, url: str) -> Located | None:
    found = route(source, url, ROUTE)
    return None if found is None else Located(found["job_id"])


def webhook_job_id(payload: Any) -> str | None:
    return event_job_id(payload, "fine_tuning.job.")


PROVIDER = Provider(
    "openai_fine_tuning",
    Source,
    request,
    parse,
    locate,
    Webhook("openai", webhook_job_id, signed=True),
    lister=lister,
    follow_up=follow_up,
)
