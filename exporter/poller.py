"""Polls the configured jobs in the background and writes what it learns into the store.

Each source has its own scheduler thread and its own worker pool (`max_concurrency` wide), so a
source whose upstream hangs cannot take workers from another. Within a source every job has its
own due time: a slow job delays nobody. Intervals get +-10% jitter so jobs added together do not
poll in lockstep. A job that reaches a terminal state is not polled again.

`poll_job` is the whole life of one poll, and the one place an exception becomes a counted reason
and a log line bound with `source` and `job_id`.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import UTC, datetime
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
    bound.warning("poll failed", reason=reason.value, error=message)


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
        self._store = store
        self._clock = clock
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        workers = config.global_.max_concurrency
        self._client = HttpClient(http_settings(config), workers, self._stop)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=f"poll-{source.name}")
        self._due: dict[str, float] = {}
        self._thread = threading.Thread(
            target=self._run, name=f"scheduler-{source.name}", daemon=True
        )

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        # Spread the first polls over a tenth of the interval (at most 1 s) instead of a burst.
        now = time.monotonic()
        spread = min(self._interval * JITTER, 1.0)
        self._due = {job: now + random.uniform(0, spread) for job in self.source.job_ids}  # noqa: S311
        self._thread.start()

    def signal_stop(self) -> None:
        """Stop scheduling and cut backoffs short, without waiting for anything."""
        self._stop.set()
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop scheduling, let in-flight polls end (backoffs are cut short), then close."""
        self.signal_stop()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    def poll_all_once(self) -> None:
        """Poll every job once, concurrently, and return when all are done (for --once)."""
        futures = [self._pool.submit(self._poll, job) for job in self.source.job_ids]
        wait(futures)

    def _poll(self, job_id: str) -> None:
        poll_job(self._client, self._provider, self.source, job_id, self._store, self._clock)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                due = [job for job, at in self._due.items() if at <= now]
                for job in due:
                    del self._due[job]  # in flight: rescheduled when its poll ends
                soonest = min(self._due.values(), default=None)
            for job in due:
                self._pool.submit(self._poll_and_reschedule, job)
            self._wake.wait(None if soonest is None else max(0.0, soonest - now))
            self._wake.clear()

    def _poll_and_reschedule(self, job_id: str) -> None:
        try:
            self._poll(job_id)
        finally:
            record = self._store.get(self.source.name, job_id)
            if record is not None and not record.finished and not self._stop.is_set():
                jitter = random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311
                with self._lock:
                    self._due[job_id] = time.monotonic() + self._interval * jitter
                self._wake.set()
