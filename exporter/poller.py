"""Polls the configured jobs in the background; each poll is a value the store applies.

Each source has its own thread running an event loop, and at most `max_concurrency` polls in
flight on it, so a source whose upstream hangs cannot hold up another; a poll that waits for its
answer costs no thread (blocking workers spent as much CPU handing the GIL to one another as on
the polls, `make bench`'s CPU per poll). When each job is polled is the
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

import asyncio
import concurrent.futures
import threading
import time
import traceback
from collections import deque
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from exporter.http import FetchError, HttpClient, HttpSettings, TokenBucket
from exporter.logging import logs_debug, redactor
from exporter.model import Attempt, ErrorReason, ListOutcome, PollOutcome
from exporter.providers.base import ListQuery, ParseError
from exporter.scheduler import AUTH_BACKOFF_FACTOR, LISTING, Scheduler
from exporter.store import Added, Removed, Updated

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Sequence

    from exporter.config import Config
    from exporter.model import JobRecord, JobSnapshot
    from exporter.providers.base import ListRequest, Provider, SourceBase
    from exporter.store import Change, Store

log = structlog.get_logger(__name__)

STOP_GRACE = 3.0  # how long stop() waits for the loop to wind down before leaving it behind
MAX_LIST_REQUESTS = 1000  # a listing that has not ended by then is read as a bad answer
SETTLE_MARGIN = timedelta(minutes=5)  # clock skew and slow creation, between two listings
OutcomeT = TypeVar("OutcomeT", PollOutcome, ListOutcome)
T = TypeVar("T")
# Seconds: the polls falling due within one go out together. Due times are spread by jitter;
# waking for each cost the loop a pass (an epoll_wait, a timer) per poll: CPU per poll 0.45-0.47
# ms against 0.32 with a TICK of 50 ms (`make bench`'s figure), for polls at most 50 ms late.
TICK = 0.05


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


async def poll_job(
    client: HttpClient,
    provider: Provider[Any],
    source: SourceBase,
    job_id: str,
    clock: Callable[[], datetime] = utcnow,
    project: str | None = None,
) -> PollOutcome:
    """Fetch and parse one job's status (and the provider's follow-up, if it asks one), every
    secret masked in what upstream said. Never raises (shutdown cancels it)."""
    attempts: list[Attempt] = []
    retry_after: float | None = None
    try:
        fetched = await client.fetch_json(provider.request(source, job_id, project), attempts)
        retry_after = fetched.retry_after
        snapshot = provider.parse(fetched.payload, clock())
        then = provider.follow_up and provider.follow_up(source, job_id, project, snapshot)
        if then:
            more = await client.fetch_json(then.request, attempts)
            retry_after = max(retry_after or 0.0, more.retry_after or 0.0) or None
            snapshot = then.read(more.payload, snapshot, clock())
    except (FetchError, ParseError) as exc:
        return masked(PollOutcome(
            source.name, job_id, clock(), tuple(attempts), error=exc.reason, message=str(exc),
            retry_after=exc.retry_after if exc.retry_after is not None else retry_after,
        ))  # fmt: skip
    except Exception as exc:  # a bug must cost one poll, not the poller
        return masked(PollOutcome(
            source.name, job_id, clock(), tuple(attempts), error=ErrorReason.BAD_RESPONSE,
            message=f"unexpected {type(exc).__name__}", bug=traceback.format_exc(),
        ))  # fmt: skip
    return PollOutcome(  # its snapshot masked itself
        source.name, job_id, clock(), tuple(attempts), snapshot=snapshot, retry_after=retry_after
    )


Found = dict[str, tuple[str, str | None, "JobSnapshot | None"]]


async def _walk(
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
        fetched = await client.fetch_json(ask.request, attempts)
        retry_after = fetched.retry_after if fetched.retry_after is not None else retry_after
        page = ask.read(fetched.payload, clock())
        found.update((job.job_id, (job.job_id, job.project, job.snapshot)) for job in page.listed)
        pending.extend(page.follow)
    return found, retry_after


async def list_jobs(
    client: HttpClient,
    asks: Sequence[ListRequest],
    source: SourceBase,
    covers: frozenset[str],
    clock: Callable[[], datetime] = utcnow,
) -> ListOutcome:
    """Walk one listing and return what it found, every secret masked in what upstream said;
    a listing fails whole (no partial listing is applied). Never raises (shutdown cancels it)."""
    attempts: list[Attempt] = []
    try:
        found, retry_after = await _walk(client, asks, attempts, clock)
    except (FetchError, ParseError) as exc:
        outcome = ListOutcome(
            source.name, clock(), tuple(attempts), covers=covers, error=exc.reason,
            message=str(exc), retry_after=exc.retry_after,
        )  # fmt: skip
    except Exception as exc:  # a bug must cost one listing, not the poller
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


class SourcePoller:
    """Polls one source's jobs as its `Scheduler` says, which follows the store's changes.

    The source has one thread, running an event loop: the scheduler's loop hands each due poll
    to a task, at most `max_concurrency` of them in flight, and a task waiting for its answer
    costs no thread. Everything but `_follow` and `signal_stop` runs on that loop, or, for the
    callers that wait for an answer (`list_now`, `poll_all_once`), is sent to it."""

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
        self._settings = http_settings(config)
        self._budgets = tuple(budgets)
        self._concurrency = config.global_.max_concurrency
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._last_auth_log = -float("inf")
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
        self._running: _Running | None = None  # while the loop runs: what lives on it
        self._thread = self._new_thread()
        self.started = False

    def http(self) -> HttpClient:
        """A client with this source's settings and request budgets (`async with` it)."""
        return HttpClient(self._settings, self._budgets)

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=self._serve, name=f"poller-{self.source.name}", daemon=True)

    def _serve(self) -> None:
        run_loop(self._main())

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
            self._wake_up()

    def _wake_up(self) -> None:
        """Have the loop look at the scheduler again; from any thread."""
        running = self._running
        if running is None:
            return  # not running yet: it looks first thing; or stopped
        if threading.get_ident() == running.thread:
            running.wake.set()
        else:
            with suppress(RuntimeError):  # the loop closed meanwhile
                running.loop.call_soon_threadsafe(running.wake.set)

    def restart_if_dead(self) -> bool:
        """Start a new thread if the old one died; True if it had to."""
        if not self.started or self._stop.is_set() or self._thread.is_alive():
            return False
        self._thread = self._new_thread()
        self._thread.start()
        return True

    def signal_stop(self) -> None:
        """Stop scheduling and cancel what is in flight (backoffs, requests), without waiting:
        an outcome not yet applied is dropped, as a poll that never happened."""
        self._stop.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._wake_up()  # it sees the stop, and cancels what is in flight

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop, and give the loop `grace` seconds to wind down (a token request in its thread
        can outlast it: the thread is a daemon)."""
        self.signal_stop()
        if self._thread.is_alive():
            self._thread.join(grace)

    def next_wait(self, outcome: PollOutcome | ListOutcome, every: float | None = None) -> float:
        """The scheduler's wait before the next poll after `outcome`: see Scheduler.next_wait."""
        return self.scheduler.next_wait(outcome, every)

    def poll_all_once(self) -> None:
        """List the jobs (with discovery), then poll every job the store tracks once whose
        status the listing did not carry, concurrently; return when all are done (for
        --once)."""
        self._call(self._poll_all)

    def list_now(self) -> ListOutcome | None:
        """List the source's jobs now and hand the listing to the store (--once's and the
        benchmark's way in); None if shutting down. Not from the poller's own thread."""
        return self._call(self._list)

    def _call(self, work: Callable[[HttpClient], Coroutine[Any, Any, T]]) -> T | None:
        """Run `work` on the poller's loop if it runs, else (not started: --once, tests) on a
        loop of its own; wait for it. None once stopping: shutdown cancels it, and nothing
        starts after the stop."""
        with self._lock:  # against _main letting go of the loop meanwhile
            if self._stop.is_set():
                return None
            running = self._running
            if running is not None:
                call = asyncio.run_coroutine_threadsafe(work(running.client), running.loop)
                running.calls.add(call)
        if running is None:
            return run_loop(self._with_client(work))
        try:
            return call.result()
        except concurrent.futures.CancelledError:
            return None
        finally:
            running.calls.discard(call)

    async def _with_client(self, work: Callable[[HttpClient], Coroutine[Any, Any, T]]) -> T:
        async with self.http() as client:
            return await work(client)

    async def _poll_all(self, client: HttpClient) -> None:
        listing = await self._list(client) if self._lister is not None else None
        polled = set() if listing is None else {job for job, _, snap in listing.listed if snap}
        jobs = [r for r in self._store.jobs_of(self.source.name) if r.job_id not in polled]
        queue = deque((r.job_id, r.project) for r in jobs)
        lanes = min(len(queue), self._concurrency)
        await asyncio.gather(*(self._drain(client, queue, None) for _ in range(lanes)))

    async def _main(self) -> None:
        """The thread's loop: schedule until stopped, then cancel what is in flight."""
        async with self.http() as client:
            running = _Running(asyncio.get_running_loop(), threading.get_ident(), client)
            self._running = running
            try:
                await self._run(running)
            finally:
                with self._lock:
                    self._running = None
                for call in list(running.calls):
                    call.cancel()
                for task in running.tasks:
                    task.cancel()
                await asyncio.gather(*running.tasks, return_exceptions=True)

    async def _run(self, running: _Running) -> None:
        """Hand out what is due, then sleep until the next is due, but for at least a TICK,
        unless woken (a job added, a webhook, a poll that must follow at once)."""
        while not self._stop.is_set():
            try:
                soonest = self._schedule(running)
            except Exception:  # a scheduling bug must not end polling for the source
                log.exception("scheduler failed", source=self.source.name)
                soonest = self._monotonic() + self.scheduler.interval
            delay = None if soonest is None else max(TICK, soonest - self._monotonic())
            with suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await running.wake.wait()
            running.wake.clear()

    def _schedule(self, running: _Running) -> float | None:
        """Queue every due job (and the listing), with a lane to run them while fewer than
        `max_concurrency` run; return when the next one is due (None: none left)."""
        due, soonest = self.scheduler.take_due()
        running.queue.extend(due)
        while running.queue and running.lanes < self._concurrency:
            running.lanes += 1
            task = asyncio.create_task(self._drain(running.client, running.queue, running))
            running.tasks.add(task)
            task.add_done_callback(running.tasks.discard)
        return soonest

    async def _drain(
        self, client: HttpClient, queue: deque[tuple[str, str | None]], running: _Running | None
    ) -> None:
        """One lane: run the queued polls and listings one after another until none is left,
        telling the scheduler (if `running`) as each returns. A lane, not a task per poll: at
        start-up every job falls due within a second, and a waiting task costs 1.6 KB."""
        try:
            while queue:
                key, project = queue.popleft()
                try:
                    await self._guarded(client, key, project)
                finally:
                    if running is not None and self.scheduler.returned(key):
                        running.wake.set()
        finally:
            if running is not None:
                running.lanes -= 1  # now, not when the task's end is seen: _schedule counts

    async def _guarded(self, client: HttpClient, key: str, project: str | None) -> None:
        """One poll or listing. `poll_job` and `list_jobs` catch everything; this is the last
        line of defence (applying it)."""
        try:
            if key == LISTING:
                await self._list(client)
            else:
                await self._poll(client, key, project)
        except Exception:
            log.exception("poll task failed", source=self.source.name, job_id=key)

    def _should_log_auth(self) -> bool:
        """Auth failures are logged once per backoff interval for the whole source (on the
        loop: no lock)."""
        now = self._monotonic()
        if now - self._last_auth_log < self._auth_backoff:
            return False
        self._last_auth_log = now
        return True

    async def _poll(self, client: HttpClient, job_id: str, project: str | None) -> None:
        """Poll one job and hand the outcome to the store."""
        outcome = await poll_job(client, self.provider, self.source, job_id, self._clock, project)
        for change in self._store.update(outcome):
            if isinstance(change, Updated):
                self._log_transition(change.before, outcome)
            elif isinstance(change, Removed):  # expired: the API answers 404, again and again
                log.info("job expired; no longer tracked", source=self.source.name, job_id=job_id)

    async def _list(self, client: HttpClient) -> ListOutcome:
        """List the source's jobs and hand the listing to the store."""
        assert self._lister is not None
        now = self._clock()
        since = now - self._lookback
        any_state_since = since
        if self._listed_since is not None:
            any_state_since = max(since, self._listed_since - SETTLE_MARGIN)
        asks = self._lister(self.source, ListQuery(since, any_state_since))
        covers = self.scheduler.covers()
        outcome = await list_jobs(client, asks, self.source, covers, self._clock)
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


@dataclass(slots=True)
class _Running:
    """What lives on a poller's loop while it runs."""

    loop: asyncio.AbstractEventLoop
    thread: int  # the loop's thread's ident
    client: HttpClient
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    queue: deque[tuple[str, str | None]] = field(default_factory=deque)  # due, not yet run
    tasks: set[asyncio.Task[None]] = field(default_factory=set)  # the lanes running the queue
    lanes: int = 0  # of them, those not yet returned
    calls: set[concurrent.futures.Future[Any]] = field(default_factory=set)  # from _call


class _DaemonThreads(concurrent.futures.ThreadPoolExecutor):
    """A poller loop's default executor, for what must block (an Entra ID token request, a
    name lookup): each call on a daemon thread of its own, and none waited for at shutdown, so
    a token service or resolver that hangs cannot hold up the exit. Bounded by the callers: at
    most `max_concurrency` polls of a source are in flight. A ThreadPoolExecutor in name only:
    `set_default_executor` takes nothing else."""

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # handed to the awaiting caller
                    future.set_exception(exc)

        threading.Thread(target=run, name="poller-blocking", daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:  # noqa: ARG002
        return  # nothing to wait for: the threads are daemons


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on a new event loop whose blocking calls go to daemon threads."""
    with asyncio.Runner() as runner:
        runner.get_loop().set_default_executor(_DaemonThreads())
        return runner.run(main)
