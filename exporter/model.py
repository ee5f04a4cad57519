"""The one vocabulary every part speaks: canonical job states and the parsed job snapshot.

Providers turn vendor payloads into a `JobSnapshot`; the store keeps them; the collector
renders them. Nothing here knows about HTTP, config or Prometheus; the redactor masks what
upstream said before a snapshot holds it.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
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
MAX_LABEL_LENGTH = 200
"""Label values from upstream are cut to this many characters; parsers always see whole strings."""
DOCUMENT_STATES = ("succeeded", "failed", "in_progress", "not_started", "cancelled")
TOKEN_KINDS = ("input", "output", "trained")
LOSS_SPLITS = ("train", "valid")


def _frozen(mapping: Mapping[str, float] | Mapping[str, int]) -> MappingProxyType[str, float]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, slots=True)
class JobSnapshot:
    """What one successful poll learned about one job. Immutable, safe to share between threads.

    `progress` maps a phase to a ratio in 0..1 and always holds "overall": the share of the work
    that finished (succeeded or failed; cancelled work is not done). `tasks` and `documents` are
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
        if "overall" not in self.progress:
            msg = "progress must include the 'overall' phase"
            raise ValueError(msg)
        for ratio in self.progress.values():
            if not 0.0 <= ratio <= 1.0:
                msg = f"progress ratio {ratio!r} is outside 0..1"
                raise ValueError(msg)
        for counts, names in (
            (self.tasks, TASK_STATES),
            (self.documents, DOCUMENT_STATES),
            (self.tokens, TOKEN_KINDS),
        ):
            if any(v < 0 for v in counts.values()):
                msg = "counts must not be negative"
                raise ValueError(msg)
            if not names or not set(counts) <= set(names):
                msg = f"counts of {sorted(set(counts) - set(names))} are not in {names}"
                raise ValueError(msg)
        if not set(self.training_loss) <= set(LOSS_SPLITS) or not all(
            math.isfinite(v) for v in self.training_loss.values()
        ):
            msg = f"training loss must be finite, by {LOSS_SPLITS}"
            raise ValueError(msg)
        if self.training_step is not None and self.training_step < 0:
            msg = "a training step is not negative"
            raise ValueError(msg)
        object.__setattr__(
            self, "vendor_status", redactor.clip(self.vendor_status, MAX_LABEL_LENGTH)
        )
        object.__setattr__(self, "display_name", redactor.clip(self.display_name, MAX_LABEL_LENGTH))
        object.__setattr__(self, "progress", _frozen(self.progress))
        object.__setattr__(self, "tasks", _frozen(self.tasks))
        object.__setattr__(self, "documents", _frozen(self.documents))
        object.__setattr__(self, "tokens", _frozen(self.tokens))
        object.__setattr__(self, "training_loss", _frozen(self.training_loss))

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
