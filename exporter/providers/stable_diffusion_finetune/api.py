"""Stable Diffusion API (stablediffusionapi.com / modelslab.com) fine-tune status.

Request (the key travels in the JSON body, never in the URL)::

    POST {endpoint}/api/v3/fine_tune_status/{id}
    {"key": "..."}

Answer: `{"status": "success", "messege": "<stage>", "data": "<log lines>"}`. The stage is the
job's status (`deploying_gpu` ... `model_ready`; `training_failed` is failed). The whole log is
read (up to the response size cap), and its last step line gives progress N/(N+M) and an
estimated completion X minutes after the poll. Step lines come in the documented form and in the
training worker's own wording, with any trailing `| ...` fields::

    Step:2 Training Done, 4 Steps to go : ETA : 15 minutes
    Step:2 Training Done, 4 More Steps to go : ETA : 45 minutes | Time Elapsed : 905 seconds

Lines are separated by newlines or by a literal " /n ". Yields, for a job at step 2 of 6::

    asyncjob_info{...,vendor_status="training_started",display_name=""} 1
    asyncjob_state{...,state="running"} 1
    asyncjob_progress_ratio{...,phase="overall"} 0.3333333333333333
    asyncjob_estimated_completion_timestamp_seconds{...} 1.7e+09

The answer has no times, so no finish time either: the store takes the poll that saw a
fine-tune it had seen unfinished finish as its finish time, and gives one first seen finished
(a first listing names every fine-tune ever made) none.

The API answers errors with HTTP 200 and `"status": "error"`: that is a failed poll (reason
auth, throttled, not_found or bad_response by its message), not a failed job.

Discovery asks `POST {endpoint}/api/v3/finetune_list` (the key in the body). It names the
account's fine-tunes by ID only, with no dates and no status: each new one is polled alone, and
finished ones are remembered, so that they are not polled again. The IDs are read tolerantly: a
list of strings, or of objects with `model_id`, `training_id` or `id`, under `data`, `models`
or `output`.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from exporter.logging import redactor
from exporter.model import ErrorReason, JobSnapshot, State
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
    Webhook,
    finished_progress,
    map_status,
    obj,
    path,
    ratio,
    route,
    text,
)
from exporter.values import FileSecret, HttpUrl, is_path_safe_id

if TYPE_CHECKING:
    from collections.abc import Mapping
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
# A step line, tolerantly: "Step" and its number, then (after any words) the steps left, written
# "4 Steps to go", "4 More Steps to go" or "4 steps left"; an ETA anywhere before the next "|".
_STEP_NUMBER = re.compile(r"\bstep\s*[:#]?\s*(\d+)", re.IGNORECASE)
_STEPS_LEFT = re.compile(
    r"\b(\d+)\s+(?:[a-z]+\s+){0,3}?steps?\s+(?:to\s+go|left|remaining)\b", re.IGNORECASE
)
_ETA = re.compile(r"\bETA\b\s*[:=]?([^|]*)", re.IGNORECASE)
_ETA_PART = re.compile(
    r"(\d+(?:\.\d+)?)\s*(hours?|hrs?|h|minutes?|mins?|m|seconds?|secs?|s)?\b", re.IGNORECASE
)
_MINUTES_PER_UNIT = {"h": 60.0, "m": 1.0, "s": 1 / 60}
_FAILED_POLL = (
    (re.compile(r"api.?key|unauthori[sz]ed|forbidden", re.IGNORECASE), ErrorReason.AUTH),
    (re.compile(r"rate.?limit|too many|queued requests", re.IGNORECASE), ErrorReason.THROTTLED),
    (re.compile(r"not.?found|no such|invalid.*id", re.IGNORECASE), ErrorReason.NOT_FOUND),
)
MAX_ETA_MINUTES = 60 * 24 * 366


class Source(SourceBase):
    endpoint: HttpUrl = DEFAULT_ENDPOINT
    auth: ApiKeyAuth
    webhook_token: SecretStr | None = None  # required by /api/v1/webhooks/stable-diffusion/NAME
    webhook_token_file: FileSecret | None = None

    def problems(self) -> list[tuple[str, str]]:
        if self.webhook_token is not None and self.webhook_token_file is not None:
            return [("webhook_token_file", "set webhook_token or webhook_token_file, not both")]
        return []

    def webhook_secret(self) -> str | None:
        token = self.webhook_token or self.webhook_token_file
        return None if token is None else token.get_secret_value()


ROUTE = re.compile(r"/api/v3/fine_tune_status/(?P<job_id>[^/]+)")


def _post(source: Source, *segments: str) -> UpstreamRequest:
    """A POST to the API, the key in its JSON body."""
    url = f"{source.endpoint}/{path('api', 'v3', *segments)}"
    return UpstreamRequest(
        "POST", url, {"Content-Type": "application/json"}, {"key": source.auth.secret()}
    )


def request(source: Source, job_id: str, _project: str | None = None, /) -> UpstreamRequest:
    return _post(source, "fine_tune_status", job_id)


def _failed_poll(message: str, answer: Mapping[str, Any]) -> ParseError:
    wait = answer.get("retry_after")  # ModelsLab's 429 names its wait in the body
    retry_after = None
    if isinstance(wait, int | float) and not isinstance(wait, bool) and 0 <= wait < 1e6:
        retry_after = float(wait)
    # Masked, then cut: a message cut first could end inside a key it quotes.
    said = f"API error: {redactor.clip(message, 120)}"
    for pattern, reason in _FAILED_POLL:
        if pattern.search(message):
            return ParseError(said, reason, retry_after)
    return ParseError(said, retry_after=retry_after)


def parse_step(line: str) -> tuple[int, int, float | None] | None:
    """(steps done, steps left, ETA in minutes or None) of one log line; None if no step line."""
    number = _STEP_NUMBER.search(line)
    if number is None:
        return None
    left = _STEPS_LEFT.search(line, number.end())
    if left is None:
        return None
    eta = _ETA.search(line, left.end())
    minutes = None
    if eta is not None:
        parts = _ETA_PART.findall(eta[1])
        timed = [(n, unit) for n, unit in parts if unit]  # "1 hour 5 minutes" adds up
        if timed:
            minutes = sum(float(n) * _MINUTES_PER_UNIT[unit[0].lower()] for n, unit in timed)
        elif parts:
            minutes = float(parts[0][0])  # a bare number: the documented unit is minutes
    return int(number[1]), int(left[1]), minutes


def _log_text(answer: Mapping[str, Any]) -> str:
    """The whole training log: a string, or (tolerated) a list of lines."""
    for key in ("data", "logs"):
        value = answer.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return "\n".join(line for line in value if isinstance(line, str))
    return ""


def parse(payload: Any, polled_at: datetime) -> JobSnapshot:
    answer = obj(payload, "answer")
    status = text(answer, "status", required=True)
    # The API spells it "messege"; newer ModelsLab answers and errors say "message".
    message = text(answer, "messege", "message", "training_status")
    if status.casefold() != "success":
        raise _failed_poll(message or status, answer)
    if not message:
        raise ParseError("missing messege (the training stage)")
    state = map_status(message.strip(), STAGES)
    done, eta = 0.0, None
    for line in _LINE_SPLIT.split(_log_text(answer)):
        step = parse_step(line)
        if step:
            finished, to_go, minutes = step
            done = ratio(finished, finished + to_go)
            eta = None if minutes is None else min(minutes, MAX_ETA_MINUTES)
    return JobSnapshot(
        state=state,
        vendor_status=message,
        progress={"overall": finished_progress(state, done)},
        estimated_completion=(
            None if eta is None or state.terminal else polled_at + timedelta(minutes=eta)
        ),
    )


ID_KEYS = ("model_id", "training_id", "id")


def _model_id(entry: Any) -> str | None:
    if isinstance(entry, dict):
        entry = next((entry[key] for key in ID_KEYS if key in entry), None)
    if isinstance(entry, int) and not isinstance(entry, bool):
        entry = str(entry)
    return entry if isinstance(entry, str) and is_path_safe_id(entry) else None


def _read_list(payload: Any, _at: datetime) -> Page:
    answer = obj(payload, "answer")
    status = text(answer, "status")
    if status and status.casefold() != "success":
        raise _failed_poll(text(answer, "messege", "message") or status, answer)
    entries: Any = next((answer[k] for k in ("data", "models", "output") if k in answer), [])
    if not isinstance(entries, list):
        raise ParseError(f"data: expected a list of fine-tunes, got {type(entries).__name__}")
    ids = dict.fromkeys(job_id for entry in entries if (job_id := _model_id(entry)) is not None)
    return Page(tuple(Listed(job_id) for job_id in ids))


def lister(source: Source, _query: ListQuery) -> tuple[ListRequest, ...]:
    return (ListRequest(_post(source, "finetune_list"), _read_list),)


def locate(source: Source, url: str) -> Located | None:
    """The API has no Operation-Location; its status URL names the fine-tune all the same."""
    found = route(source, url, ROUTE)
    return None if found is None else Located(found["job_id"])


def webhook_job_id(payload: Any) -> str | None:
    """ModelsLab posts {"status", "training_status", "logs", "model_id"} when a training moves."""
    job_id = payload.get("model_id") if isinstance(payload, dict) else None
    return job_id if isinstance(job_id, str) else None


PROVIDER = Provider(
    "stable_diffusion_finetune",
    Source,
    request,
    parse,
    locate,
    Webhook("stable-diffusion", webhook_job_id),
    lister=lister,
    names_only=True,
)
