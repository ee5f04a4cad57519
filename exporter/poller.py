"""Polls the configured jobs in the background; each poll is a value the store applies.

Each source has its own scheduler thread and its own workers (`max_concurrency` of them), so a
source whose upstream hangs cannot take workers from another. Within a source every job has its
own due time: a slow job delays nobody. Intervals get +-10% jitter so jobs added together do not
poll in lockstep. A job that reaches a terminal state is not polled again. After an auth failure
a job waits AUTH_BACKOFF_FACTOR intervals: a revoked key must not turn into a request storm. A
wait the upstream names (Retry-After, even on a 200) sets the earliest next poll of that job.

`poll_job` is the whole life of one poll: it returns a `PollOutcome` and never writes anything.
`SourcePoller` hands the outcome to the store (the one place it is applied), decides the next
poll from it, and logs transitions only: one warning when a job starts failing, one line when it
recovers, a traceback only for a bug in our own code.

A source with `discovery` also lists its jobs: `list_jobs` walks a listing's pages and returns a
`ListOutcome`, one more kind of poll, scheduled like a job (under the key LISTING) and applied
by the store in one step. A job whose status a listing carried is polled by that listing, not
alone; a job that drops off the listing while unfinished is polled alone once, which tells its
final state (or that it is gone). Until the first listing, the jobs a listing will poll wait
for it instead of being polled one by one.
"""

from __future__ import annotations

import heapq
import queue
import random
import threading
import time
import traceback
from collections import deque
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from exporter.http import FetchError, HttpClient, HttpSettings, Stopped, TokenBucket
from exporter.logging import redactor
from exporter.model import Attempt, ErrorReason, ListOutcome, PollOutcome
from exporter.providers.base import ListQuery, ParseError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from exporter.config import Config
    from exporter.model import JobSnapshot
    from exporter.providers.base import ListRequest, Provider, SourceBase
    from exporter.store import JobRecord, ListingApplied, Store

log = structlog.get_logger(__name__)

JITTER = 0.1
AUTH_BACKOFF_FACTOR = 10
STOP_GRACE = 3.0  # how long stop() waits for in-flight polls before leaving them behind
LISTING = ""  # the scheduler's key for the source's listing (no job ID is empty)
MAX_LIST_REQUESTS = 1000  # a listing that has not ended by then is read as a bad answer
SETTLE_MARGIN = timedelta(minutes=5)  # clock skew and slow creation, between two listings
OutcomeT = TypeVar("OutcomeT", PollOutcome, ListOutcome)


def utcnow() -> datetime:
    return datetime.now(UTC)


def http_settings(config: Config) -> HttpSettings:
    g = config.global_
    return HttpSettings(
        timeout=g.timeout,
        retries=g.retries,
        max_retry_wait=g.max_retry_wait,
        max_response_bytes=g.max_response_bytes,
        backoff_base=min(0.5, g.max_retry_wait),
    )


def poll_job(
    client: HttpClient,
    provider: Provider[Any],
    source: SourceBase,
    job_id: str,
    clock: Callable[[], datetime] = utcnow,
    project: str | None = None,
) -> PollOutcome:
    """Fetch and parse one job's status (and the provider's follow-up, if it asks one), every
    secret masked in what upstream said. Never raises but for shutdown (`Stopped`)."""
    attempts: list[Attempt] = []
    retry_after: float | None = None
    try:
        fetched = client.fetch_json(provider.request(source, job_id, project), attempts)
        retry_after = fetched.retry_after
        snapshot = provider.parse(fetched.payload, clock())
        then = provider.follow_up and provider.follow_up(source, job_id, project, snapshot)
        if then:
            more = client.fetch_json(then.request, attempts)
            retry_after = max(retry_after or 0.0, more.retry_after or 0.0) or None
            snapshot = then.read(more.payload, snapshot, clock())
    except (FetchError, ParseError) as exc:
        return masked(PollOutcome(
            source.name, job_id, clock(), tuple(attempts), error=exc.reason, message=str(exc),
            retry_after=exc.retry_after if exc.retry_after is not None else retry_after,
        ))  # fmt: skip
    except Stopped:
        raise
    except Exception as exc:  # a bug must cost one poll, not the poller thread
        return masked(PollOutcome(
            source.name, job_id, clock(), tuple(attempts), error=ErrorReason.BAD_RESPONSE,
            message=f"unexpected {type(exc).__name__}", bug=traceback.format_exc(),
        ))  # fmt: skip
    return PollOutcome(  # its snapshot masked itself
        source.name, job_id, clock(), tuple(attempts), snapshot=snapshot, retry_after=retry_after
    )


Found = dict[str, tuple[str, str | None, "JobSnapshot | None"]]


def _walk(
    client: HttpClient,
    asks: Sequence[ListRequest],
    attempts: list[Attempt],
    clock: Callable[[], datetime],
) -> tuple[Found, float | None]:
    """Every page of a listing and every request that follows: (jobs by ID, the last
    Retry-After sent). Raises FetchError or ParseError for the first that fails."""
    found: Found = {}
    retry_after: float | None = None
    pending, asked = deque(asks), set[str]()
    while pending:
        ask = pending.popleft()
        if ask.request.url in asked:  # a link back to a page already read
            continue
        if len(asked) >= MAX_LIST_REQUESTS:
            raise ParseError(f"the listing did not end after {MAX_LIST_REQUESTS} requests")
        asked.add(ask.request.url)
        fetched = client.fetch_json(ask.request, attempts)
        retry_after = fetched.retry_after if fetched.retry_after is not None else retry_after
        page = ask.read(fetched.payload, clock())
        found.update((job.job_id, (job.job_id, job.project, job.snapshot)) for job in page.listed)
        pending.extend(page.follow)
    return found, retry_after


def list_jobs(
    client: HttpClient,
    asks: Sequence[ListRequest],
    source: SourceBase,
    covers: frozenset[str],
    clock: Callable[[], datetime] = utcnow,
) -> ListOutcome:
    """Walk one listing and return what it found, every secret masked in what upstream said;
    a listing fails whole (no partial listing is applied). Never raises but for `Stopped`."""
    attempts: list[Attempt] = []
    try:
        found, retry_after = _walk(client, asks, attempts, clock)
    except (FetchError, ParseError) as exc:
        outcome = ListOutcome(
            source.name, clock(), tuple(attempts), covers=covers, error=exc.reason,
            message=str(exc), retry_after=exc.retry_after,
        )  # fmt: skip
    except Stopped:
        raise
    except Exception as exc:  # a bug must cost one listing, not the poller thread
        outcome = ListOutcome(
            source.name, clock(), tuple(attempts), covers=covers, error=ErrorReason.BAD_RESPONSE,
            message=f"unexpected {type(exc).__name__}", bug=traceback.format_exc(),
        )  # fmt: skip
    else:
        outcome = ListOutcome(
            source.name, clock(), tuple(attempts), tuple(found.values()), covers,
            retry_after=retry_after,
        )  # fmt: skip
    return masked(outcome)


def masked(outcome: OutcomeT) -> OutcomeT:
    """The outcome with every secret masked in what upstream said and it does not mask itself
    (a snapshot's strings are masked when it is made): error messages, tracebacks, and the IDs
    and projects a listing named. This is the edge: the store, labels, pages, the jobs API and
    SQLite only ever see what leaves here."""
    mask = redactor.mask
    bug = None if outcome.bug is None else mask(outcome.bug)
    if isinstance(outcome, PollOutcome):
        return replace(outcome, message=mask(outcome.message), bug=bug)
    listed = tuple(
        (mask(job_id), None if project is None else mask(project), snapshot)
        for job_id, project, snapshot in outcome.listed
    )
    return replace(outcome, message=mask(outcome.message), bug=bug, listed=listed)


class Workers:
    """A fixed set of daemon threads: a hung upstream can delay shutdown by STOP_GRACE at most."""

    def __init__(self, size: int, name: str) -> None:
        self._tasks: queue.SimpleQueue[tuple[Callable[[], None], threading.Event] | None] = (
            queue.SimpleQueue()
        )
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, task: Callable[[], None]) -> threading.Event:
        done = threading.Event()
        self._tasks.put((task, done))
        return done

    def _work(self) -> None:
        while (item := self._tasks.get()) is not None:
            task, done = item
            try:
                task()
            except Exception:  # poll_job catches everything; this is the last line of defence
                log.exception("worker task failed")
            finally:
                done.set()

    def stop(self, grace: float) -> None:
        for _ in self._threads:
            self._tasks.put(None)
        deadline = time.monotonic() + grace
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class SourcePoller:
    """Schedules the polls of one source's jobs."""

    def __init__(
        self,
        config: Config,
        source: SourceBase,
        store: Store,
        clock: Callable[[], datetime] = utcnow,
        budgets: Sequence[TokenBucket] = (),
    ) -> None:
        self.source = source
        self.provider = config.provider(source)
        self._interval = config.poll_interval(source)
        self._auth_backoff = self._interval * AUTH_BACKOFF_FACTOR
        self._max_retry_wait = config.global_.max_retry_wait
        self._store = store
        self._clock = clock
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._last_auth_log = -float("inf")
        workers = config.global_.max_concurrency
        self.client = HttpClient(http_settings(config), workers, self._stop, budgets)
        self._workers = Workers(workers, f"poll-{source.name}")
        self._due: dict[str, float] = {}  # when each scheduled job is due (time.monotonic())
        self._heap: list[tuple[float, str]] = []  # the same, soonest first; stale entries skipped
        self._in_flight: set[str] = set()  # handed to a worker; rescheduled when its poll ends
        self._again: set[str] = set()  # in flight, and asked for again: poll once it returns
        self._projects: dict[str, str | None] = {}  # the project each job's requests go to
        lister = self.provider.lister if source.discovery is not None else None
        self._lister = lister
        self._list_every = config.discovery_interval(source) or self._interval
        self._lookback = timedelta(seconds=source.discovery.lookback if source.discovery else 0)
        self._covered: set[str] = set()  # unfinished jobs the listing polls: not polled alone
        self._listed_since: datetime | None = None  # when the last good listing began
        self._list_error: ErrorReason | None = None
        self._thread = self._new_thread()
        self.started = False

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=self._run, name=f"scheduler-{self.source.name}", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        """Poll every job the store tracks for this source, however it came, but finished
        ones (kept across a reload or a restart). The first polls are spread over a tenth of
        the interval (at most 1 s) instead of a burst."""
        now = time.monotonic()
        spread = min(self._interval * JITTER, 1.0)
        covering = self._lister is not None and not self.provider.names_only
        with self._lock:
            for record in self._store.jobs_of(self.source.name):
                if record.finished:
                    continue
                self._projects[record.job_id] = record.project
                if covering:  # the first listing polls it, or says it must be polled alone
                    self._covered.add(record.job_id)
                else:
                    self._set_due(record.job_id, now + random.uniform(0, spread))  # noqa: S311
            if self._lister is not None:
                self._set_due(LISTING, now)
        self._thread.start()
        self.started = True

    def _set_due(self, job_id: str, at: float) -> None:
        """Schedule a job's next poll; the caller holds the lock. A heap keeps the wake-up
        O(log n): no scan of every job. Entries left stale by a reschedule are skipped when they
        surface, and dropped all at once if they come to outnumber the live ones."""
        self._due[job_id] = at
        heapq.heappush(self._heap, (at, job_id))
        if len(self._heap) > 2 * len(self._due) + 1024:
            self._heap = [(when, job) for job, when in self._due.items()]
            heapq.heapify(self._heap)

    def schedule_now(self, job_id: str, project: str | None) -> None:
        """Poll this job right away (new to the store, or a webhook says it moved), not one
        interval later. If its poll is in flight, the next one follows as soon as it returns:
        never two at once, or an older answer could be applied after a newer one."""
        with self._lock:
            self._projects[job_id] = project
            if job_id in self._in_flight:
                self._again.add(job_id)
            else:
                self._set_due(job_id, time.monotonic())
        self._wake.set()

    def forget(self, job_id: str) -> None:
        """A job no longer tracked: no further polls (one in flight is not rescheduled)."""
        with self._lock:
            self._due.pop(job_id, None)
            self._again.discard(job_id)
            self._projects.pop(job_id, None)

    def restart_if_dead(self) -> bool:
        """Start a new scheduler thread if the old one died; True if it had to."""
        if not self.started or self._stop.is_set() or self._thread.is_alive():
            return False
        self._thread = self._new_thread()
        self._thread.start()
        return True

    def signal_stop(self) -> None:
        """Stop scheduling and cut backoffs short, without waiting for anything."""
        self._stop.set()
        self._wake.set()

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop scheduling and give in-flight polls `grace` seconds to end."""
        self.signal_stop()
        if self._thread.is_alive():
            self._thread.join(grace)
        self._workers.stop(grace)
        self.client.close()

    def poll_all_once(self) -> None:
        """List the jobs (with discovery), then poll every job once whose status the listing
        did not carry, concurrently; return when all are done (for --once)."""
        listing = self.list_now() if self._lister is not None else None
        polled = set() if listing is None else {job for job, _, snap in listing.listed if snap}
        jobs = [r for r in self._store.jobs_of(self.source.name) if r.job_id not in polled]
        with self._lock:
            self._projects.update((record.job_id, record.project) for record in jobs)
        polls = [self._workers.submit(partial(self._poll_once, r.job_id)) for r in jobs]
        for done in polls:
            done.wait()

    def _poll_once(self, job_id: str) -> None:
        self._poll(job_id)

    def _should_log_auth(self) -> bool:
        """Auth failures are logged once per backoff interval for the whole source."""
        with self._lock:
            now = time.monotonic()
            if now - self._last_auth_log < self._auth_backoff:
                return False
            self._last_auth_log = now
            return True

    def _poll(self, job_id: str) -> PollOutcome | None:
        """Poll one job and apply the outcome; None if shutting down or the job is gone
        (removed meanwhile, or expired with this poll)."""
        try:
            with self._lock:
                project = self._projects.get(job_id)
            outcome = poll_job(
                self.client, self.provider, self.source, job_id, self._clock, project
            )
        except Stopped:
            return None
        applied = self._store.apply(outcome)
        if applied is None:  # removed while the poll was in flight
            return None
        before, after = applied
        if after is None:  # expired: the API answers 404 for it, again and again
            log.info("job expired; no longer tracked", source=self.source.name, job_id=job_id)
            return None
        self._log_transition(before, outcome)
        return outcome

    def list_now(self) -> ListOutcome | None:
        """List the source's jobs now and apply the listing (the scheduler's, --once's and the
        benchmark's way in); None if shutting down."""
        assert self._lister is not None
        now = self._clock()
        since = now - self._lookback
        any_state_since = since
        if self._listed_since is not None:
            any_state_since = max(since, self._listed_since - SETTLE_MARGIN)
        asks = self._lister(self.source, ListQuery(since, any_state_since))
        with self._lock:
            covers = frozenset(self._covered)
        try:
            outcome = list_jobs(self.client, asks, self.source, covers, self._clock)
        except Stopped:
            return None
        applied = self._store.apply_listing(outcome)
        self._log_listing(outcome, applied)
        if outcome.error is None:
            self._listed_since = now
            self._take_cover(applied)
        return outcome

    def _take_cover(self, applied: ListingApplied) -> None:
        """After a good listing: the jobs it polled are polled no more alone; those that
        dropped off it unfinished, and new ones it named without a status, are polled now."""
        with self._lock:
            dropped = (self._covered - applied.covered) & applied.unfinished.keys()
            for job_id in applied.covered:
                self._projects[job_id] = applied.unfinished[job_id]
                if job_id not in self._in_flight:
                    self._due.pop(job_id, None)
            self._covered = set(applied.covered)
        named = {r.job_id for r in applied.added} & applied.unfinished.keys()
        for job_id in dropped | (named - applied.covered):
            self.schedule_now(job_id, applied.unfinished[job_id])

    def _log_listing(self, outcome: ListOutcome, applied: ListingApplied) -> None:
        bound = log.bind(source=self.source.name, provider=self.provider.name)
        if outcome.error is None:
            if self._list_error is not None:
                bound.info("listing recovered", after=self._list_error.value)
            if applied.added:
                bound.info("jobs discovered", jobs=len(applied.added))
        elif self._list_error is None:
            if outcome.bug is not None:
                bound.error("bug in the exporter", error=outcome.message, exception=outcome.bug)
            else:
                bound.warning("listing failing", reason=outcome.error.value, error=outcome.message)
        self._list_error = outcome.error

    def _log_transition(self, before: JobRecord, outcome: PollOutcome) -> None:
        bound = log.bind(source=self.source.name, job_id=outcome.job_id, provider=before.provider)
        if outcome.error is None:
            if before.last_error is not None:
                bound.info("poll recovered", after=before.last_error.value)
            else:
                bound.debug("polled", state=outcome.snapshot and outcome.snapshot.state.value)
            return
        if before.last_error is not None:  # already failing: said when it started
            bound.debug("poll failed", reason=outcome.error.value, error=outcome.message)
            return
        if outcome.bug is not None:
            bound.error("bug in the exporter", error=outcome.message, exception=outcome.bug)
        elif outcome.error is not ErrorReason.AUTH or self._should_log_auth():
            bound.warning("poll failing", reason=outcome.error.value, error=outcome.message)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                soonest = self._schedule()
            except Exception:  # a scheduling bug must not end polling for the source
                log.exception("scheduler failed", source=self.source.name)
                soonest = time.monotonic() + self._interval
            now = time.monotonic()
            self._wake.wait(None if soonest is None else max(0.0, soonest - now))
            self._wake.clear()

    def _schedule(self) -> float | None:
        """Hand every due job to a worker; return when the next one is due (None: none left)."""
        now, due = time.monotonic(), []
        with self._lock:
            heap = self._heap
            while heap and (heap[0][0] <= now or self._due.get(heap[0][1]) != heap[0][0]):
                at, job = heapq.heappop(heap)
                if self._due.get(job) != at:
                    continue  # stale: rescheduled since, or no longer scheduled
                del self._due[job]  # in flight: rescheduled when its poll ends
                self._in_flight.add(job)
                due.append(job)
            soonest = heap[0][0] if heap else None
        for job in due:
            task = (
                self._list_and_reschedule
                if job == LISTING
                else partial(self._poll_and_reschedule, job)
            )
            self._workers.submit(task)
        return soonest

    def next_wait(self, outcome: PollOutcome | ListOutcome, every: float | None = None) -> float:
        """The interval (`every`, else the poll interval; auth backoff after an auth failure),
        or longer if the upstream asked for it; a server's wait is capped by max_retry_wait, as
        its retries are."""
        interval = self._interval if every is None else every
        base = interval * AUTH_BACKOFF_FACTOR if outcome.error is ErrorReason.AUTH else interval
        wait = base * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311
        asked = min(outcome.retry_after or 0.0, self._max_retry_wait)
        return max(wait, asked)

    def _list_and_reschedule(self) -> None:
        wait: float | None = self._list_every  # if the listing itself raised (a bug)
        try:
            outcome = self.list_now()
            wait = None if outcome is None else self.next_wait(outcome, self._list_every)
        finally:
            with self._lock:
                self._in_flight.discard(LISTING)
                if wait is not None and not self._stop.is_set():
                    self._set_due(LISTING, time.monotonic() + wait)
            self._wake.set()

    def _poll_and_reschedule(self, job_id: str) -> None:
        wait: float | None = self._interval  # if the poll itself raised (a bug): try again later
        try:
            outcome = self._poll(job_id)
            # None: shutting down or no longer tracked; a finished job is polled no more.
            wait = None if outcome is None or outcome.finished else self.next_wait(outcome)
        finally:
            with self._lock:
                self._in_flight.discard(job_id)
                if job_id in self._again:
                    self._again.discard(job_id)
                    wait = None if wait is None else 0.0
                if wait is None:
                    self._projects.pop(job_id, None)  # finished, expired or gone: no more polls
                elif not self._stop.is_set():
                    self._set_due(job_id, time.monotonic() + wait)
            self._wake.set()
