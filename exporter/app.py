"""The running exporter: one store, one registry, one poller per source, wired from a Config."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from exporter.collector import JobCollector
from exporter.config import secrets
from exporter.logging import redactor
from exporter.poller import SourcePoller, utcnow
from exporter.store import Store

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from exporter.config import Config


class Exporter:
    def __init__(self, config: Config, clock: Callable[[], datetime] = utcnow) -> None:
        self.config = config
        self.store = Store()
        self._clock = clock
        self.registry = CollectorRegistry()
        self.registry.register(JobCollector(self.store, lambda: self.config.global_.poll_interval))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        redactor.register(secrets(config))
        self.store.configure(
            (source.provider, source.name, job_id)
            for source in config.sources
            for job_id in source.job_ids
        )
        self._pollers = [SourcePoller(config, s, self.store, clock) for s in config.sources]
        self._started = False

    def start(self) -> None:
        for poller in self._pollers:
            poller.start()
        self._started = True

    def ready(self) -> bool:
        """Ready once every source's scheduler runs (what /-/ready reports)."""
        return self._started and all(p.alive for p in self._pollers)

    def poll_once(self) -> None:
        """Poll every job once (retries included), all sources at once, and return when done."""
        threads = [threading.Thread(target=p.poll_all_once) for p in self._pollers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def stop(self) -> None:
        """Signal every source first, so their in-flight polls wind down together."""
        for poller in self._pollers:
            poller.signal_stop()
        for poller in self._pollers:
            poller.stop()
