"""The sources' statistics as metric families, afresh on every scrape (the jobs' own families
are pre-rendered: see exposition.py).

Nothing here talks upstream: a scrape reads the store's counters and renders them, so it costs
the same whether an upstream is fast, slow or down. `describe()` is the same builder run over no
data, so registering the collector does not trigger a collection.
"""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.model import ErrorReason
from exporter.storage import OPERATIONS
from exporter.store import DURATION_BUCKETS, REQUEST_BUCKETS

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping, Sequence

    from prometheus_client.metrics_core import Metric

    from exporter.storage import Storage
    from exporter.store import SourceStats, Store

SOURCE_LABELS = ["provider", "source"]


def _cumulative(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """Per-bucket counts (then +Inf) as the cumulative (le, count) pairs a histogram wants."""
    total, buckets = 0, []
    for bound, n in zip((*bounds, float("inf")), counts, strict=True):
        total += n
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
    return buckets


class _Families:
    """The metric families of one scrape, built from one consistent read of the store."""

    def __init__(self) -> None:
        self.requests = CounterMetricFamily(
            "asyncjob_requests", "Upstream request attempts, retries included.",
            labels=SOURCE_LABELS,
        )  # fmt: skip
        self.request_errors = CounterMetricFamily(
            "asyncjob_request_errors",
            "Failed upstream requests by reason (an unreadable answer counts as bad_response).",
            labels=[*SOURCE_LABELS, "reason"],
        )
        self.duration = HistogramMetricFamily(
            "asyncjob_request_duration_seconds", "Upstream request latency, per attempt.",
            labels=SOURCE_LABELS,
        )  # fmt: skip
        self.rejected = CounterMetricFamily(
            "asyncjob_jobs_rejected",
            "Job IDs refused by reason (limit: the source is at its max_jobs).",
            labels=[*SOURCE_LABELS, "reason"],
        )
        self.webhooks = CounterMetricFamily(
            "asyncjob_webhooks",
            "Webhook calls by result (registered, known, unauthorized, invalid, refused, unsaved).",
            labels=[*SOURCE_LABELS, "result"],
        )
        self.delayed = CounterMetricFamily(
            "asyncjob_request_budget_delayed",
            "Upstream requests that waited for the request budget (max_requests_per_minute).",
            labels=SOURCE_LABELS,
        )
        self.finished = CounterMetricFamily(
            "asyncjob_jobs_finished",
            "Jobs the exporter saw reach a terminal state, by state; each counted once, across "
            "restarts too.",
            labels=[*SOURCE_LABELS, "state"],
        )
        self.job_duration = HistogramMetricFamily(
            "asyncjob_job_duration_seconds",
            "Time from creation to finish of the jobs counted in asyncjob_jobs_finished_total, "
            "to the time of asyncjob_finished_timestamp_seconds; jobs without either are left out.",
            labels=[*SOURCE_LABELS, "state"],
        )
        self.characters = CounterMetricFamily(
            "asyncjob_characters_charged",
            "Characters the API charged for the source's jobs (Translator batches): each job's "
            "increase counted once, as polls report it; across restarts too, and after the job is "
            "dropped.",
            labels=SOURCE_LABELS,
        )
        self.tokens = CounterMetricFamily(
            "asyncjob_source_tokens",
            "Tokens the source's jobs have used, by kind (input and output of LLM batches, "
            "trained of fine-tuning jobs): each job's increase counted once, as polls report it; "
            "across restarts too, and after the job is dropped.",
            labels=[*SOURCE_LABELS, "kind"],
        )
        self.dropped = CounterMetricFamily(
            "asyncjob_jobs_dropped",
            "Jobs no longer tracked, by reason (retention, expired, deleted).",
            labels=[*SOURCE_LABELS, "reason"],
        )
        self.discovered = CounterMetricFamily(
            "asyncjob_jobs_discovered",
            "Jobs first found by listing the source (discovery).",
            labels=SOURCE_LABELS,
        )
        self.tracked = GaugeMetricFamily(
            "asyncjob_tracked_jobs",
            "Jobs tracked for the source, however they came.",
            labels=SOURCE_LABELS,
        )
        self.build = GaugeMetricFamily(
            "asyncjob_build_info", "asyncjob-exporter build information.",
            labels=["version", "python_version"],
        )  # fmt: skip

    def add_source(self, stats: SourceStats) -> None:
        key = [stats.provider, stats.source]
        self.requests.add_metric(key, stats.requests)
        for reason in ErrorReason:
            self.request_errors.add_metric([*key, reason.value], stats.errors.get(reason, 0))
        buckets = _cumulative(REQUEST_BUCKETS, stats.bucket_counts)
        self.duration.add_metric(key, buckets, stats.duration_sum)
        tally = stats.tally
        for state, count in tally.finished.items():
            self.finished.add_metric([*key, state], count)
            self.job_duration.add_metric(
                [*key, state], _cumulative(DURATION_BUCKETS, tally.buckets[state]),
                tally.seconds[state],
            )  # fmt: skip
        self.characters.add_metric(key, tally.characters)
        for kind, used in tally.tokens.items():
            self.tokens.add_metric([*key, kind], used)
        for dropped_for, count in stats.dropped.items():
            self.dropped.add_metric([*key, dropped_for], count)
        self.tracked.add_metric(key, stats.tracked_jobs)
        self.delayed.add_metric(key, stats.delayed)
        self.rejected.add_metric([*key, "limit"], stats.rejected)
        for result, calls in (stats.webhooks or {}).items():
            self.webhooks.add_metric([*key, result], calls)
        if stats.discovered is not None:
            self.discovered.add_metric(key, stats.discovered)

    def all(self) -> Iterator[Metric]:
        yield self.build
        yield self.requests
        yield self.request_errors
        yield self.duration
        yield self.tracked
        yield self.rejected
        yield self.delayed
        yield self.finished
        yield self.job_duration
        yield self.characters
        yield self.tokens
        yield self.dropped
        yield self.discovered
        yield self.webhooks


def described() -> Iterator[Metric]:
    """Every family the collectors here can yield, without samples: some appear only after an
    event (the first webhook call, a discovery source, --storage.path)."""
    yield from _Families().all()
    yield StorageCollector.family({})


class SourceCollector(Collector):
    """Exposes every source's request statistics, and the build info."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._kept: tuple[tuple[SourceStats, ...], list[Metric]] | None = None

    def _build(self, sources: Iterable[SourceStats]) -> _Families:
        families = _Families()
        families.build.add_metric([__version__, platform.python_version()], 1.0)
        for stats in sources:
            families.add_source(stats)
        return families

    def describe(self) -> Iterator[Metric]:
        return self._build(()).all()

    def collect(self) -> Iterator[Metric]:
        """The families built afresh when the statistics changed since the last collect, else
        the same ones (never changed once built): building them was most of a scrape of an
        unchanged store, and the exposition keeps the text of a family that collects the same."""
        stats = self._store.source_stats()
        kept = self._kept
        if kept is None or kept[0] != stats:
            kept = self._kept = (stats, list(self._build(stats).all()))
        return iter(kept[1])


class StorageCollector(Collector):
    """Exposes the storage's failures (with --storage.path):

    # HELP asyncjob_storage_errors_total Failed storage attempts by operation ...
    # TYPE asyncjob_storage_errors_total counter
    asyncjob_storage_errors_total{operation="open"} 0.0
    asyncjob_storage_errors_total{operation="write"} 3.0
    """

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    @staticmethod
    def family(errors: Mapping[str, int]) -> CounterMetricFamily:
        family = CounterMetricFamily(
            "asyncjob_storage_errors",
            "Failed storage attempts by operation: open (opening the database for writing, at "
            "start-up or retrying), write (committing a batch of changes), read (a stored job "
            "that could not be read at start-up: skipped, its row kept). Failed changes are "
            "kept and retried; /-/ready says why while it fails.",
            labels=["operation"],
        )
        for operation in OPERATIONS:
            family.add_metric([operation], errors.get(operation, 0))
        return family

    def describe(self) -> Iterator[Metric]:
        yield self.family({})

    def collect(self) -> Iterator[Metric]:
        yield self.family(self._storage.errors())
