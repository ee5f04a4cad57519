"""Polls the configured jobs in the background and writes what it learns into the store.

Each source has its own scheduler thread and its own workers (`max_concurrency` of them), so a
source whose upstream hangs cannot take workers from another. Within a source every job has its
own due time: a slow job delays nobody. Intervals get +-10% jitter so jobs added together do not
poll in lockstep. A job that reaches a terminal state is not polled again. After an auth failure
a job waits AUTH_BACKOFF_FACTOR intervals: a revoked key must not turn into a request storm, and
the source logs it once per such interval.

`poll_job` is the whole life of one poll, and the one place an exception becomes a counted reason
and a log line bound with `source` and `job_id`.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog

from exporter.http import FetchError, HttpClient, HttpSettings, Stopped
from exporter.model import ErrorReason
from exporter.providers.base import ParseError

if TYPE_CHECKING:
    from collections.abc import Callable

    from exporter.config import Config
    from exporter.providers.base import Provider, SourceBase
    from exporter.store import Store

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
    store: Store,
    clock: Callable[[], datetime] = utcnow,
    should_log: Callable[[ErrorReason], bool] = lambda _: True,
) -> None:
    """Fetch, parse and record one job's status. Never raises but for shutdown."""
    bound = log.bind(source=source.name, job_id=job_id, provider=provider.name)
    try:
        payload = client.fetch_json(
            provider.request(source, job_id),
            lambda seconds, error: store.observe_request(source.name, seconds, error),
        )
        polled_at = clock()
        snapshot = provider.parse(payload, polled_at)
    except FetchError as exc:
        reason, message = exc.reason, str(exc)
    except ParseError as exc:
        reason, message = exc.reason, str(exc)
        store.count_error(source.name, reason)
    except Stopped:
        return
    except Exception as exc:  # a parser bug must cost one poll, not the poller thread
        reason, message = ErrorReason.BAD_RESPONSE, f"unexpected {type(exc).__name__}"
        store.count_error(source.name, reason)
        bound.exception("parser failed")
    else:
        store.record_success(source.name, job_id, snapshot, polled_at)
        bound.debug("polled", state=snapshot.state.value, progress=snapshot.progress["overall"])
        return
    store.record_failure(source.name, job_id, reason)
    if should_log(reason):
        bound.warning("poll failed", reason=reason.value, error=message)


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
    ) -> None:
        self.source = source
        self._provider = config.provider(source)
        self._interval = config.poll_interval(source)
        self._auth_backoff = self._interval * AUTH_BACKOFF_FACTOR
        self._store = store
        self._clock = clock
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._last_auth_log = -float("inf")
        workers = config.global_.max_concurrency
        self._client = HttpClient(http_settings(config), workers, self._stop)
        self._workers = Workers(workers, f"poll-{source.name}")
        self._due: dict[str, float] = {}
        self._thread = self._new_thread()
        self.started = False

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=self._run, name=f"scheduler-{self.source.name}", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        # Spread the first polls over a tenth of the interval (at most 1 s) instead of a burst;
        # jobs already finished (kept across a reload) are not polled again.
        now = time.monotonic()
        spread = min(self._interval * JITTER, 1.0)
        self._due = {
            job: now + random.uniform(0, spread)  # noqa: S311
            for job in self.source.job_ids
            if not self._finished(job)
        }
        self._thread.start()
        self.started = True

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
        self._client.close()

    def poll_all_once(self) -> None:
        """Poll every job once, concurrently, and return when all are done (for --once)."""
        for done in [self._workers.submit(partial(self._poll, job)) for job in self.source.job_ids]:
            done.wait()

    def _finished(self, job_id: str) -> bool:
        record = self._store.get(self.source.name, job_id)
        return record is not None and record.finished

    def _should_log(self, reason: ErrorReason) -> bool:
        """Auth failures are logged once per backoff interval for the whole source."""
        if reason is not ErrorReason.AUTH:
            return True
        with self._lock:
            now = time.monotonic()
            if now - self._last_auth_log < self._auth_backoff:
                return False
            self._last_auth_log = now
            return True

    def _poll(self, job_id: str) -> None:
        poll_job(
            self._client,
            self._provider,
            self.source,
            job_id,
            self._store,
            self._clock,
            self._should_log,
        )

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
            soonest = min(self._due.values(), default=None)
        for job in due:
            self._workers.submit(partial(self._poll_and_reschedule, job))
        return soonest

    def _poll_and_reschedule(self, job_id: str) -> None:
        try:
            self._poll(job_id)
        finally:
            record = self._store.get(self.source.name, job_id)
            if record is not None and not record.finished and not self._stop.is_set():
                wait = (
                    self._auth_backoff if record.last_error is ErrorReason.AUTH else self._interval
                )
                jitter = random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311
                with self._lock:
                    self._due[job_id] = time.monotonic() + wait * jitter
                self._wake.set()
