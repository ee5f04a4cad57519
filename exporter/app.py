"""The running exporter: one store, one registry, one poller per source, wired from a Config.

`apply()` swaps in a new config without a restart: sources whose settings did not change keep
their poller, and every job that stays keeps its record (state, counters, timestamps). `reload()`
is what SIGHUP and POST /-/reload call; a file with problems is refused and the running config
stays. A supervisor restarts any source's scheduler thread that died.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import (
    CollectorRegistry,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)

from exporter import webhooks
from exporter.collector import SourceCollector, StorageCollector, described
from exporter.config import ConfigError, load_config
from exporter.exposition import FAMILIES, Exposition
from exporter.http import TokenBucket
from exporter.logging import quoted
from exporter.model import Origin
from exporter.poller import SourcePoller, utcnow
from exporter.sharding import Shard
from exporter.store import KNOWN, SourceJobs, Store, WebhookOutcome
from exporter.values import format_duration, is_path_safe_id

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from datetime import datetime
    from pathlib import Path

    from exporter.config import Config
    from exporter.model import JobRecord
    from exporter.providers.base import Located, Retention, SourceBase, Webhook
    from exporter.selection import Selection
    from exporter.storage import Storage
    from exporter.webhooks import WebhookCall

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Registration:
    """What registering a job came to: its record (created or already tracked), or a problem
    with the request (`at_limit` when the source has no room)."""

    record: JobRecord | None = None
    created: bool = False
    problem: str | None = None
    at_limit: bool = False
    owner: int | None = None  # another shard owns the job: the request goes there
    unsaved: bool = False  # tracked in memory, but not committed: `problem` says why


def _registration_problem(source: SourceBase, job_id: str, project: str | None) -> str | None:
    if not is_path_safe_id(job_id):
        return f"{quoted(job_id)} is not a valid job ID: use 1-128 letters, digits or -_.:"
    has_projects = "project" in type(source).model_fields
    if project is not None and not has_projects:
        return f"source {source.name!r} ({source.provider}) has no projects; leave project out"
    if project is not None and not is_path_safe_id(project):
        return f"{quoted(project)} is not a valid project name: use 1-128 letters, digits or -_.:"
    if has_projects and project is None and _project(source) is None:
        return f"source {source.name!r} has no project of its own: give the job's project"
    return None


def _seconds(retention: Retention) -> tuple[float, float]:
    return retention.succeeded, retention.unsuccessful


def _remember_retired(config: Config, source: SourceBase) -> float | None:
    """How long a retired job is kept from coming back by discovery: for ever where the
    listing names every job ever made; else past the lookback, with a day's margin."""
    if source.discovery is None or config.provider(source).names_only:
        return None
    return source.discovery.lookback + 86400.0


def _own_metrics(registry: CollectorRegistry, shard: Shard) -> tuple[Gauge, Gauge]:
    """The exporter's own gauges: its shard, and whether (and when) a reload last worked."""
    Gauge(
        "asyncjob_shard_info",
        "This exporter's shard: it keeps and polls the jobs whose hash modulo total_shards "
        "is shard.",
        ["shard", "total_shards"],
        registry=registry,
    ).labels(str(shard.index), str(shard.total)).set(1)
    reload_ok = Gauge(
        "asyncjob_config_last_reload_successful",
        "Whether the last configuration reload attempt was successful.",
        registry=registry,
    )
    reload_time = Gauge(
        "asyncjob_config_last_reload_success_timestamp_seconds",
        "Timestamp of the last successful configuration reload.",
        registry=registry,
    )
    return reload_ok, reload_time


def metric_families() -> tuple[tuple[str, str], ...]:
    """Every `asyncjob_` family the exporter can export, as (name, client_python type): the
    jobs', the sources' statistics, the storage's and its own, those too that appear only after
    an event or with a flag. --metric-allowlist and --metric-denylist are checked against it."""
    own = CollectorRegistry()
    _own_metrics(own, Shard())
    families = [(f.name, f.type) for f in FAMILIES]
    families += [(m.name, m.type) for m in (*described(), *own.collect())]
    return tuple(families)


def _project(source: SourceBase) -> str | None:
    project = getattr(source, "project", None)
    return project if isinstance(project, str) else None


class Exporter:
    def __init__(
        self,
        config: Config,
        clock: Callable[[], datetime] = utcnow,
        supervise_every: float = 1.0,
        storage: Storage | None = None,
        shard: Shard | None = None,
        selection: Selection | None = None,
    ) -> None:
        self.config = config
        self.shard = shard or Shard()
        self.store = Store(storage, clock, owns=self.shard.owns)
        self._clock = clock
        self._supervise_every = supervise_every
        # auto_describe: ?name[]= finds the process_ and python_ families too (client_python
        # indexes a collector without describe() by its collect() only when asked to).
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(SourceCollector(self.store))
        if storage is not None:
            self.registry.register(StorageCollector(storage))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._reload_ok, self._reload_time = _own_metrics(self.registry, self.shard)
        self.exposition = Exposition(self.registry, self.store, self._poll_note, selection)
        self._lock = threading.RLock()
        self._pollers: dict[str, SourcePoller] = {}
        self._buckets: dict[str, TokenBucket] = {}  # by source name; "" is the global budget
        self._started = False
        self._stopping = threading.Event()
        self._refusing: dict[str, int] = {}  # registrations refused in a row, by source
        self._wrong_tokens: dict[str, int] = {}  # webhook calls with a wrong token in a row
        self.apply(config)

    def apply(self, config: Config) -> None:
        """Make `config` the running one; unchanged sources and jobs keep everything."""
        with self._lock:
            for source in config.sources:
                if len(source.job_ids) > source.max_jobs:
                    refused = len(source.job_ids) - source.max_jobs
                    log.warning("job limit reached", source=source.name,
                                max_jobs=source.max_jobs, refused=refused)  # fmt: skip
            self.store.replace(
                SourceJobs(
                    s.provider,
                    s.name,
                    tuple(s.job_ids),
                    _project(s),
                    s.max_jobs,
                    webhook=s.webhook_secret() is not None,
                    retention=_seconds(config.retention(s)),
                    discovery=s.discovery is not None,
                    remember_retired=_remember_retired(config, s),
                )
                for s in config.sources
            )
            old, same_global = self._pollers, config.global_ == self.config.global_
            self._pollers = {
                s.name: (
                    old[s.name]
                    if s.name in old and old[s.name].source == s and same_global
                    else SourcePoller(config, s, self.store, self._clock, self._budgets(config, s))
                )
                for s in config.sources
            }
            self.config = config
            retired = [p for name, p in old.items() if self._pollers.get(name) is not p]
            for poller in retired:
                poller.signal_stop()
            for poller in retired:
                poller.stop()
            if self._started:
                for poller in self._pollers.values():
                    if not poller.started:
                        poller.start()
            self._reload_ok.set(1)
            self._reload_time.set_to_current_time()

    def _poll_note(self) -> str:
        every = format_duration(self.config.global_.poll_interval)
        return (
            f"Polled in the background every {every} by default (per-source poll_interval), "
            "not at scrape time."
        )

    def _budgets(self, config: Config, source: SourceBase) -> list[TokenBucket]:
        """The request budgets a source's requests take from: its own and the global one. A
        bucket lives as long as its rate: a reload that keeps the rate keeps what was spent."""
        wanted = [(source.name, source.max_requests_per_minute),
                  ("", config.global_.max_requests_per_minute)]  # fmt: skip
        budgets = []
        for key, rate in wanted:
            bucket = self._buckets.get(key)
            if rate is None:
                self._buckets.pop(key, None)
                continue
            if bucket is None or bucket.per_minute != rate:
                bucket = self._buckets[key] = TokenBucket(rate)
            budgets.append(bucket)
        return budgets

    def _source(self, name: str) -> SourceBase | None:
        return next((s for s in self.config.sources if s.name == name), None)

    def register(
        self, source_name: str, job_id: str, project: str | None, origin: str
    ) -> Registration:
        """Track a job that did not come from the config file; its source's scheduler, which
        follows the store, polls it right away.

        With storage, the job's row is committed before this returns, so an answer of 201 (or
        200) means it survives a crash. When the commit fails the registration is `unsaved`:
        the job stays tracked (and polled) in memory and its row is retried with everything
        else the storage holds back, but it is not acknowledged; asked again, it is once its
        row is committed."""
        with self._lock:
            source = self._source(source_name)
            if source is None:
                names = ", ".join(s.name for s in self.config.sources)
                return Registration(problem=f"unknown source {quoted(source_name)}; known: {names}")
            problem = _registration_problem(source, job_id, project)
            if problem is not None:
                return Registration(problem=problem)
            if not self.shard.owns(source.name, job_id):
                return Registration(owner=self.shard.owner(source.name, job_id))
            project = project or _project(source)
            added = self.store.add(source.provider, source.name, job_id, project, origin)
            if added is None:
                self._refused(source, origin)
                return Registration(
                    problem=f"source {source_name!r} tracks {source.max_jobs} jobs, its max_jobs",
                    at_limit=True,
                )
            record, created = added
            if created and source.name in self._refusing:
                refused = self._refusing.pop(source.name)
                log.info("job limit no longer reached", source=source.name, refused=refused)
        storage = self.store.storage
        problem = None if storage is None else storage.wait_saved((source.name, job_id))
        if problem is not None:
            return Registration(record=record, created=created, problem=problem, unsaved=True)
        if created:
            log.info("job registered", source=source.name, job_id=job_id, origin=origin)
        return Registration(record=record, created=created)

    def _refused(self, source: SourceBase, origin: str) -> None:
        """Log the first refusal of a streak (each is counted in the store); the caller holds
        the lock. The streak ends when the source takes a job again."""
        refused = self._refusing.get(source.name, 0)
        self._refusing[source.name] = refused + 1
        if not refused:
            log.warning("job limit reached; refusing jobs until there is room",
                        source=source.name, max_jobs=source.max_jobs, origin=origin)  # fmt: skip

    def _webhook_source(
        self, call: WebhookCall, body: bytes | None = None
    ) -> tuple[SourceBase, Webhook] | None:
        """The source a webhook call is for and its webhook, if the call proves itself (from its
        head alone while `body` is None). One read of the running config, without the lock (a
        reload swaps it whole): this runs on the HTTP server's event loop."""
        config = self.config
        source = next((s for s in config.sources if s.name == call.source), None)
        hook = None if source is None else config.provider(source).webhook
        secret = None if source is None else source.webhook_secret()
        if source is None or hook is None or hook.slug != call.slug or secret is None:
            return None
        now = time.time()
        if (
            webhooks.admits(hook, secret, call, now)
            if body is None
            else webhooks.proven(hook, secret, call, body, now)
        ):
            self._wrong_tokens.pop(source.name, None)
            return source, hook
        self.store.update(WebhookOutcome(source.name, "unauthorized"))
        streak = self._wrong_tokens[source.name] = self._wrong_tokens.get(source.name, 0) + 1
        if streak == 1:  # one line per streak: a flood of guesses is counted, not logged
            log.warning("webhook with a wrong token or signature; further ones counted until a "
                        "right one", source=source.name)  # fmt: skip
        return None

    def admits_webhook(self, call: WebhookCall) -> bool:
        """Whether a webhook call may go on, from its head alone (before its body is read). A
        wrong token or signature for a source that takes this webhook counts as unauthorized."""
        return self._webhook_source(call) is not None

    def webhook(self, call: WebhookCall, body: bytes, payload: Any) -> str | int:
        """A provider's call-back: the result (see store.WEBHOOK_RESULTS), or the shard that
        owns the job named (an int: the call goes there, and is counted there). An unknown
        source, one without this webhook and a wrong token or signature all come to
        "unauthorized". The payload (`body` decoded) only names the job: it is polled at once
        for its state, never believed."""
        found = self._webhook_source(call, body)
        if found is None:
            return "unauthorized"
        source, hook = found
        job_id = hook.job_id(payload)
        if job_id is not None and not self.shard.owns(source.name, job_id):
            return self.shard.owner(source.name, job_id)
        result = "invalid" if job_id is None else self._webhook_job(source, job_id)
        self.store.update(WebhookOutcome(source.name, result, job_id))  # "known": polled at once
        log.info("webhook", source=source.name, result=result)
        return result

    def _webhook_job(self, source: SourceBase, job_id: str) -> str:
        registration = self.register(source.name, job_id, None, Origin.WEBHOOK)
        if registration.at_limit:
            return "refused"
        if registration.unsaved:
            return "unsaved"
        if registration.record is None:
            return "invalid"
        return "registered" if registration.created else KNOWN

    def locate(self, url: str) -> tuple[SourceBase, Located] | str:
        """The one source whose endpoint and API a job status URL belongs to, and the job it
        names; or why not (no source, or more than one)."""
        found = [
            (source, located)
            for source in self.config.sources
            if (located := self.config.provider(source).locate(source, url)) is not None
        ]
        if len(found) == 1:
            return found[0]
        if not found:
            return "operation_location matches no source's endpoint and job status path"
        names = ", ".join(source.name for source, _ in found)
        return f"operation_location matches more than one source ({names}); give source instead"

    def unregister(self, source_name: str, job_id: str) -> JobRecord | str | int | None:
        """Stop tracking a job that did not come from the config file: its record; a reason
        when it cannot be removed (it is listed in the config file); the shard that owns it
        (an int); None if not tracked."""
        if not self.shard.owns(source_name, job_id):
            return self.shard.owner(source_name, job_id)
        with self._lock:
            record = self.store.get(source_name, job_id)
            if record is None:
                return None
            if record.origin == Origin.CONFIG:
                return f"job {quoted(job_id)} is listed in the config file; remove it there"
            self.store.delete(source_name, job_id)
        log.info("job unregistered", source=source_name, job_id=job_id)
        return record

    @property
    def pollers(self) -> Mapping[str, SourcePoller]:
        """The running source pollers by source name (read-only)."""
        return MappingProxyType(self._pollers)

    def reload(self, path: str | Path) -> list[tuple[str, str]]:
        """Re-read the config file (secret files too). Returns its problems; [] when applied."""
        try:
            config = load_config(path)
        except ConfigError as exc:
            self._reload_ok.set(0)
            problems = [f"{where}: {what}" for where, what in exc.problems]
            # The problems are the whole story; a traceback would only hide them.
            log.error("reload failed; keeping the running config", problems=problems)  # noqa: TRY400
            return exc.problems
        self.apply(config)
        log.info("config reloaded", sources=len(config.sources))
        return []

    def start(self) -> None:
        # The jobs resumed from storage are rendered before the first poll: at 50,000 jobs the
        # first listing parses every job again, and the first scrape, rendering them all at
        # the same time, took twice as long (a scrape waits for this render instead).
        self.exposition.prime()
        with self._lock:
            for poller in self._pollers.values():
                poller.start()
            self._started = True
        threading.Thread(target=self._supervise_forever, name="supervisor", daemon=True).start()

    def not_ready(self) -> str | None:
        """Why /-/ready should say no, or None when every source's scheduler runs and the
        storage (if any) can be written."""
        if not self._started:
            return "not started"
        storage = self.store.storage
        problem = None if storage is None else storage.problem
        if problem is not None:
            return f"storage failing: {problem}"
        dead = [name for name, poller in self._pollers.items() if not poller.alive]
        return f"scheduler not running for source(s) {', '.join(dead)}" if dead else None

    def supervise(self) -> None:
        """Restart any scheduler thread that died (a bug, not an upstream failure), and let go
        of finished jobs whose retention has ended."""
        with self._lock:
            for name, poller in self._pollers.items():
                if poller.restart_if_dead():
                    log.error("scheduler thread had died; restarted", source=name)
        for record in self.store.retire(self._clock()):
            log.info("job retired: retention ended", source=record.source, job_id=record.job_id)

    def _supervise_forever(self) -> None:
        while not self._stopping.wait(self._supervise_every):
            self.supervise()

    def poll_once(self) -> None:
        """Poll every job once (retries included), all sources at once, and return when done."""
        threads = [threading.Thread(target=p.poll_all_once) for p in self._pollers.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def stop(self) -> None:
        """Signal every source first, so their in-flight polls wind down together."""
        self._stopping.set()
        with self._lock:
            for poller in self._pollers.values():
                poller.signal_stop()
            for poller in self._pollers.values():
                poller.stop()
