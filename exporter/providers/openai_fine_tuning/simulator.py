"""OpenAI and Azure OpenAI fine-tuning jobs, as the simulator serves them.

    GET /v1/fine_tuning/jobs/{id}                  OpenAI (/openai/v1/...: Azure OpenAI's route)
    GET /v1/fine_tuning/jobs?limit=&after=         newest first; has_more, no first_id/last_id
    GET /v1/fine_tuning/jobs/{id}/events?limit=&after=

Keys, rate-limit headers, throttling and accounts (a job's `project`) as for batches (see the
batch part, whose helpers this part shares). A job validates its files for the first half of
`start_delay` seconds and is queued for the rest (Azure: `pending`), then trains `units` steps
over `duration` seconds and succeeds; with `outcome` "failed" or "cancelled" it ends at
`stop_at`, and "stalled" is paused there (held by an operator) for good. Its events: created,
validating, started, a `metrics` event every STEP_EVERY-th of the steps
(`Step 10/100: training loss=...` on OpenAI, `Step 10: ...` with no total on Azure, with the
step and the training and validation losses in `data`), then its end. OpenAI lists events
newest first, Azure (its example) oldest first. On Azure a job has no organization and its
result files are null until it succeeds, and a paused job carries a `finished_at`, as Azure's
pause example does. OpenAI's answers carry every field the `openai` SDK declares; a paused job
is the one thing they send that the SDK's model does not know.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from exporter.providers.openai_batch.simulator import (
    AZURE,
    BASE,
    RATE_LIMITS,
    check_key,
    cursor_page,
    newest_first,
    on_route,
    openai_and_azure,
    openai_error,
    throttled,
    unix,
)
from exporter.simulator.kit import (
    Answer,
    Demo,
    Listing,
    ListRoute,
    Moment,
    Route,
    SimJob,
    SimPart,
    created,
    moment,
)

if TYPE_CHECKING:
    from datetime import datetime

NAME = "openai_fine_tuning"
STEP_EVERY = 20  # a metrics event every this many-th of the steps
TOKENS_PER_STEP = 480
MODEL = "gpt-4o-mini-2024-07-18"
HYPERPARAMETERS = {"batch_size": 1, "learning_rate_multiplier": 1.8, "n_epochs": 3}
METHOD = {"type": "supervised", "dpo": None, "reinforcement": None,
          "supervised": {"hyperparameters": HYPERPARAMETERS}}  # fmt: skip
FAILURE = "The job failed due to an invalid training file (simulated)."


def _status(job: SimJob, now: Moment, created: datetime, clock: datetime, azure: bool) -> str:
    if now.phase == "not_started":
        validating = (clock - created).total_seconds() < job.start_delay / 2
        return "validating_files" if validating else ("pending" if azure else "queued")
    if now.phase == "running":
        return "paused" if job.outcome == "stalled" and now.done >= job.stop_at else "running"
    return "failed" if now.phase == "expired" else now.phase


def _ends(job: SimJob, created: datetime) -> tuple[datetime, datetime, datetime]:
    """When it began training, when it stops if it does not succeed, when it would succeed."""
    began = created + timedelta(seconds=job.start_delay)
    stopped = began + timedelta(seconds=job.stop_at * job.duration)
    return began, stopped, began + timedelta(seconds=job.duration)


def render(
    job: SimJob, now: Moment, created: datetime, clock: datetime, variant: str
) -> dict[str, Any]:
    azure = bool(variant)
    status = _status(job, now, created, clock, azure)
    _, stopped, done = _ends(job, created)
    finished = {"succeeded": done, "failed": stopped, "cancelled": stopped}.get(status)
    if azure and status == "paused":
        finished = stopped  # Azure's pause answer carries one
    if status == "succeeded":
        result_files: list[str] | None = [f"file-result-{job.job_id}"]
    else:
        result_files = None if azure else []
    error = None
    if status == "failed":
        error = {"code": "invalid_training_file", "param": "training_file", "message": FAILURE}
    return {
        "object": "fine_tuning.job",
        "id": job.job_id,
        "model": MODEL,
        "created_at": unix(created),
        "finished_at": None if finished is None else unix(finished),
        "fine_tuned_model": f"ft:{MODEL}:demo::{job.job_id}" if status == "succeeded" else None,
        "organization_id": None if azure else "org-simulated",
        "result_files": result_files,
        "status": status,
        "validation_file": f"file-valid-{job.job_id}",
        "training_file": f"file-train-{job.job_id}",
        "hyperparameters": {"n_epochs": -1} if azure else HYPERPARAMETERS,
        "trained_tokens": job.units * TOKENS_PER_STEP if status == "succeeded" else None,
        "error": error,
        "seed": 42,
        "estimated_finish": {"running": unix(done), "succeeded": 0}.get(status),
        "integrations": [],
        "metadata": None,
        "method": METHOD,
        "user_provided_suffix": job.display_name or None,
    }


# -- events ------------------------------------------------------------------------------------


def _losses(step: int, steps: int) -> dict[str, float]:
    train = round(2.0 * math.exp(-3.0 * step / steps) + 0.05, 4)
    return {"train_loss": train, "train_mean_token_accuracy": round(1 - train / 3, 4),
            "valid_loss": round(train + 0.1, 4),
            "valid_mean_token_accuracy": round(1 - (train + 0.1) / 3, 4)}  # fmt: skip


def events(job: SimJob, now: Moment, created: datetime, clock: datetime, azure: bool) -> list[Any]:
    """The job's events so far, oldest first."""
    began, stopped, done = _ends(job, created)
    found: list[tuple[datetime, str, str, dict[str, Any] | None]] = [
        (created, "message", f"Created fine-tuning job: {job.job_id}", None),
        (created, "message", f"Validating training file: file-train-{job.job_id}", None),
    ]
    if now.phase != "not_started":
        found.append((began, "message", "Fine-tuning job started", None))
    every = max(1, job.units // STEP_EVERY)
    for step in range(every, math.floor(now.done * job.units) + 1, every):
        at = began + timedelta(seconds=job.duration * step / job.units)
        loss = _losses(step, job.units)
        total = "" if azure else f"/{job.units}"
        message = f"Step {step}{total}: training loss={loss['train_loss']:.2f}"
        found.append((at, "metrics", message, {"step": step, **loss}))
    status = _status(job, now, created, clock, azure)
    ending = {
        "paused": [(stopped, "Fine-tuning job paused")],
        "cancelled": [(stopped, "Fine-tuning job cancelled")],
        "failed": [(stopped, FAILURE)],
        "succeeded": [(done, f"New fine-tuned model created: ft:{MODEL}:demo::{job.job_id}"),
                      (done, "The job has successfully completed")],
    }.get(status, [])  # fmt: skip
    found += [(at, "message", message, None) for at, message in ending]
    return [
        {"object": "fine_tuning.job.event", "id": f"ftevent-{job.job_id}-{n}",
         "created_at": unix(at), "level": "error" if status == "failed" and n == len(found) - 1
         else "info", "message": message, "data": data, "type": kind}
        for n, (at, kind, message, data) in enumerate(found)
    ]  # fmt: skip


def job_events(listing: Listing) -> Answer:
    """A job's events, newest first on OpenAI and oldest first on Azure, paged by `after`."""
    job_id = listing.call.groups["job_id"]
    job = next((job for job in listing.jobs if job.job_id == job_id), None)
    if job is None:
        return not_found()
    azure = bool(listing.call.variant)
    now = moment(job, listing.elapsed - job.created_at)
    clock = listing.started_at + timedelta(seconds=listing.elapsed)
    found = events(job, now, created(job, listing.started_at), clock, azure)
    ordered = found if azure else found[::-1]
    return cursor_page(listing, ordered, lambda event: event["id"], lambda event: event,
                       first_last=False)  # fmt: skip


# -- listing, the demo --------------------------------------------------------------------------


def not_found() -> Answer:
    return openai_error(404, "No such fine-tuning job.", "invalid_request_error", None)


def jobs(listing: Listing) -> Answer:
    """The account's fine-tuning jobs, newest first, paged by `after` (no first/last IDs)."""
    return cursor_page(listing, newest_first(on_route(listing)), lambda job: job.job_id,
                       listing.rendered, first_last=False)  # fmt: skip


def demo_sources(demo: Demo) -> list[dict[str, Any]]:
    """OpenAI's jobs listed by ID (or found by discovery); Azure's by ID."""
    return openai_and_azure(demo, NAME, "fine-tuning", DEMO_JOBS)


DEMO_JOBS = (
    SimJob("ftjob-demo-ok", NAME, duration=180, units=100, display_name="support-bot"),
    SimJob("ftjob-demo-paused", NAME, duration=200, units=100, outcome="stalled", stop_at=0.4),
    SimJob("ftjob-demo-failed", NAME, duration=120, units=60, outcome="failed", stop_at=0.2),
    SimJob("ftjob-azure-demo", NAME, duration=150, units=100, project=AZURE),
)

_JOBS = BASE + r"/fine_tuning/jobs"
PART = SimPart(
    NAME,
    routes=(Route("GET", re.compile(_JOBS + r"/(?P<job_id>[^/]+)")),),
    render=render,
    check_key=check_key,
    listings=(
        ListRoute("GET", re.compile(_JOBS), jobs),
        ListRoute("GET", re.compile(_JOBS + r"/(?P<job_id>[^/]+)/events"), job_events),
    ),
    not_found=not_found,
    throttled=throttled,
    headers=RATE_LIMITS,
    demo_jobs=DEMO_JOBS,
    demo_sources=demo_sources,
)
