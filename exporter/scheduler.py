"""When each job of one source is polled next, and when its listing is: due times in a heap.

The scheduler follows the store's changes to the source (`Store.subscribe`) and decides every
poll from them and the outcomes they carry; it never reads the store, nor the clock but the one
it is given, so it can be tested with a fake one.

- A job is first polled at once when it arrives (registered, discovered, configured on a
  reload), and at start-up within a tenth of the interval (at most 1 s): a spread, not a burst.
- After a poll, the next one comes an interval later with +-10% jitter, so jobs added together
  do not poll in lockstep; after an auth failure, AUTH_BACKOFF_FACTOR intervals later (a revoked
  key must not turn into a request storm). A wait the upstream names (Retry-After, even on a
  200) sets the earliest next poll, capped by max_retry_wait as retries are.
- A job that reaches a terminal state, or is removed, is not polled again. A webhook call about
  a job polls it at once. Never two polls of one job at once: asked for while its poll is in
  flight, the next one follows as soon as it returns (an older answer must not be applied after
  a newer one).
- With a listing (discovery), the listing is one more key, LISTING, due every `list_every`.
  Where a listing carries statuses (`covering`), a job whose status it carried is polled by it,
  not alone; a job that drops off it unfinished is polled alone (which tells its final state, or
  that it is gone). Until the first listing, the jobs it will poll wait for it.

Each key handed out by `take_due` is in flight until `returned`: its next due time is decided
by the change its outcome made (or, if no change came, because the poll died of a bug, an
interval later).
"""

from __future__ import annotations

import heapq
import random
import threading
from typing import TYPE_CHECKING

from exporter.model import ErrorReason, ListOutcome, PollOutcome
from exporter.store import Added, Listed, Removed, Tracked, Updated, WebhookOutcome

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from exporter.store import Change, JobRecord

JITTER = 0.1
AUTH_BACKOFF_FACTOR = 10
MAX_SPREAD = 1.0  # seconds: the start-up polls are spread over at most this
LISTING = ""  # the scheduler's key for the source's listing (no job ID is empty)


class Scheduler:
    """The due times of one source's jobs and listing. Thread-safe: the store tells it changes
    from the writers' threads, the poller takes what is due from its own."""

    def __init__(
        self,
        interval: float,
        max_retry_wait: float,
        *,
        clock: Callable[[], float],
        rng: random.Random | None = None,
        list_every: float | None = None,
        covering: bool = False,
    ) -> None:
        """`clock` is monotonic seconds; `rng` gives the jitter; `list_every` is the listing's
        interval (None: no listing); `covering`: the listing carries the jobs' statuses."""
        self.interval = interval
        self._max_retry_wait = max_retry_wait
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311  # jitter, not a secret
        self._list_every = list_every
        self._covering = covering and list_every is not None
        self._lock = threading.Lock()
        self._projects: dict[str, str | None] = {}  # every unfinished job, with its project
        self._due: dict[str, float] = {}  # when each scheduled key is due (the clock's time)
        self._heap: list[tuple[float, str]] = []  # the same, soonest first; stale entries skipped
        self._in_flight: set[str] = set()  # handed out by take_due, not yet returned
        self._settled: dict[str, float] = {}  # in flight, its outcome in: when it is due next
        self._again: set[str] = set()  # in flight, and asked for again: due once it returns
        self._covered: set[str] = set()  # unfinished jobs the listing polls: not polled alone
        # When the poller's thread means to look again (take_due's answer; None: never), and
        # whether a key fell due before that since: only then is it worth waking.
        self._planned: float | None = None
        self._sooner = False

    # -- what the store says --------------------------------------------------------------------

    def follow(self, changes: Sequence[Change]) -> bool:
        """Take in one write's changes to the source (a `Store.subscribe` follower). Whether a
        key now falls due before the poller meant to look again (then it must be woken)."""
        with self._lock:
            now = self._clock()
            for change in changes:
                match change:
                    case Updated():
                        self._updated(change, now)
                    case Added(record=record) if not record.finished:
                        self._projects[record.job_id] = record.project
                        self._poke(record.job_id, now)
                    case Removed(record=record):
                        self._drop(record.job_id)
                    case Listed(outcome=outcome):
                        self._listed(outcome, now)
                    case Tracked(records=records):
                        self._start(records, now)
            return self._woken()

    def _start(self, records: Sequence[JobRecord], now: float) -> None:
        """The jobs tracked when the scheduler began following the source: every unfinished
        one is polled, however it came; the first polls are spread instead of a burst."""
        spread = min(self.interval * JITTER, MAX_SPREAD)
        for record in records:
            if record.finished:
                continue
            self._projects[record.job_id] = record.project
            if self._covering:  # the first listing polls it, or says it must be polled alone
                self._covered.add(record.job_id)
            else:
                self._set_due(record.job_id, now + self._rng.uniform(0, spread))
        if self._list_every is not None:
            self._set_due(LISTING, now)

    def _updated(self, change: Updated, now: float) -> None:
        job_id = change.record.job_id
        if job_id not in self._projects:
            return  # finished or removed before
        if change.record.finished:
            self._drop(job_id)
        elif isinstance(change.outcome, WebhookOutcome):
            self._poke(job_id, now)
        elif isinstance(change.outcome, PollOutcome) and job_id in self._in_flight:
            self._settled[job_id] = now + self.next_wait(change.outcome)

    def _listed(self, outcome: ListOutcome, now: float) -> None:
        """A listing was applied: when the next one is due (if it was this scheduler's), and,
        if it was good, which jobs it polls from now on."""
        if LISTING in self._in_flight and self._list_every is not None:
            self._settled[LISTING] = now + self.next_wait(outcome, self._list_every)
        if outcome.error is not None or not self._covering:
            return
        covered = {
            job_id
            for job_id, _, snapshot in outcome.listed
            if snapshot is not None and job_id in self._projects
        }
        for job_id in self._covered - covered:  # dropped off it unfinished: polled alone
            self._poke(job_id, now)
        for job_id in covered:
            if job_id not in self._in_flight:
                self._due.pop(job_id, None)
        self._covered = covered

    def _poke(self, job_id: str, now: float) -> None:
        """Poll a job at once, or as soon as its poll in flight returns."""
        if job_id in self._in_flight:
            self._again.add(job_id)
        else:
            self._set_due(job_id, now)

    def _drop(self, job_id: str) -> None:
        """A job finished or gone: no more polls (one in flight is not rescheduled)."""
        self._projects.pop(job_id, None)
        self._due.pop(job_id, None)
        self._again.discard(job_id)
        self._covered.discard(job_id)

    def _set_due(self, key: str, at: float) -> None:
        """A heap keeps the wake-up O(log n): no scan of every job. Entries left stale by a
        reschedule are skipped when they surface, and dropped all at once if they come to
        outnumber the live ones. The caller holds the lock."""
        self._due[key] = at
        self._sooner = self._sooner or self._planned is None or at < self._planned
        heapq.heappush(self._heap, (at, key))
        if len(self._heap) > 2 * len(self._due) + 1024:
            self._heap = [(when, key) for key, when in self._due.items()]
            heapq.heapify(self._heap)

    # -- what the poller asks -------------------------------------------------------------------

    def take_due(self) -> tuple[list[tuple[str, str | None]], float | None]:
        """Every key due now, with its job's project, each in flight until `returned`; and when
        the next one is due (None: nothing is scheduled)."""
        due: list[tuple[str, str | None]] = []
        with self._lock:
            now, heap = self._clock(), self._heap
            while heap and (heap[0][0] <= now or self._due.get(heap[0][1]) != heap[0][0]):
                at, key = heapq.heappop(heap)
                if self._due.get(key) != at:
                    continue  # stale: rescheduled since, or no longer scheduled
                del self._due[key]
                self._in_flight.add(key)
                due.append((key, self._projects.get(key)))
            self._planned, self._sooner = (heap[0][0] if heap else None), False
            return due, self._planned

    def returned(self, key: str) -> bool:
        """A key handed out by `take_due` is done (its outcome applied, or not): schedule it
        again as its outcome said, or an interval later if none came (a bug). Whether it now
        falls due before the poller meant to look again."""
        with self._lock:
            now = self._clock()
            self._in_flight.discard(key)
            settled = self._settled.pop(key, None)
            if key == LISTING:
                assert self._list_every is not None  # only handed out with a listing
                self._set_due(LISTING, now + self._list_every if settled is None else settled)
            elif key not in self._projects:
                pass  # finished or removed meanwhile
            elif key in self._again:
                self._again.discard(key)
                self._set_due(key, now)
            elif key not in self._covered:  # else the listing polls it
                self._set_due(key, now + self.interval if settled is None else settled)
            return self._woken()

    def _woken(self) -> bool:
        """Whether a key fell due before the poller meant to look again, since it last asked
        or was last told (then it will look at once); the caller holds the lock."""
        sooner, self._sooner = self._sooner, False
        return sooner

    def covers(self) -> frozenset[str]:
        """The unfinished jobs the listing polls (marked failing if it fails)."""
        with self._lock:
            return frozenset(self._covered)

    def due_at(self, key: str) -> float | None:
        """When a key is due next; None when it is not scheduled (in flight, finished, gone,
        or covered by the listing)."""
        with self._lock:
            return self._due.get(key)

    def next_wait(self, outcome: PollOutcome | ListOutcome, every: float | None = None) -> float:
        """The interval (`every`, else the poll interval; auth backoff after an auth failure)
        with jitter, or longer if the upstream asked for it; a server's wait is capped by
        max_retry_wait, as its retries are."""
        interval = self.interval if every is None else every
        base = interval * AUTH_BACKOFF_FACTOR if outcome.error is ErrorReason.AUTH else interval
        wait = base * self._rng.uniform(1 - JITTER, 1 + JITTER)
        asked = min(outcome.retry_after or 0.0, self._max_retry_wait)
        return max(wait, asked)
