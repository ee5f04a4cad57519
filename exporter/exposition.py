"""/metrics: the jobs' lines pre-rendered, as kube-state-metrics keeps them; the rest fresh.

A scrape used to rebuild every metric family of every job, so its cost grew with the number of
jobs whatever had changed. Here each job's sample lines are rendered once per version of its
record (records are immutable: a new object is a change) and kept as bytes, one chunk per metric
family. A scrape joins the chunks under each family's HELP and TYPE, then appends what is small
and always changing, rendered fresh by client_python: the sources' statistics, the build info,
the process's own metrics. When the store has not changed since the last scrape (its
`generation`), even the join is reused.

Each job family is one `JobFamily` in FAMILIES: its name, type, help, labels and the function
that yields a job's samples, together (as kube-state-metrics' FamilyGenerator). A new fact about
a job is one more entry there, reading the field of the snapshot or record that holds it.

Which `asyncjob_` families are exported at all is an Exposition's `selection` (the flags
--metric-allowlist and --metric-denylist; selection.py): a job family left out is not rendered,
so none of its bytes are held, and the registry's families are filtered on the way out.

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
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol, cast

from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from exporter.logging import redactor
from exporter.model import DOCUMENT_STATES, LOSS_SPLITS, TASK_STATES, TOKEN_KINDS, State
from exporter.selection import Selection

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
    from datetime import datetime

    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from exporter.model import JobRecord, JobSnapshot

BLOCK = 256  # jobs per gzip member
GZIP_LEVEL = 6

JOB_LABELS = ("job_id", "provider", "source")
"""The labels of every job family's samples, naming the job (in the order they sort in)."""

Sample = tuple["Mapping[str, str]", float]
"""One sample of a job: its labels beyond JOB_LABELS (a family's `labels`), and its value."""

_go_float = cast("Callable[[float], str]", floatToGoString)  # client_python's own formatting


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


@dataclass(frozen=True, slots=True)
class JobFamily:
    """One job metric family, whole: its name, type, help, the labels its samples carry besides
    JOB_LABELS, and `samples`, which yields one job's samples from its record (as
    kube-state-metrics' FamilyGenerator), so that no family is declared in one place and
    filled in another. A job without a sample in it is left out of the family.

    `samples` runs for every changed job (50,000 on a first scrape): it only reads the record.
    That its samples carry exactly `labels` is checked by the tests, not here per sample."""

    name: str
    type: str  # "gauge" or "counter" (whose samples are named NAME_total)
    help: str  # the poll note is appended per scrape
    labels: tuple[str, ...]
    samples: Callable[[JobRecord], Iterable[Sample]]
    # A sample line with a %s per label (all of them sorted, as client_python writes them) and
    # one for the value; and where the job's and the sample's values go in it.
    _line: str = field(init=False, repr=False, compare=False)
    _order: Callable[[tuple[str, ...]], tuple[str, ...]] | None = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.type not in {"gauge", "counter"}:
            raise ValueError(f"{self.name}: a job family is a gauge or a counter")
        if set(self.labels) & set(JOB_LABELS) or len(set(self.labels)) < len(self.labels):
            raise ValueError(f"{self.name}: labels must be new and distinct: {self.labels}")
        given = (*JOB_LABELS, *self.labels)
        names = sorted(given)
        pairs = ",".join(f'{name}="%s"' for name in names)
        object.__setattr__(self, "_line", f"{self.sample_name}{{{pairs}}} %s\n")
        order = [given.index(name) for name in names]
        keep = order == list(range(len(given)))
        object.__setattr__(self, "_order", None if keep else itemgetter(*order, len(given)))

    @property
    def sample_name(self) -> str:
        return f"{self.name}_total" if self.type == "counter" else self.name

    def header(self, note: str, openmetrics: bool) -> str:
        doc = f"{self.help} {note}".replace("\\", r"\\").replace("\n", r"\n")
        if openmetrics:
            doc = doc.replace('"', r"\"")
            return f"# HELP {self.name} {doc}\n# TYPE {self.name} {self.type}\n"
        return f"# HELP {self.sample_name} {doc}\n# TYPE {self.sample_name} {self.type}\n"

    def render(self, record: JobRecord, job: tuple[str, ...]) -> bytes:
        """The job's sample lines; `job` holds its JOB_LABELS values, escaped."""
        line, order, own = self._line, self._order, self.labels
        if not own:  # the most common case, and the cheapest
            lines = [line % (*job, _go_float(value)) for _, value in self.samples(record)]
        else:
            values = [
                (*job, *[_escape(labels[key]) for key in own], _go_float(value))
                for labels, value in self.samples(record)
            ]
            lines = [line % (v if order is None else order(v)) for v in values]
        return "".join(lines).encode()


# -- the samples of a family, by kind --------------------------------------------------------

NO_LABELS: Mapping[str, str] = MappingProxyType({})


def _seconds(when: datetime | None) -> float | None:
    return None if when is None else when.timestamp()


def _of_snapshot(
    value: Callable[[JobSnapshot], float | None],
) -> Callable[[JobRecord], Iterable[Sample]]:
    """One number the last poll gave; no sample where the API gave none."""

    def samples(record: JobRecord) -> Iterable[Sample]:
        snap = record.snapshot
        number = None if snap is None else value(snap)
        return () if number is None else ((NO_LABELS, number),)

    return samples


def _of_polled(
    value: Callable[[JobRecord], float | None],
) -> Callable[[JobRecord], Iterable[Sample]]:
    """One number the record holds (not the snapshot): like every family but asyncjob_up and
    the poll error, none for a job never polled successfully; none where it is unknown."""

    def samples(record: JobRecord) -> Iterable[Sample]:
        number = None if record.snapshot is None else value(record)
        return () if number is None else ((NO_LABELS, number),)

    return samples


def _each(
    mapping: Callable[[JobSnapshot], Mapping[str, float]],
    label: str,
    vocabulary: Sequence[str] | None = None,
) -> Callable[[JobRecord], Iterable[Sample]]:
    """One sample per key of a mapping the last poll gave, the key as `label`: in the order of
    `vocabulary` where it has one (the snapshot holds no key outside it), else in the mapping's
    own. A key the API does not report has no sample, rather than a made-up 0."""
    words = None if vocabulary is None else [(word, {label: word}) for word in vocabulary]

    def samples(record: JobRecord) -> Iterable[Sample]:
        snap = record.snapshot
        found = None if snap is None else mapping(snap)
        if not found:
            return ()
        if words is None:
            return [({label: key}, value) for key, value in found.items()]
        return [(labels, found[word]) for word, labels in words if word in found]

    return samples


_STATES = [(state, {"state": state.value}) for state in State]


def _state(record: JobRecord) -> Iterable[Sample]:
    snap = record.snapshot
    if snap is None:
        return ()
    return [(labels, 1.0 if state is snap.state else 0.0) for state, labels in _STATES]


def _info(record: JobRecord) -> Iterable[Sample]:
    snap = record.snapshot
    if snap is None:
        return ()
    # A project comes from the config, the jobs API or a webhook: masked like every label, in
    # case a secret was pasted there (the record keeps the real one).
    project = redactor.mask(record.project or "")
    facts = {"vendor_status": snap.vendor_status, "display_name": snap.display_name,
             "project": project}  # fmt: skip
    return ((facts, 1.0),)


def _up(record: JobRecord) -> Iterable[Sample]:
    return ((NO_LABELS, 1.0 if record.up else 0.0),)


def _poll_error(record: JobRecord) -> Iterable[Sample]:
    error = record.last_error
    return () if error is None else (({"reason": error.value}, 1.0),)


def _last_progress_change(record: JobRecord) -> float | None:
    """Where the API tells how far the job is: else no stall can be told from it, and none is
    claimed (an alert on this time would fire for every long job of such an API)."""
    snap = record.snapshot
    return _seconds(record.last_progress_change) if snap and snap.shows_progress else None


def _snapshot_time(key: str) -> Callable[[JobRecord], Iterable[Sample]]:
    when = attrgetter(key)
    return _of_snapshot(lambda snap: _seconds(when(snap)))


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

# Every job family, in the order /metrics lists them. A new one is one more entry, with the
# snapshot field it reads (storage keeps every field without being told).
FAMILIES = (
    JobFamily("asyncjob_info", "gauge",
              "Job facts: the raw vendor status, the job's name, and its project (training jobs).",
              ("vendor_status", "display_name", "project"), _info),
    JobFamily("asyncjob_state", "gauge", "1 for the job's current canonical state, else 0.",
              ("state",), _state),
    JobFamily("asyncjob_progress_ratio", "gauge", "Fraction of the job done (0..1).",
              ("phase",), _each(lambda snap: snap.progress, "phase")),
    JobFamily("asyncjob_tasks", "gauge", "Tasks of the job by state.",
              ("state",), _each(lambda snap: snap.tasks, "state", TASK_STATES)),
    JobFamily("asyncjob_documents", "gauge", "Documents of the batch by state.",
              ("state",), _each(lambda snap: snap.documents, "state", DOCUMENT_STATES)),
    JobFamily("asyncjob_translation_characters_charged", "counter",
              "Characters the Translator API has charged for the batch.",
              (), _of_snapshot(lambda snap: snap.characters_charged)),
    JobFamily("asyncjob_tokens", "counter",
              "Tokens the job has used, by kind: input and output (LLM batches), trained "
              "(fine-tuning).",
              ("kind",), _each(lambda snap: snap.tokens, "kind", TOKEN_KINDS)),
    JobFamily("asyncjob_training_step", "gauge",
              "The step of the job's newest training metrics (fine-tuning, while it runs).",
              (), _of_snapshot(lambda snap: snap.training_step)),
    JobFamily("asyncjob_training_loss", "gauge",
              "The loss at the job's newest training step, on the training data (train) and "
              "the validation data (valid).",
              ("split",), _each(lambda snap: snap.training_loss, "split", LOSS_SPLITS)),
    JobFamily("asyncjob_errors", "gauge", "Errors the API reports for the job.",
              (), _of_snapshot(lambda snap: snap.errors)),
    JobFamily("asyncjob_warnings", "gauge", "Warnings the API reports for the job.",
              (), _of_snapshot(lambda snap: snap.warnings)),
    *(JobFamily(f"asyncjob_{key}_timestamp_seconds", "gauge", f"Unix time {doc}.",
                (), _snapshot_time(key))
      for key, doc in TIMESTAMPS.items()),
    JobFamily("asyncjob_finished_timestamp_seconds", "gauge", FINISHED_HELP,
              (), _of_polled(lambda record: _seconds(record.finished_at))),
    JobFamily("asyncjob_up", "gauge", "1 if the latest poll of the job succeeded, else 0.",
              (), _up),
    JobFamily("asyncjob_last_poll_error_info", "gauge",
              "Why the latest poll of the job failed; present only while it is failing.",
              ("reason",), _poll_error),
    JobFamily("asyncjob_last_poll_success_timestamp_seconds", "gauge",
              "Unix time of the job's last successful poll.",
              (), _of_polled(lambda record: _seconds(record.last_poll_success))),
    JobFamily("asyncjob_last_progress_change_timestamp_seconds", "gauge",
              "Unix time the exporter last saw the job's state or progress change.",
              (), _of_polled(_last_progress_change)),
)  # fmt: skip
Chunks = tuple[bytes, ...]  # one per family rendered


def render_job(record: JobRecord, families: Sequence[JobFamily]) -> Chunks:
    """One job's sample lines, one chunk per family of `families` (empty where it has none)."""
    # A job ID comes from the config, the jobs API or a webhook: masked like every label, in
    # case a secret was pasted there (the record keeps the real one).
    job = (_escape(redactor.mask(record.job_id)), _escape(record.provider), _escape(record.source))
    return tuple(family.render(record, job) for family in families)


class _Collects(Protocol):
    """A registry, or a part of one (client_python's restricted registry)."""

    def collect(self) -> Iterable[Metric]: ...


class _Selected(Collector):
    """What a registry collects, less the families the selection leaves out."""

    def __init__(self, registry: _Collects, selection: Selection) -> None:
        self._registry = registry
        self._selection = selection

    def collect(self) -> Iterator[Metric]:
        keeps = self._selection.keeps
        return (metric for metric in self._registry.collect() if keeps(metric.name, metric.type))


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
    (its lock guards the caches); SharedRender lets concurrent scrapes share a render.

    `selection` (--metric-allowlist, --metric-denylist) says which `asyncjob_` families are
    exported, of the jobs' and of the registry's: a job family left out is never rendered, so
    no byte of it is held."""

    def __init__(
        self,
        registry: CollectorRegistry,
        store: Jobs | None = None,
        poll_note: Callable[[], str] = lambda: "",
        selection: Selection | None = None,
    ) -> None:
        self.registry = registry
        self._selection = selection or Selection()
        self.families = tuple(f for f in FAMILIES if self._selection.keeps(f.name, f.type))
        self._store = store
        self._poll_note = poll_note
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[JobRecord, Chunks]] = {}
        self._rendered: _Rendered | None = None
        self._blocks: dict[tuple[int, int], tuple[tuple[JobRecord, ...], bytes]] = {}

    def render(self, openmetrics: bool, gzipped: bool, names: Sequence[str] = ()) -> list[bytes]:
        """The body, as parts to send in order (gzip members when `gzipped`)."""
        with self._lock:
            families = self.families
            wanted = [
                i for i, f in enumerate(families) if not names or f.sample_name in names
            ]  # fmt: skip
            jobs = self._jobs(gzipped)
            note = self._poll_note()
            registry: _Collects = (
                self.registry.restricted_registry(names) if names else self.registry
            )
            if self._selection.patterns:
                registry = _Selected(registry, self._selection)
            fresh = (generate_openmetrics if openmetrics else generate_latest)(registry)
            parts: list[bytes] = []
            for i in wanted:  # a family no job has yet still gets its HELP and TYPE
                header = families[i].header(note, openmetrics).encode()
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
                    cached = (record, render_job(record, self.families))
                cache[key] = cached
                chunks.append(cached[1])
            self._cache = cache
            joined = tuple(b"".join(job[i] for job in chunks) for i in range(len(self.families)))
            rendered = self._rendered = _Rendered(generation, records, tuple(chunks), joined)
        if gzipped and rendered.members is None:
            rendered.members = self._compress(rendered)
        return rendered

    def _compress(self, rendered: _Rendered) -> tuple[tuple[bytes, ...], ...]:
        """Each family's jobs as gzip members of BLOCK jobs, each kept while its jobs stay."""
        blocks: dict[tuple[int, int], tuple[tuple[JobRecord, ...], bytes]] = {}
        members: list[tuple[bytes, ...]] = []
        records, chunks = rendered.records, rendered.chunks
        for i in range(len(self.families)):
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
