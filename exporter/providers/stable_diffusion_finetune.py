"""Stable Diffusion API (stablediffusionapi.com / modelslab.com) fine-tune status.

Request (the key travels in the JSON body, never in the URL)::

    POST {endpoint}/api/v3/fine_tune_status/{id}
    {"key": "..."}

Answer: `{"status": "success", "messege": "<stage>", "data": "<log lines>"}`. The stage is the
job's status (`deploying_gpu` ... `model_ready`); the log's last `Step:N ..., M Steps to go :
ETA : X minutes` line gives progress N/(N+M) and an estimated completion X minutes after the
poll. Lines are separated by newlines or by a literal " /n ". Yields, for a job at step 2::

    asyncjob_info{...,vendor_status="training_started",display_name=""} 1
    asyncjob_state{...,state="running"} 1
    asyncjob_progress_ratio{...,phase="overall"} 0.3333333333333333
    asyncjob_estimated_completion_timestamp_seconds{...} 1.7e+09

The API answers errors with HTTP 200 and `"status": "error"`: that is a failed poll (reason
auth, throttled, not_found or bad_response by its message), not a failed job.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from exporter.model import ErrorReason, JobSnapshot, State
from exporter.providers.base import (
    ApiKeyAuth,
    ParseError,
    Provider,
    SourceBase,
    UpstreamRequest,
    finished_progress,
    map_status,
    obj,
    path,
    ratio,
    text,
)
from exporter.values import HttpUrl

if TYPE_CHECKING:
    from datetime import datetime

DEFAULT_ENDPOINT = "https://stablediffusionapi.com"
STAGES = {
    "deploying_gpu": State.NOT_STARTED,
    "training_started": State.RUNNING,
    "training_success": State.RUNNING,
    "trained_model_compressing": State.RUNNING,
    "trained_model_uploading": State.RUNNING,
    "trained_model_uploaded": State.RUNNING,
    "deploying_model": State.RUNNING,
    "model_ready": State.SUCCEEDED,
    "failed": State.FAILED,
    "training_failed": State.FAILED,
    "cancelled": State.CANCELLED,
    "canceled": State.CANCELLED,
    "training_cancelled": State.CANCELLED,
}
_LINE_SPLIT = re.compile(r"\n|(?:^|\s)/n(?=\s|$)")
_STEP = re.compile(
    r"Step\s*:\s*(\d+)\b.*?(\d+)\s+Steps?\s+to\s+go\b(?:.*?ETA\s*:\s*(\d+(?:\.\d+)?)\s*min)?",
    re.IGNORECASE,
)
_FAILED_POLL = (
    (re.compile(r"api.?key|unauthori[sz]ed|forbidden", re.IGNORECASE), ErrorReason.AUTH),
    (re.compile(r"rate.?limit|too many|queued requests", re.IGNORECASE), ErrorReason.THROTTLED),
    (re.compile(r"not.?found|no such|invalid.*id", re.IGNORECASE), ErrorReason.NOT_FOUND),
)
MAX_ETA_MINUTES = 60 * 24 * 366


class Source(SourceBase):
    endpoint: HttpUrl = DEFAULT_ENDPOINT
    auth: ApiKeyAuth


def request(source: Source, job_id: str) -> UpstreamRequest:
    url = f"{source.endpoint}/{path('api', 'v3', 'fine_tune_status', job_id)}"
    return UpstreamRequest(
        "POST", url, {"Content-Type": "application/json"}, {"key": source.auth.secret()}
    )


def _failed_poll(message: str) -> ParseError:
    for pattern, reason in _FAILED_POLL:
        if pattern.search(message):
            return ParseError(f"API error: {message[:120]}", reason)
    return ParseError(f"API error: {message[:120]}")


def parse(payload: Any, polled_at: datetime) -> JobSnapshot:
    answer = obj(payload, "answer")
    status = text(answer, "status", required=True)
    # The API spells it "messege"; newer ModelsLab answers and errors say "message".
    message = text(answer, "messege", "message", "training_status")
    if status.casefold() != "success":
        raise _failed_poll(message or status)
    if not message:
        raise ParseError("missing messege (the training stage)")
    state = map_status(message, STAGES)
    log = text(answer, "data", "logs") if isinstance(answer.get("data", ""), str) else ""
    done, eta = 0.0, None
    for line in _LINE_SPLIT.split(log):
        step = _STEP.search(line)
        if step:
            finished, to_go = int(step[1]), int(step[2])
            done = ratio(finished, finished + to_go)
            minutes = float(step[3]) if step[3] else None
            eta = None if minutes is None else min(minutes, MAX_ETA_MINUTES)
    return JobSnapshot(
        state=state,
        vendor_status=message,
        progress={"overall": finished_progress(state, done)},
        estimated_completion=(
            None if eta is None or state.terminal else polled_at + timedelta(minutes=eta)
        ),
    )


PROVIDER = Provider("stable_diffusion_finetune", Source, request, parse)
