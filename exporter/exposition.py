"""/metrics: the jobs' lines pre-rendered, as kube-state-metrics keeps them; the rest fresh.

A scrape used to rebuild every metric family of every job, so its cost grew with the number of
jobs whatever had changed. Here each job's sample lines are rendered once per version of its
record (records are immutable: a new object is a change) and kept as bytes, one chunk per metric
family. A scrape joins the chunks under each family's HELP and TYPE, then appends what is small
and always changing, rendered fresh by client_python: the sources' statistics, the build info,
the process's own metrics. When the store has not changed since the last scrape (its
`generation`), even the join is reused.

The sample lines are the same in the text format and in OpenMetrics (sorted labels, the same
escaping, Go float formatting), so one set of chunks serves both; only the headers differ, and
OpenMetrics ends with `# EOF`.

gzip: compressing 25 MB afresh per scrape costs about a second of CPU. Instead each family's
jobs are compressed in blocks of BLOCK jobs, each block a gzip member kept until one of its jobs
changes; the answer is the concatenation of members, which is one valid gzip stream (RFC 1952;
Go's reader, and so Prometheus, reads them all). A change recompresses one block per family.
"""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.utils import floatToGoString

from exporter.logging import redactor
from exporter.model import DOCUMENT_STATES, TASK_STATES, State

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import datetime

    from prometheus_client import CollectorRegistry

    from exporter.model import JobRecord

BLOCK = 256  # jobs per gzip member
GZIP_LEVEL = 6
TIMESTAMPS = {
    "created": "when the job was created",
    "last_update": "when the API last updated the job",
    "started": "when the job (or its first phase) started",
    "estimated_completion": "when the API expects the job to finish",
    "expiration": "when the API will discard the job and its results",
}

FINISHED_HELP = (
    "Unix time the job finished: the API's, or when the exporter saw it finish; absent while it "
    "runs, and for a job first seen finished whose API gives no time."
)


@dataclass(frozen=True, slots=True)
class Family:
    """One job metric family: its name, type and help (the poll note is appended per scrape)."""

    name: str
    type: str
    help: str

    @property
    def sample_name(self) -> str:
        return f"{self.name}_total" if self.type == "counter" else self.name

    def header(self, note: str, openmetrics: bool) -> str:
        doc = f"{self.help} {note}".replace("\\", r"\\").replace("\n", r"\n")
        if openmetrics:
            doc = doc.replace('"', r"\"")
            return f"# HELP {self.name} {doc}\n# TYPE {self.name} {self.type}\n"
        return f"# HELP {self.sample_name} {doc}\n# TYPE {self.sample_name} {self.type}\n"


FAMILIES = (
    Family("asyncjob_info", "gauge",
           "Job facts: the raw vendor status, the job's name, and its project (training jobs)."),
    Family("asyncjob_state", "gauge", "1 for the job's current canonical state, else 0."),
    Family("asyncjob_progress_ratio", "gauge", "Fraction of the job done (0..1)."),
    Family("asyncjob_tasks", "gauge", "Tasks of the job by state."),
    Family("asyncjob_documents", "gauge", "Documents of the batch by state."),
    Family("asyncjob_translation_characters_charged", "counter",
           "Characters the Translator API has charged for the batch."),
    Family("asyncjob_errors", "gauge", "Errors the API reports for the job."),
    Family("asyncjob_warnings", "gauge", "Warnings the API reports for the job."),
    *(Family(f"asyncjob_{key}_timestamp_seconds", "gauge", f"Unix time {doc}.")
      for key, doc in TIMESTAMPS.items()),
    Family("asyncjob_finished_timestamp_seconds", "gauge", FINISHED_HELP),
    Family("asyncjob_up", "gauge", "1 if the latest poll of the job succeeded, else 0."),
    Family("asyncjob_last_poll_error_info", "gauge",
           "Why the latest poll of the job failed; present only while it is failing."),
    Family("asyncjob_last_poll_success_timestamp_seconds", "gauge",
           "Unix time of the job's last successful poll."),
    Family("asyncjob_last_progress_change_timestamp_seconds", "gauge",
           "Unix time the exporter last saw the job's state or progress change."),
)  # fmt: skip
_INDEX = {family.name: i for i, family in enumerate(FAMILIES)}
_go_float = cast("Callable[[float], str]", floatToGoString)  # client_python's own formatting
Chunks = tuple[bytes, ...]  # one per FAMILIES entry


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class _Lines:
    """The sample lines of one job, family by family (labels sorted, as client_python does)."""

    def __init__(self, record: JobRecord) -> None:
        # A job ID or project comes from the config, the jobs API or a webhook: masked like
        # every label, in case a secret was pasted there (the record keeps the real one).
        self._base = {"provider": record.provider, "source": record.source,
                      "job_id": redactor.mask(record.job_id)}  # fmt: skip
        self.out: list[list[str]] = [[] for _ in FAMILIES]

    def add(self, family: str, value: float, **labels: str) -> None:
        pairs = sorted({**self._base, **labels}.items())
        text = ",".join(f'{key}="{_escape(val)}"' for key, val in pairs)
        name = FAMILIES[_INDEX[family]].sample_name
        self.out[_INDEX[family]].append(f"{name}{{{text}}} {_go_float(value)}\n")

    def chunks(self) -> Chunks:
        return tuple("".join(lines).encode() for lines in self.out)


def _seconds(when: datetime | None) -> float | None:
    return None if when is None else when.timestamp()


def render_job(record: JobRecord) -> Chunks:
    """One job's sample lines, one chunk per family (empty where it has none)."""
    lines = _Lines(record)
    lines.add("asyncjob_up", 1.0 if record.up else 0.0)
    if record.last_error is not None:
        lines.add("asyncjob_last_poll_error_info", 1.0, reason=record.last_error.value)
    snap = record.snapshot
    if snap is None:  # never polled successfully: asyncjob_up 0 is all there is to say
        return lines.chunks()
    project = redactor.mask(record.project or "")
    lines.add("asyncjob_info", 1.0, vendor_status=snap.vendor_status,
              display_name=snap.display_name, project=project)  # fmt: skip
    for state in State:
        lines.add("asyncjob_state", 1.0 if state is snap.state else 0.0, state=state.value)
    for phase, ratio in snap.progress.items():
        lines.add("asyncjob_progress_ratio", ratio, phase=phase)
    for family, states, counts in (
        ("asyncjob_tasks", TASK_STATES, snap.tasks),
        ("asyncjob_documents", DOCUMENT_STATES, snap.documents),
    ):
        for state_name in states:  # those the API reports (zeros too), in the vocabulary's order
            if state_name in counts:
                lines.add(family, counts[state_name], state=state_name)
    optional = (
        ("asyncjob_translation_characters_charged", snap.characters_charged),
        ("asyncjob_errors", snap.errors),
        ("asyncjob_warnings", snap.warnings),
        *(
            (f"asyncjob_{key}_timestamp_seconds", _seconds(getattr(snap, key)))
            for key in TIMESTAMPS
        ),
        ("asyncjob_finished_timestamp_seconds", _seconds(record.finished_at)),
        ("asyncjob_last_poll_success_timestamp_seconds", _seconds(record.last_poll_success)),
        ("asyncjob_last_progress_change_timestamp_seconds", _seconds(record.last_progress_change)),
    )
    for family, value in optional:
        if value is not None:  # absent where the API does not give it
            lines.add(family, value)
    return lines.chunks()


class Jobs(Protocol):
    """What a render reads of the store."""

    @property
    def generation(self) -> int: ...

    def jobs(self) -> tuple[JobRecord, ...]: ...


@dataclass(slots=True)
class _Rendered:
    """The jobs' part of one render: per family, the joined lines and the gzip members."""

    generation: int
    records: tuple[JobRecord, ...]
    chunks: tuple[Chunks, ...]
    joined: tuple[bytes, ...]
    members: tuple[tuple[bytes, ...], ...] | None = None


class Exposition:
    """Renders /metrics: pre-rendered job families, then `registry` fresh. One render at a time
    (its lock guards the caches); SharedRender lets concurrent scrapes share a render."""

    def __init__(
        self,
        registry: CollectorRegistry,
        store: Jobs | None = None,
        poll_note: Callable[[], str] = lambda: "",
    ) -> None:
        self.registry = registry
        self._store = store
        self._poll_note = poll_note
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[JobRecord, Chunks]] = {}
        self._rendered: _Rendered | None = None
        self._blocks: dict[tuple[int, int], tuple[tuple[JobRecord, ...], bytes]] = {}

    def render(self, openmetrics: bool, gzipped: bool, names: Sequence[str] = ()) -> list[bytes]:
        """The body, as parts to send in order (gzip members when `gzipped`)."""
        with self._lock:
            wanted = [
                i for i, f in enumerate(FAMILIES) if not names or f.sample_name in names
            ]  # fmt: skip
            jobs = self._jobs(gzipped)
            note = self._poll_note()
            registry = self.registry.restricted_registry(names) if names else self.registry
            fresh = (generate_openmetrics if openmetrics else generate_latest)(registry)
            parts: list[bytes] = []
            for i in wanted:  # a family no job has yet still gets its HELP and TYPE
                header = FAMILIES[i].header(note, openmetrics).encode()
                if gzipped:
                    assert jobs.members is not None
                    parts.append(gzip.compress(header, GZIP_LEVEL))
                    parts.extend(jobs.members[i])
                else:
                    parts += [header, jobs.joined[i]]
            parts.append(gzip.compress(fresh, GZIP_LEVEL) if gzipped else fresh)
            return parts

    def _jobs(self, gzipped: bool) -> _Rendered:
        """The jobs' part, re-rendered only for the records that changed."""
        store = self._store
        generation = -1 if store is None else store.generation
        rendered = self._rendered
        if rendered is None or rendered.generation != generation or generation < 0:
            records = () if store is None else store.jobs()
            cache, chunks = {}, []
            for record in records:
                key = (record.source, record.job_id)
                cached = self._cache.get(key)
                if cached is None or cached[0] is not record:
                    cached = (record, render_job(record))
                cache[key] = cached
                chunks.append(cached[1])
            self._cache = cache
            joined = tuple(b"".join(job[i] for job in chunks) for i in range(len(FAMILIES)))
            rendered = self._rendered = _Rendered(generation, records, tuple(chunks), joined)
        if gzipped and rendered.members is None:
            rendered.members = self._compress(rendered)
        return rendered

    def _compress(self, rendered: _Rendered) -> tuple[tuple[bytes, ...], ...]:
        """Each family's jobs as gzip members of BLOCK jobs, each kept while its jobs stay."""
        blocks: dict[tuple[int, int], tuple[tuple[JobRecord, ...], bytes]] = {}
        members: list[tuple[bytes, ...]] = []
        records, chunks = rendered.records, rendered.chunks
        for i in range(len(FAMILIES)):
            family: list[bytes] = []
            for start in range(0, len(records), BLOCK):
                block = records[start : start + BLOCK]
                kept = self._blocks.get((i, start))
                if (
                    kept is None
                    or len(kept[0]) != len(block)
                    or any(a is not b for a, b in zip(kept[0], block, strict=True))
                ):
                    data = b"".join(job[i] for job in chunks[start : start + BLOCK])
                    kept = (block, gzip.compress(data, GZIP_LEVEL) if data else b"")
                blocks[i, start] = kept
                if kept[1]:
                    family.append(kept[1])
            members.append(tuple(family))
        self._blocks = blocks
        return tuple(members)
