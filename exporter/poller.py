"""Polls the configured jobs in the background; each poll is a value the store applies.

Each source has its own scheduler thread and its own workers (`max_concurrency` of them), so a
source whose upstream hangs cannot take workers from another. When each job is polled is the
`Scheduler`'s to say (exporter/scheduler.py): it follows the store's changes to the source, so
a job registered, discovered, removed or finished is polled, or not, with nothing else to keep
in step.

`poll_job` is the whole life of one poll: it returns a `PollOutcome` and never writes anything.
`SourcePoller` hands the outcome to the store (the one place it is applied; the scheduler learns
of it from the change it made), and logs transitions only: one warning when a job starts
failing, one line when it recovers, a traceback only for a bug in our own code.

A source with `discovery` also lists its jobs: `list_jobs` walks a listing's pages and returns a
`ListOutcome`, one more kind of poll, scheduled like a job (under the key LISTING) and applied
by the store in one step.
"""

from __future__ import annotations

import queue
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
from exporter.logging import logs_debug, redactor
from exporter.model import Attempt, ErrorReason, ListOutcome, PollOutcome
from exporter.providers.base import ListQuery, ParseError
from exporter.scheduler import AUTH_BACKOFF_FACTOR, LISTING, Scheduler
from exporter.store import Added, Removed, Updated

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from exporter.config import Config
    from exporter.model import JobRecord, JobSnapshot
    from exporter.providers.base import ListRequest, Provider, SourceBase
    from exporter.store import Change, Store

log = structlog.get_logger(__name__)

STOP_GRACE = 3.0  # how long stop() waits for in-flight polls before leaving them behind
MAX_LIST_REQUESTS = 1000  # a listing that has not ended by then is read as a bad answer
TICK = 0.05  # seconds: the polls falling due within one go out together (see _run)
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


def _then_set(task: Callable[[], None], done: threading.Event) -> None:
    try:
        task()
    finally:
        done.set()


class Workers:
    """A fixed set of daemon threads: a hung upstream can delay shutdown by STOP_GRACE at most."""

    def __init__(self, size: int, name: str) -> None:
        # A task is only its callable: an Event made and set per poll, for the one caller that
        # waits (--once), cost a poll some microseconds for nothing.
        self._tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, task: Callable[[], None]) -> None:
        self._tasks.put(task)

    def submit_and_wait(self, tasks: Sequence[Callable[[], None]]) -> None:
        """Run `tasks` on the workers and return when all are done (--once)."""
        done = [threading.Event() for _ in tasks]
        for task, event in zip(tasks, done, strict=True):
            self.submit(partial(_then_set, task, event))
        for event in done:
            event.wait()

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            try:
                task()
            except Exception:  # poll_job catches everything; this is the last line of defence
                log.exception("worker task failed")

    def stop(self, grace: float) -> None:
        for _ in self._threads:
            self._tasks.put(None)
        deadline = time.monotonic() + grace
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class SourcePoller:
    """Polls one source's jobs as its `Scheduler` says, which follows the store's changes."""

    def __init__(
        self,
        config: Config,
        source: SourceBase,
        store: Store,
        clock: Callable[[], datetime] = utcnow,
        budgets: Sequence[TokenBucket] = (),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.provider = config.provider(source)
        interval = config.poll_interval(source)
        self._auth_backoff = interval * AUTH_BACKOFF_FACTOR
        self._store = store
        self._clock = clock
        self._monotonic = monotonic
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._last_auth_log = -float("inf")
        workers = config.global_.max_concurrency
        self.client = HttpClient(http_settings(config), workers, self._stop, budgets)
        self._workers = Workers(workers, f"poll-{source.name}")
        lister = self.provider.lister if source.discovery is not None else None
        self._lister = lister
        self.scheduler = Scheduler(
            interval,
            config.global_.max_retry_wait,
            clock=monotonic,
            list_every=None if lister is None else config.discovery_interval(source) or interval,
            covering=lister is not None and not self.provider.names_only,
        )
        self._unsubscribe: Callable[[], None] | None = None
        self._lookback = timedelta(seconds=source.discovery.lookback if source.discovery else 0)
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
        """Follow the store's changes to the source, from the jobs it tracks now (however they
        came; finished ones are not polled), and poll as the scheduler says."""
        self._unsubscribe = self._store.subscribe(self.source.name, self._follow)
        self._thread.start()
        self.started = True

    def _follow(self, changes: Sequence[Change]) -> None:
        if self.scheduler.follow(changes):
            self._wake.set()

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
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._wake.set()

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop scheduling and give in-flight polls `grace` seconds to end."""
        self.signal_stop()
        if self._thread.is_alive():
            self._thread.join(grace)
        self._workers.stop(grace)
        self.client.close()

    def next_wait(self, outcome: PollOutcome | ListOutcome, every: float | None = None) -> float:
        """The scheduler's wait before the next poll after `outcome`: see Scheduler.next_wait."""
        return self.scheduler.next_wait(outcome, every)

    def poll_all_once(self) -> None:
        """List the jobs (with discovery), then poll every job the store tracks once whose
        status the listing did not carry, concurrently; return when all are done (for
        --once)."""
        listing = self.list_now() if self._lister is not None else None
        polled = set() if listing is None else {job for job, _, snap in listing.listed if snap}
        jobs = [r for r in self._store.jobs_of(self.source.name) if r.job_id not in polled]
        self._workers.submit_and_wait([partial(self._poll, r.job_id, r.project) for r in jobs])

    def _should_log_auth(self) -> bool:
        """Auth failures are logged once per backoff interval for the whole source."""
        with self._lock:
            now = self._monotonic()
            if now - self._last_auth_log < self._auth_backoff:
                return False
            self._last_auth_log = now
            return True

    def _poll(self, job_id: str, project: str | None) -> None:
        """Poll one job and hand the outcome to the store (nothing if shutting down)."""
        try:
            outcome = poll_job(
                self.client, self.provider, self.source, job_id, self._clock, project
            )
        except Stopped:
            return
        for change in self._store.update(outcome):
            if isinstance(change, Updated):
                self._log_transition(change.before, outcome)
            elif isinstance(change, Removed):  # expired: the API answers 404, again and again
                log.info("job expired; no longer tracked", source=self.source.name, job_id=job_id)

    def list_now(self) -> ListOutcome | None:
        """List the source's jobs now and hand the listing to the store (the scheduler's,
        --once's and the benchmark's way in); None if shutting down."""
        assert self._lister is not None
        now = self._clock()
        since = now - self._lookback
        any_state_since = since
        if self._listed_since is not None:
            any_state_since = max(since, self._listed_since - SETTLE_MARGIN)
        asks = self._lister(self.source, ListQuery(since, any_state_since))
        covers = self.scheduler.covers()
        try:
            outcome = list_jobs(self.client, asks, self.source, covers, self._clock)
        except Stopped:
            return None
        changes = self._store.update(outcome)
        self._log_listing(outcome, sum(isinstance(change, Added) for change in changes))
        if outcome.error is None:
            self._listed_since = now
        return outcome

    def _log_listing(self, outcome: ListOutcome, added: int) -> None:
        bound = log.bind(source=self.source.name, provider=self.provider.name)
        if outcome.error is None:
            if self._list_error is not None:
                bound.info("listing recovered", after=self._list_error.value)
            if added:
                bound.info("jobs discovered", jobs=added)
        elif self._list_error is None:
            if outcome.bug is not None:
                bound.error("bug in the exporter", error=outcome.message, exception=outcome.bug)
            else:
                bound.warning("listing failing", reason=outcome.error.value, error=outcome.message)
        self._list_error = outcome.error

    def _log_transition(self, before: JobRecord, outcome: PollOutcome) -> None:
        if outcome.error is None and before.last_error is None and not logs_debug():
            return  # the usual poll: nothing to say (binding a logger for it cost 2% a poll)
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
        """Hand out what is due, then sleep until the next is due, but for at least a TICK
        unless woken (a job added, a webhook, a poll that must follow at once): with jobs'
        due times spread by jitter, waking for each one cost a thread switch per poll, for
        polls whose interval is seconds at least."""
        while not self._stop.is_set():
            try:
                soonest = self._schedule()
            except Exception:  # a scheduling bug must not end polling for the source
                log.exception("scheduler failed", source=self.source.name)
                soonest = self._monotonic() + self.scheduler.interval
            now = self._monotonic()
            self._wake.wait(None if soonest is None else max(TICK, soonest - now))
            self._wake.clear()

    def _schedule(self) -> float | None:
        """Hand every due job (and the listing) to a worker; return when the next one is due
        (None: none left)."""
        due, soonest = self.scheduler.take_due()
        for key, project in due:
            task = self._list if key == LISTING else partial(self._poll, key, project)
            self._workers.submit(partial(self._run_and_return, key, task))
        return soonest

    def _list(self) -> None:
        self.list_now()

    def _run_and_return(self, key: str, task: Callable[[], None]) -> None:
        """Run one poll or listing the scheduler handed out, and tell it that it returned."""
        try:
            task()
        finally:
            if self.scheduler.returned(key):
                self._wake.set()
