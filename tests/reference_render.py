"""The oracle of the pre-rendered exposition: /metrics as it was built before it (exporter
version 0.x, `exporter/collector.py` before issue 9), every family afresh from client_python's
metric families on each scrape. Kept verbatim but for this docstring and the families added
since, each added here as the old collector would have had it (issue 15: the finish time, the
characters counter), so that tests can compare the fast path, sample for sample, with the old
one.
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
from exporter.logging import redactor
from exporter.model import DOCUMENT_STATES, TASK_STATES, ErrorReason, State
from exporter.store import DURATION_BUCKETS, REQUEST_BUCKETS
from exporter.values import format_duration

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from datetime import datetime

    from prometheus_client.metrics_core import Metric

    from exporter.model import JobRecord
    from exporter.store import SourceStats, Store

JOB_LABELS = ["provider", "source", "job_id"]
SOURCE_LABELS = ["provider", "source"]
TIMESTAMPS = {
    "created": "when the job was created",
    "last_update": "when the API last updated the job",
    "started": "when the job (or its first phase) started",
    "estimated_completion": "when the API expects the job to finish",
    "expiration": "when the API will discard the job and its results",
}


def _cumulative(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """Per-bucket counts (then +Inf) as the cumulative (le, count) pairs a histogram wants."""
    total, buckets = 0, []
    for bound, n in zip((*bounds, float("inf")), counts, strict=True):
        total += n
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
    return buckets


def _seconds(when: datetime | None) -> float | None:
    return None if when is None else when.timestamp()


class _Families:
    """The metric families of one scrape, built from one consistent read of the store."""

    def __init__(self, polled: str) -> None:
        def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, f"{doc} {polled}", labels=[*JOB_LABELS, *labels])

        self.info = gauge(
            "asyncjob_info",
            "Job facts: the raw vendor status, the job's name, and its project (training jobs).",
            ["vendor_status", "display_name", "project"],
        )
        self.state = gauge("asyncjob_state", "1 for the job's current canonical state, else 0.",
                           ["state"])  # fmt: skip
        self.progress = gauge("asyncjob_progress_ratio", "Fraction of the job done (0..1).",
                              ["phase"])  # fmt: skip
        self.tasks = gauge("asyncjob_tasks", "Tasks of the job by state.", ["state"])
        self.documents = gauge("asyncjob_documents", "Documents of the batch by state.", ["state"])
        self.characters = CounterMetricFamily(
            "asyncjob_translation_characters_charged",
            f"Characters the Translator API has charged for the batch. {polled}",
            labels=JOB_LABELS,
        )
        self.tokens = CounterMetricFamily(
            "asyncjob_tokens",
            "Tokens the job has used, by kind: input and output (LLM batches), trained "
            f"(fine-tuning). {polled}",
            labels=[*JOB_LABELS, "kind"],
        )
        self.training_step = gauge(
            "asyncjob_training_step",
            "The step of the job's newest training metrics (fine-tuning, while it runs).",
        )
        self.training_loss = gauge(
            "asyncjob_training_loss",
            "The loss at the job's newest training step, on the training data (train) and the "
            "validation data (valid).",
            ["split"],
        )
        self.errors = gauge("asyncjob_errors", "Errors the API reports for the job.")
        self.warnings = gauge("asyncjob_warnings", "Warnings the API reports for the job.")
        self.times = {
            key: gauge(f"asyncjob_{key}_timestamp_seconds", f"Unix time {doc}.")
            for key, doc in TIMESTAMPS.items()
        }
        self.finished_time = gauge(
            "asyncjob_finished_timestamp_seconds",
            "Unix time the job finished: the API's, or when the exporter saw it finish; absent "
            "while it runs, and for a job first seen finished whose API gives no time.",
        )
        self.up = gauge("asyncjob_up", "1 if the latest poll of the job succeeded, else 0.")
        self.poll_error = gauge(
            "asyncjob_last_poll_error_info",
            "Why the latest poll of the job failed; present only while it is failing.",
            ["reason"],
        )
        self.last_success = gauge(
            "asyncjob_last_poll_success_timestamp_seconds",
            "Unix time of the job's last successful poll.",
        )
        self.last_change = gauge(
            "asyncjob_last_progress_change_timestamp_seconds",
            "Unix time the exporter last saw the job's state or progress change.",
        )
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
            "Webhook calls by result (registered, known, unauthorized, invalid, refused).",
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
        self.characters_charged = CounterMetricFamily(
            "asyncjob_characters_charged",
            "Characters the API charged for the source's jobs (Translator batches): each job's "
            "increase counted once, as polls report it; across restarts too, and after the job is "
            "dropped.",
            labels=SOURCE_LABELS,
        )
        self.source_tokens = CounterMetricFamily(
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

    def add_job(self, record: JobRecord) -> None:
        # The exposition masks the labels that come from config or clients, as the redactor
        # does for every exit; the oracle says the same of the same record.
        key = [record.provider, record.source, redactor.mask(record.job_id)]
        self.up.add_metric(key, 1.0 if record.up else 0.0)
        if record.last_error is not None:
            self.poll_error.add_metric([*key, record.last_error.value], 1.0)
        snap = record.snapshot
        if snap is None:  # never polled successfully: asyncjob_up 0 is all there is to say
            return
        info = [snap.vendor_status, snap.display_name, redactor.mask(record.project or "")]
        self.info.add_metric([*key, *info], 1.0)
        for state in State:
            self.state.add_metric([*key, state.value], 1.0 if state is snap.state else 0.0)
        for phase, ratio in snap.progress.items():
            self.progress.add_metric([*key, phase], ratio)
        breakdowns = (
            (self.tasks, TASK_STATES, snap.tasks),
            (self.documents, DOCUMENT_STATES, snap.documents),
            (self.tokens, ("input", "output", "trained"), snap.tokens),
            (self.training_loss, ("train", "valid"), snap.training_loss),
        )
        for family, states, counts in breakdowns:  # the states the API reported, in order
            for state_name, n in sorted(counts.items(), key=lambda kv: states.index(kv[0])):
                family.add_metric([*key, state_name], n)
        optional: list[tuple[GaugeMetricFamily | CounterMetricFamily, float | None]] = [
            (self.characters, snap.characters_charged),
            (self.training_step, snap.training_step),
            (self.errors, snap.errors),
            (self.warnings, snap.warnings),
            *((family, _seconds(getattr(snap, name))) for name, family in self.times.items()),
            (self.finished_time, _seconds(record.finished_at)),
            (self.last_success, _seconds(record.last_poll_success)),
            (
                self.last_change,
                _seconds(record.last_progress_change)
                if snap.progress or snap.training_step is not None
                else None,
            ),
        ]
        for target, value in optional:
            if value is not None:  # absent where the API does not give it
                target.add_metric(key, value)

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
        self.characters_charged.add_metric(key, tally.characters)
        for kind in ("input", "output", "trained"):
            self.source_tokens.add_metric([*key, kind], tally.tokens[kind])
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
        yield self.info
        yield self.state
        yield self.progress
        yield self.tasks
        yield self.documents
        yield self.characters
        yield self.tokens
        yield self.training_step
        yield self.training_loss
        yield self.errors
        yield self.warnings
        yield from self.times.values()
        yield self.finished_time
        yield self.up
        yield self.poll_error
        yield self.last_success
        yield self.last_change
        yield self.requests
        yield self.request_errors
        yield self.duration
        yield self.tracked
        yield self.rejected
        yield self.delayed
        yield self.finished
        yield self.job_duration
        yield self.characters_charged
        yield self.source_tokens
        yield self.dropped
        yield self.discovered
        yield self.webhooks


class JobCollector(Collector):
    """Exposes every configured job and every source's request statistics."""

    def __init__(self, store: Store, poll_interval: Callable[[], float]) -> None:
        self._store = store
        self._poll_interval = poll_interval

    def _build(self, jobs: Iterable[JobRecord], sources: Iterable[SourceStats]) -> _Families:
        every = format_duration(self._poll_interval())
        families = _Families(
            f"Polled in the background every {every} by default (per-source poll_interval), "
            "not at scrape time."
        )
        families.build.add_metric([__version__, platform.python_version()], 1.0)
        for record in jobs:
            families.add_job(record)
        for stats in sources:
            families.add_source(stats)
        return families

    def describe(self) -> Iterator[Metric]:
        return self._build((), ()).all()

    def collect(self) -> Iterator[Metric]:
        return self._build(self._store.jobs(), self._store.source_stats()).all()
