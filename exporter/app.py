"""The running exporter: one store, one registry, one poller per source, wired from a Config.

`apply()` swaps in a new config without a restart: sources whose settings did not change keep
their poller, and every job that stays keeps its record (state, counters, timestamps). `reload()`
is what SIGHUP and POST /-/reload call; a file with problems is refused and the running config
stays. A supervisor restarts any source's scheduler thread that died.
"""

from __future__ import annotations

import threading
from types import MappingProxyType
from typing import TYPE_CHECKING

import structlog
from prometheus_client import (
    CollectorRegistry,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)

from exporter.collector import JobCollector
from exporter.config import ConfigError, load_config, secrets
from exporter.logging import redactor
from exporter.poller import SourcePoller, utcnow
from exporter.store import Store

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from datetime import datetime
    from pathlib import Path

    from exporter.config import Config
    from exporter.providers.base import SourceBase
    from exporter.storage import Storage

log = structlog.get_logger(__name__)


class Exporter:
    def __init__(
        self,
        config: Config,
        clock: Callable[[], datetime] = utcnow,
        supervise_every: float = 1.0,
        storage: Storage | None = None,
    ) -> None:
        self.config = config
        self.store = Store(storage, clock)
        self._clock = clock
        self._supervise_every = supervise_every
        self.registry = CollectorRegistry()
        self.registry.register(JobCollector(self.store, lambda: self.config.global_.poll_interval))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._reload_ok = Gauge(
            "asyncjob_config_last_reload_successful",
            "Whether the last configuration reload attempt was successful.",
            registry=self.registry,
        )
        self._reload_time = Gauge(
            "asyncjob_config_last_reload_success_timestamp_seconds",
            "Timestamp of the last successful configuration reload.",
            registry=self.registry,
        )
        self._lock = threading.RLock()
        self._pollers: dict[str, SourcePoller] = {}
        self._started = False
        self._stopping = threading.Event()
        self.apply(config)

    def apply(self, config: Config) -> None:
        """Make `config` the running one; unchanged sources and jobs keep everything."""
        with self._lock:
            sources = [self._within_limit(s) for s in config.sources]
            self.store.configure(
                (source.provider, source.name, job_id)
                for source in sources
                for job_id in source.job_ids
            )
            for source, original in zip(sources, config.sources, strict=True):
                if refused := len(original.job_ids) - len(source.job_ids):
                    self.store.count_rejected(source.name, refused)
            old, same_global = self._pollers, config.global_ == self.config.global_
            self._pollers = {
                s.name: (
                    old[s.name]
                    if s.name in old and old[s.name].source == s and same_global
                    else SourcePoller(config, s, self.store, self._clock)
                )
                for s in sources
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
            redactor.register(secrets(config))
            self._reload_ok.set(1)
            self._reload_time.set_to_current_time()

    @staticmethod
    def _within_limit(source: SourceBase) -> SourceBase:
        if len(source.job_ids) <= source.max_jobs:
            return source
        refused = len(source.job_ids) - source.max_jobs
        log.warning(
            "job limit reached", source=source.name, max_jobs=source.max_jobs, refused=refused
        )
        return source.model_copy(update={"job_ids": source.job_ids[: source.max_jobs]})

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
        with self._lock:
            for poller in self._pollers.values():
                poller.start()
            self._started = True
        threading.Thread(target=self._supervise_forever, name="supervisor", daemon=True).start()

    def not_ready(self) -> str | None:
        """Why /-/ready should say no, or None when every source's scheduler runs."""
        if not self._started:
            return "not started"
        dead = [name for name, poller in self._pollers.items() if not poller.alive]
        return f"scheduler not running for source(s) {', '.join(dead)}" if dead else None

    def supervise(self) -> None:
        """Restart any scheduler thread that died (a bug, not an upstream failure)."""
        with self._lock:
            for name, poller in self._pollers.items():
                if poller.restart_if_dead():
                    log.error("scheduler thread had died; restarted", source=name)

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
