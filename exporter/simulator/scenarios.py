"""Simulated jobs: what each of the five APIs answers for a job at a given moment.

A `SimJob` is a timeline: it exists from `created_at` (seconds after the simulator started), and
`start_delay` seconds later it runs for `duration` seconds, then ends as its `outcome` says.
`render(job, elapsed, started_at, variant)` returns the JSON body the real API would send at that
moment, in the API's own spelling (these are the shapes in the vendors' published examples).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

Api = Literal["training", "analyze_text", "text_analytics", "translation", "stable_diffusion"]
Outcome = Literal["succeeded", "failed", "stalled"]

SD_STAGES = (
    "deploying_gpu",
    "training_started",
    "training_success",
    "trained_model_compressing",
    "trained_model_uploading",
    "trained_model_uploaded",
    "deploying_model",
    "model_ready",
)


@dataclass(frozen=True, slots=True)
class SimJob:
    job_id: str
    api: Api
    duration: float = 120.0
    outcome: Outcome = "succeeded"
    stop_at: float = 0.4  # fraction of the work done when a failed or stalled job stops
    start_delay: float = 5.0
    display_name: str = ""
    units: int = 4  # tasks, documents or SD steps
    failed_units: int = 0  # documents that fail in a batch that still succeeds
    characters_per_unit: int = 1500
    warnings: int = 0
    throttle: tuple[float, float] | None = None  # [from, to) seconds answering 429
    retry_after: int = 1
    worker_wording: bool = False  # SD log lines as the training worker writes them
    created_at: float = 0.0  # seconds after the simulator started; unknown to the API before
    project: str = "LoanAgreements"  # training jobs' project


@dataclass(frozen=True, slots=True)
class Moment:
    """Where a job is at one instant."""

    phase: Literal["not_started", "running", "succeeded", "failed"]
    done: float  # fraction of the work done, 0..1


def moment(job: SimJob, elapsed: float) -> Moment:
    if elapsed < job.start_delay:
        return Moment("not_started", 0.0)
    done = min((elapsed - job.start_delay) / job.duration, 1.0)
    if job.outcome != "succeeded" and done >= job.stop_at:
        return Moment("failed" if job.outcome == "failed" else "running", job.stop_at)
    return Moment("succeeded" if done >= 1.0 else "running", done)


def terminal(job: SimJob, elapsed: float) -> bool:
    """Whether the job has ended (a stalled job never does)."""
    return moment(job, elapsed - job.created_at).phase in {"succeeded", "failed"}


def created(job: SimJob, started_at: datetime) -> datetime:
    return started_at.astimezone(UTC) + timedelta(seconds=job.created_at)


def iso(when: datetime) -> str:
    # Seven fractional digits, as Azure writes them.
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def render(job: SimJob, elapsed: float, started_at: datetime, variant: str = "") -> dict[str, Any]:
    """The API's answer for `job`, `elapsed` seconds after the simulator started."""
    now = moment(job, elapsed - job.created_at)
    created = started_at.astimezone(UTC) + timedelta(seconds=job.created_at)
    clock = started_at.astimezone(UTC) + timedelta(seconds=elapsed)
    return RENDERERS[job.api](job, now, created, clock, variant)


def _azure_status(phase: str) -> str:
    return {"not_started": "notStarted"}.get(phase, phase)


def _errors(now: Moment, code: str) -> list[dict[str, str]]:
    return (
        [{"code": code, "message": "The job failed (simulated)."}] if now.phase == "failed" else []
    )


def _training(
    job: SimJob, now: Moment, created: datetime, clock: datetime, workload: str
) -> dict[str, Any]:
    # Training is the first 80% of the work, evaluation the rest. Conversations projects report
    # a data generation phase too, done before training starts.
    training = min(now.done / 0.8, 1.0)
    evaluation = max(0.0, (now.done - 0.8) / 0.2)
    status = _azure_status(now.phase)
    train_start = created + timedelta(seconds=job.start_delay)

    def phase(ratio: float, begun: bool) -> dict[str, Any]:
        if not begun:
            return {"percentComplete": 0, "status": "notStarted"}
        finished = ratio >= 1.0
        return {
            "percentComplete": math.floor(ratio * 100),
            "startDateTime": iso(train_start),
            "status": "succeeded" if finished else status,
        }

    result = {
        "modelLabel": job.display_name or job.job_id,
        "trainingConfigVersion": "2022-05-01",
        # The API's estimate covers the training phase only (80% of the work here).
        "estimatedEndDateTime": iso(train_start + timedelta(seconds=0.8 * job.duration)),
        "trainingStatus": phase(training, now.phase != "not_started"),
        "evaluationStatus": phase(evaluation, now.done > 0.8),
    }
    if workload == "conversations":
        result["dataGenerationStatus"] = phase(1.0, now.phase != "not_started")
    return {
        "result": result,
        "jobId": job.job_id,
        "createdDateTime": iso(created),
        "lastUpdatedDateTime": iso(clock),
        "expirationDateTime": iso(created + timedelta(days=7)),
        "status": status,
        "warnings": [{"code": "LowData", "message": "Few examples."}] * job.warnings,
        "errors": _errors(now, "TrainingFailed"),
    }


def _task_counts(job: SimJob, now: Moment) -> dict[str, int]:
    completed = math.floor(now.done * job.units)
    failed = 1 if now.phase == "failed" else 0
    in_progress = 0 if now.phase in {"failed", "succeeded"} else job.units - completed
    return {"completed": completed, "failed": failed, "inProgress": in_progress, "total": job.units}


def _analyze(
    job: SimJob, now: Moment, created: datetime, clock: datetime, variant: str
) -> dict[str, Any]:
    status = _azure_status(now.phase)
    updated_key = "lastUpdatedDateTime"
    if job.api == "text_analytics":
        updated_key = "lastUpdateDateTime"  # the v3.x spelling
        if "preview" in variant and status == "succeeded":
            status = "completed"  # the v3.2 previews' spelling
    return {
        "createdDateTime": iso(created),
        "displayName": job.display_name,
        "expirationDateTime": iso(created + timedelta(days=1)),
        "jobId": job.job_id,
        updated_key: iso(clock),
        "status": status,
        "errors": _errors(now, "TaskFailed"),
        "tasks": {**_task_counts(job, now), "items": []},
    }


_TRANSLATOR_STATUS = {"not_started": "NotStarted", "running": "Running"}


def translation_status(job: SimJob, elapsed: float) -> str:
    """A batch's status as the Translator spells it, without rendering the batch."""
    phase = moment(job, elapsed - job.created_at).phase
    return _TRANSLATOR_STATUS.get(phase, phase.title())


def _translation(
    job: SimJob, now: Moment, created: datetime, clock: datetime, variant: str
) -> dict[str, Any]:
    finished = math.floor(now.done * job.units)
    if now.phase == "failed":  # a failed batch fails every document it had not finished
        success, failed, in_progress, waiting = finished, job.units - finished, 0, 0
    else:
        failed = min(job.failed_units, finished)
        success = finished - failed
        in_progress = 1 if now.phase == "running" and finished < job.units else 0
        waiting = job.units - finished - in_progress
    status = _TRANSLATOR_STATUS.get(now.phase, now.phase.title())
    body: dict[str, Any] = {
        # The v1.x API calls it "id", 2024-05-01 "translationId"; clients must take either.
        ("id" if variant.startswith("v1.") else "translationId"): job.job_id,
        "createdDateTimeUtc": iso(created),
        "lastActionDateTimeUtc": iso(clock),
        "status": status,
        "summary": {
            "total": job.units,
            "failed": failed,
            "success": success,
            "inProgress": in_progress,
            "notYetStarted": waiting,
            "cancelled": 0,
            "totalCharacterCharged": success * job.characters_per_unit,
        },
    }
    if now.phase == "failed":
        body["error"] = {"code": "InternalServerError", "message": "Batch failed (simulated)."}
    return body


def _stable_diffusion(
    job: SimJob, now: Moment, created: datetime, clock: datetime, variant: str
) -> dict[str, Any]:
    del created, clock
    steps = job.units
    done_steps = math.floor(now.done * steps)
    minutes_per_step = job.duration / steps / 60
    more, elapsed = ("More ", " | Time Elapsed : {} seconds") if job.worker_wording else ("", "")
    lines = [
        f"Step:{n} Stage {n} done, {steps - n} {more}Steps to go : ETA : "
        f"{max(1, math.ceil((steps - n) * minutes_per_step))} minutes"
        + elapsed.format(round(n * job.duration / steps))
        for n in range(1, done_steps + 1)
    ]
    if now.phase == "succeeded":
        stage = "model_ready"
        lines.append("Model loaded successfully")
    elif now.phase == "failed":
        stage = "training_failed"
    elif now.phase == "not_started":
        stage = "deploying_gpu"
    else:
        stage = SD_STAGES[1 + min(math.floor(now.done * 6), 5)]
    separator = "\n" if variant == "newline" else " /n "
    return {"status": "success", "messege": stage, "data": separator.join(lines)}


RENDERERS = {
    "training": _training,
    "analyze_text": _analyze,
    "text_analytics": _analyze,
    "translation": _translation,
    "stable_diffusion": _stable_diffusion,
}


DEMO_JOBS = (
    SimJob("train-ok", "training", duration=180, display_name="loan-model-v2", warnings=1),
    SimJob("train-fail", "training", duration=120, outcome="failed", display_name="loan-model-v3"),
    SimJob("analyze-ok", "analyze_text", duration=120, display_name="Extract contract entities"),
    SimJob("ta-ok", "text_analytics", duration=90, units=2, display_name="Legacy entity pass"),
    SimJob("batch-ok", "translation", duration=150, units=20, throttle=(30.0, 40.0), retry_after=2),
    SimJob("batch-partial", "translation", duration=100, units=10, failed_units=2),
    SimJob("sd-ok", "stable_diffusion", duration=200, units=6, worker_wording=True),
    SimJob(
        "sd-stalled", "stable_diffusion", duration=200, units=6, outcome="stalled", stop_at=0.35
    ),
)
# Jobs the demo config does not list: they reach the exporter through its jobs API and through
# a webhook call, as they would from a pipeline and from ModelsLab.
API_DEMO_JOB = SimJob("analyze-api", "analyze_text", duration=150, display_name="Registered by API")
WEBHOOK_DEMO_JOB = SimJob("sd-webhook", "stable_diffusion", duration=180, units=6)


def arrival(api: Api, n: int, every: float) -> SimJob:
    """The n-th job (from 1) that starts by itself on `api`, every `every` seconds: a new
    translation batch, or a new training job in one of two projects; one in five fails."""
    outcome: Outcome = "failed" if n % 5 == 0 else "succeeded"
    if api == "translation":
        return SimJob(f"batch-new-{n}", api, duration=90, units=8, outcome=outcome,
                      start_delay=3.0, created_at=n * every)  # fmt: skip
    project = ("LoanAgreements", "Contracts")[n % 2]
    return SimJob(f"train-new-{n}", api, duration=120, outcome=outcome, start_delay=3.0,
                  created_at=n * every, project=project, display_name=f"model-v{n}")  # fmt: skip
