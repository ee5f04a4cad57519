"""The one vocabulary every part speaks: canonical job states and the parsed job snapshot.

Providers turn vendor payloads into a `JobSnapshot`; the store keeps them; the collector
renders them. Nothing here knows about HTTP, config or Prometheus; the redactor masks what
upstream said before a snapshot holds it.

The words are defined here once: the job states and their colours, the never-polled state,
task and document states, how a job came to be tracked (its origin), when a running job is
stalled and which jobs need attention. The status page, the jobs API, the dashboard and alert
generators import them; tests/test_vocabulary.py fails when a shipped rule or dashboard names
a state that is not here.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from datetime import timedelta
from math import copysign
from sys import intern
from types import MappingProxyType
from typing import TYPE_CHECKING

from exporter.logging import redactor

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime


class State(enum.StrEnum):
    """Canonical job state; every vendor status maps to exactly one of these."""

    NOT_STARTED = "not_started"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    PARTIALLY_SUCCEEDED = "partially_succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        """A terminal job never changes again, so it is polled no more."""
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {State.SUCCEEDED, State.PARTIALLY_SUCCEEDED, State.FAILED, State.CANCELLED}
)
UNFINISHED_STATES = tuple(state for state in State if state not in TERMINAL_STATES)
"""Still polled: AsyncJobOverdue and the Overview's longest-running jobs look at these."""
UNSUCCESSFUL_STATES = frozenset({State.FAILED, State.PARTIALLY_SUCCEEDED, State.CANCELLED})
"""Finished without full success: kept for the longer retention, and the Overview lists them."""
ATTENTION_STATES = frozenset({State.FAILED, State.PARTIALLY_SUCCEEDED, State.UNKNOWN})
"""A job in one of these needs a person: the status page flags it (Attention.STATE), and an
alert fires for each (AsyncJobFailed, AsyncJobPartiallySucceeded, AsyncJobStateUnknown)."""

NOT_POLLED = "not_polled"
"""A tracked job's state before its first answer. Not a `State`, since it has no asyncjob_state
series; the jobs API and the status page name it so (`?state=not_polled`)."""
RECORD_STATES = (*(state.value for state in State), NOT_POLLED)
"""Every state a tracked job can be listed in, by the jobs API and the status page."""

STATE_COLOURS: Mapping[str, str] = MappingProxyType(
    {
        State.NOT_STARTED: "#6b7280",
        State.RUNNING: "#2563eb",
        State.CANCELLING: "#d97706",
        State.SUCCEEDED: "#16a34a",
        State.PARTIALLY_SUCCEEDED: "#d97706",
        State.FAILED: "#dc2626",
        State.CANCELLED: "#6b7280",
        State.UNKNOWN: "#7c3aed",
        NOT_POLLED: "#9ca3af",
    }
)
"""Each of RECORD_STATES' colour, the same on the status page and the dashboards."""

STALL_AFTER = timedelta(minutes=30)
"""A running job whose state and progress have not changed for this long is stalled: the
status page's note and the AsyncJobStalled alert."""


def state_of(snapshot: JobSnapshot | None) -> str:
    """A tracked job's state (one of RECORD_STATES) from its last good snapshot, if any."""
    return NOT_POLLED if snapshot is None else snapshot.state.value


def state_words(state: str) -> str:
    """A state as a person reads it, on the page and the dashboards: not_polled -> not polled."""
    return state.replace("_", " ")


class Attention(enum.StrEnum):
    """Why a job needs attention (the status page's notes); a job with none does not."""

    POLLING = "polling"  # its polls fail
    STATE = "state"  # its state is one of ATTENTION_STATES
    FAILURES = "failures"  # it finished with failed tasks or documents
    STALLED = "stalled"  # it runs, and has not moved for STALL_AFTER


class Origin(enum.StrEnum):
    """How a job came to be tracked (the jobs API's `origin`, kept with the job)."""

    CONFIG = "config"  # listed in the config file: never dropped for a 404
    DISCOVERY = "discovery"  # a listing of its source found it
    API = "api"  # registered through the jobs API
    WEBHOOK = "webhook"  # a provider's webhook call named it


class ErrorReason(enum.StrEnum):
    """Why a poll failed; the `reason` label of asyncjob_request_errors_total."""

    AUTH = "auth"
    NOT_FOUND = "not_found"
    THROTTLED = "throttled"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    SERVER_ERROR = "server_error"
    CLIENT_ERROR = "client_error"
    BAD_RESPONSE = "bad_response"


TASK_STATES = ("completed", "failed", "in_progress", "cancelled", "expired")
"""The `state` label of asyncjob_tasks: a job's tasks (analyze jobs) or requests (LLM batches)."""
MAX_LABEL_LENGTH = 200
"""Label values from upstream are cut to this many characters; parsers always see whole strings."""
DOCUMENT_STATES = ("succeeded", "failed", "in_progress", "not_started", "cancelled")
"""The `state` label of asyncjob_documents: a translation batch's documents."""
TOKEN_KINDS = ("input", "output", "trained")
"""The `kind` label of asyncjob_tokens_total: tokens read, written, or trained on."""
LOSS_SPLITS = ("train", "valid")
"""The `split` label of asyncjob_training_loss: the training data, or the validation data."""


_NAMES: dict[tuple[str, ...], frozenset[str]] = {
    names: frozenset(names) for names in (TASK_STATES, DOCUMENT_STATES, TOKEN_KINDS)
}
_LOSS_SPLITS = frozenset(LOSS_SPLITS)


def _check_counts(counts: Mapping[str, int], names: tuple[str, ...]) -> None:
    if min(counts.values()) < 0:
        msg = "counts must not be negative"
        raise ValueError(msg)
    if not counts.keys() <= _NAMES[names]:
        msg = f"counts of {sorted(set(counts) - set(names))} are not in {names}"
        raise ValueError(msg)


_EMPTY: MappingProxyType[str, float] = MappingProxyType({})
_SHARED: dict[tuple[tuple[str, float], ...], MappingProxyType[str, float]] = {}
SHARED_MAPPINGS = 4096


def _frozen(mapping: Mapping[str, float] | Mapping[str, int]) -> MappingProxyType[str, float]:
    """A read-only copy, one object for every equal mapping: most jobs are finished, with the
    same progress ({"overall": 1.0}) and often the same counts, and a snapshot has five
    mappings (two objects each, some 110 bytes empty, 230 and up with keys): at 50,000 jobs
    they were a third of the records' memory. The table is emptied when full, so that running
    jobs' fractions cannot crowd out the common ones for long. -0.0 is not shared: it is equal
    to 0.0 but written differently."""
    if not mapping:
        return _EMPTY
    items = tuple(mapping.items())
    if not all(value or copysign(1.0, value) > 0 for _, value in items):
        return MappingProxyType(dict(items))
    shared = _SHARED.get(items)
    if shared is None:
        if len(_SHARED) >= SHARED_MAPPINGS:
            _SHARED.clear()
        shared = _SHARED[items] = MappingProxyType(dict(items))
    return shared


@dataclass(frozen=True, slots=True)
class JobSnapshot:
    """What one successful poll learned about one job. Immutable, safe to share between threads.

    `progress` maps a phase to a ratio in 0..1 and holds "overall": the share of the work that
    finished (succeeded or failed; cancelled work is not done); it is empty only while a job
    runs whose API does not say how far it is (see `shows_progress`). `tasks` and `documents` are
    empty where the API has no such breakdown; optional numbers and times are None where the API
    does not give them. `finished` is when the API says the job finished, only ever set for a
    terminal state (an unfinished answer's end time is a placeholder, not a finish).
    `vendor_status` and `display_name` come from upstream and become labels, page fields and
    stored values, so they are masked (any secret in them) and then cut to MAX_LABEL_LENGTH
    here, the one place that happens: masked first, so no cut leaves part of a secret.
    """

    state: State
    vendor_status: str
    progress: Mapping[str, float]
    display_name: str = ""
    tasks: Mapping[str, int] = field(default_factory=dict)
    documents: Mapping[str, int] = field(default_factory=dict)
    characters_charged: int | None = None
    errors: int | None = None
    warnings: int | None = None
    created: datetime | None = None
    last_update: datetime | None = None
    started: datetime | None = None
    estimated_completion: datetime | None = None
    expiration: datetime | None = None
    finished: datetime | None = None
    tokens: Mapping[str, int] = field(default_factory=dict)  # by TOKEN_KINDS
    training_step: int | None = None
    training_loss: Mapping[str, float] = field(default_factory=dict)  # by LOSS_SPLITS

    def __post_init__(self) -> None:
        if self.finished is not None and not self.state.terminal:
            msg = f"a {self.state.value} job has no finish time"
            raise ValueError(msg)
        self._check_progress()
        for counts, names in (
            (self.tasks, TASK_STATES),
            (self.documents, DOCUMENT_STATES),
            (self.tokens, TOKEN_KINDS),
        ):
            if counts:  # most have none: a snapshot is made per job per poll, and per restore
                _check_counts(counts, names)
        if self.training_loss and (
            not self.training_loss.keys() <= _LOSS_SPLITS
            or not all(math.isfinite(v) for v in self.training_loss.values())
        ):
            msg = f"training loss must be finite, by {LOSS_SPLITS}"
            raise ValueError(msg)
        if self.training_step is not None and self.training_step < 0:
            msg = "a training step is not negative"
            raise ValueError(msg)
        # A handful of statuses, each one string however many jobs have it.
        status = intern(redactor.clip(self.vendor_status, MAX_LABEL_LENGTH))
        object.__setattr__(self, "vendor_status", status)
        object.__setattr__(self, "display_name", redactor.clip(self.display_name, MAX_LABEL_LENGTH))
        object.__setattr__(self, "progress", _frozen(self.progress))
        object.__setattr__(self, "tasks", _frozen(self.tasks))
        object.__setattr__(self, "documents", _frozen(self.documents))
        object.__setattr__(self, "tokens", _frozen(self.tokens))
        object.__setattr__(self, "training_loss", _frozen(self.training_loss))

    def _check_progress(self) -> None:
        if self.progress and "overall" not in self.progress:
            msg = "progress must include the 'overall' phase"
            raise ValueError(msg)
        if not self.progress and self.state.terminal:
            msg = f"a {self.state.value} job's progress is known"
            raise ValueError(msg)
        for ratio in self.progress.values():
            if not 0.0 <= ratio <= 1.0:
                msg = f"progress ratio {ratio!r} is outside 0..1"
                raise ValueError(msg)

    @property
    def shows_progress(self) -> bool:
        """Whether the API tells how far the job is: a ratio, or a training step. An API that
        does not, while the job runs (an Anthropic batch's counts stay put until it ends), gives
        an empty `progress`: no ratio is made up, and no stall can be told."""
        return bool(self.progress) or self.training_step is not None

    def same_progress(self, other: JobSnapshot | None) -> bool:
        """Whether `other` shows the same state and progress (drives last_progress_change)."""
        return (
            other is not None
            and other.state is self.state
            and other.progress == self.progress
            and other.tasks == self.tasks
            and other.documents == self.documents
            and other.training_step == self.training_step
        )


@dataclass(frozen=True, slots=True)
class Attempt:
    """One HTTP attempt upstream (a retry is another attempt): how long, and how it failed."""

    seconds: float
    error: ErrorReason | None = None
    delayed: bool = False  # it waited for the request budget (max_requests_per_minute)


@dataclass(frozen=True, slots=True)
class PollOutcome:
    """Everything one poll of one job learned: the value the store applies and the scheduler
    reads. Exactly one of `snapshot` (success) and `error` (failure) is set.

    `retry_after` is the upstream's word on when to ask again (a Retry-After header, even on a
    200, or a wait named in a throttling answer); `bug` names an exception in our own code.
    """

    source: str
    job_id: str
    at: datetime
    attempts: tuple[Attempt, ...]
    snapshot: JobSnapshot | None = None
    error: ErrorReason | None = None
    message: str = ""
    retry_after: float | None = None
    bug: str | None = None

    def __post_init__(self) -> None:
        if (self.snapshot is None) == (self.error is None):
            msg = "an outcome holds a snapshot or an error, not both or neither"
            raise ValueError(msg)

    @property
    def finished(self) -> bool:
        """The job reached a terminal state: it is polled no more."""
        return self.snapshot is not None and self.snapshot.state.terminal


@dataclass(frozen=True, slots=True)
class ListOutcome:
    """Everything one listing of a source learned (discovery): a poll of many jobs at once.

    On success `listed` holds (job_id, project, snapshot or None) for each job named, and the
    store adds the new ones and applies each snapshot as that job's poll. On failure `error` is
    set, and `covers` (the jobs this listing was to poll) are marked as failing with it.
    """

    source: str
    at: datetime
    attempts: tuple[Attempt, ...]
    listed: tuple[tuple[str, str | None, JobSnapshot | None], ...] = ()
    covers: frozenset[str] = frozenset()
    error: ErrorReason | None = None
    message: str = ""
    retry_after: float | None = None
    bug: str | None = None

    def poll_of(self, job_id: str, snapshot: JobSnapshot) -> PollOutcome:
        """The listing as the poll of one job it carried the status of (no attempts: those
        are the listing's, counted once)."""
        return PollOutcome(self.source, job_id, self.at, (), snapshot=snapshot)


@dataclass(frozen=True, slots=True)
class JobRecord:
    """What the exporter knows about one tracked job: its identity (source, job ID, and the
    project where the API has one), how it arrived, and what its polls learned."""

    provider: str
    source: str
    job_id: str
    first_seen: datetime
    project: str | None = None
    origin: str = "config"
    snapshot: JobSnapshot | None = None  # the last good values; kept when a poll fails
    up: bool = False
    last_error: ErrorReason | None = None
    last_poll_success: datetime | None = None
    last_progress_change: datetime | None = None
    finished_at: datetime | None = None  # when it finished, where known: see store._finished_at
    not_found_streak: int = 0  # polls in a row answered 404
    characters_counted: int = 0  # of its characters charged, those in its source's tally
    tokens_counted: Mapping[str, int] = field(default_factory=dict)  # the same, of its tokens

    @property
    def finished(self) -> bool:
        return self.snapshot is not None and self.snapshot.state.terminal
