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
"""

from __future__ import annotations

import queue
import random
import threading
import time
import traceback
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog

from exporter.http import FetchError, HttpClient, HttpSettings, Stopped, TokenBucket
from exporter.model import Attempt, ErrorReason, PollOutcome
from exporter.providers.base import ParseError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from exporter.config import Config
    from exporter.providers.base import Provider, SourceBase
    from exporter.store import JobRecord, Store

log = structlog.get_logger(__name__)

JITTER = 0.1
AUTH_BACKOFF_FACTOR = 10
STOP_GRACE = 3.0  # how long stop() waits for in-flight polls before leaving them behind


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
    """Fetch and parse one job's status. Never raises but for shutdown (`Stopped`)."""
    attempts: list[Attempt] = []
    retry_after: float | None = None
    try:
        fetched = client.fetch_json(provider.request(source, job_id, project), attempts)
        retry_after = fetched.retry_after
        snapshot = provider.parse(fetched.payload, clock())
    except (FetchError, ParseError) as exc:
        return PollOutcome(
            source.name, job_id, clock(), tuple(attempts), error=exc.reason, message=str(exc),
            retry_after=exc.retry_after if exc.retry_after is not None else retry_after,
        )  # fmt: skip
    except Stopped:
        raise
    except Exception as exc:  # a bug must cost one poll, not the poller thread
        return PollOutcome(
            source.name, job_id, clock(), tuple(attempts), error=ErrorReason.BAD_RESPONSE,
            message=f"unexpected {type(exc).__name__}", bug=traceback.format_exc(),
        )  # fmt: skip
    return PollOutcome(
        source.name, job_id, clock(), tuple(attempts), snapshot=snapshot, retry_after=retry_after
    )


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
        self._due: dict[str, float] = {}
        self._in_flight: set[str] = set()  # handed to a worker; rescheduled when its poll ends
        self._again: set[str] = set()  # in flight, and asked for again: poll once it returns
        self._projects: dict[str, str | None] = {}  # the project each job's requests go to
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
        with self._lock:
            for record in self._store.jobs_of(self.source.name):
                if not record.finished:
                    self._projects[record.job_id] = record.project
                    self._due[record.job_id] = now + random.uniform(0, spread)  # noqa: S311
        self._thread.start()
        self.started = True

    def schedule_now(self, job_id: str, project: str | None) -> None:
        """Poll this job right away (new to the store, or a webhook says it moved), not one
        interval later. If its poll is in flight, the next one follows as soon as it returns:
        never two at once, or an older answer could be applied after a newer one."""
        with self._lock:
            self._projects[job_id] = project
            if job_id in self._in_flight:
                self._again.add(job_id)
            else:
                self._due[job_id] = time.monotonic()
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
        """Poll every job once, concurrently, and return when all are done (for --once)."""
        jobs = self._store.jobs_of(self.source.name)
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
        now = time.monotonic()
        with self._lock:
            due = [job for job, at in self._due.items() if at <= now]
            for job in due:
                del self._due[job]  # in flight: rescheduled when its poll ends
                self._in_flight.add(job)
            soonest = min(self._due.values(), default=None)
        for job in due:
            self._workers.submit(partial(self._poll_and_reschedule, job))
        return soonest

    def next_wait(self, outcome: PollOutcome) -> float:
        """The interval (auth backoff after an auth failure), or longer if the upstream asked
        for it; a server's wait is capped by max_retry_wait, as its retries are."""
        base = self._auth_backoff if outcome.error is ErrorReason.AUTH else self._interval
        wait = base * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311
        asked = min(outcome.retry_after or 0.0, self._max_retry_wait)
        return max(wait, asked)

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
                    self._due[job_id] = time.monotonic() + wait
            self._wake.set()
