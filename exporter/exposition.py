"""/metrics: the jobs' lines pre-rendered, as kube-state-metrics keeps them; the rest fresh.

A scrape used to rebuild every metric family of every job, so its cost grew with the number of
jobs whatever had changed. Here each job's sample lines are rendered once per version of its
record (records are immutable: a new object is a change) and held once, in blocks: a block is a
run of about BLOCK jobs with, per family, their lines joined, and how many bytes each job has in
them (so that a block built again takes the lines of its unchanged jobs from the old one, runs
of them at once, and renders only the changed ones). A scrape sends each family's HELP and TYPE,
then its lines block by block, then what is small and always changing, rendered fresh by
client_python: the sources' statistics, the build info, the process's own metrics (a family's
text is kept while it collects the same: client_python's encoder cost most of a scrape of an
unchanged store). When the store has not changed since the last scrape (its `generation`),
nothing of the jobs is touched.

Finished jobs come first, then the others, each in the store's order: a finished job changes
no more, so the blocks of finished jobs stay while those of running jobs are built again, and a
scrape whose running tenth changed costs a tenth of one that rebuilt everything. Blocks are cut
after each job whose ID hashes to a multiple of BLOCK, so a job that comes or goes changes the
block it is in, not every block after it.

Each job family is one `JobFamily` in FAMILIES: its name, type, help, labels and the function
that yields a job's samples, together (as kube-state-metrics' FamilyGenerator). A new fact about
a job is one more entry there, reading the field of the snapshot or record that holds it.

Which `asyncjob_` families are exported at all is an Exposition's `selection` (the flags
--metric-allowlist and --metric-denylist; selection.py): a job family left out is not rendered,
so none of its bytes are held, and the registry's families are filtered on the way out.

The sample lines are the same in the text format and in OpenMetrics (sorted labels, the same
escaping, Go float formatting), so one set of blocks serves both; only the headers differ, and
OpenMetrics ends with `# EOF`.

gzip: compressing 25 MB afresh per scrape costs about a second of CPU. Instead each block's
lines of each family are kept as a raw deflate segment that refers to nothing before it and
ends byte-aligned (Z_FULL_FLUSH), made once per block; the headers' segments are kept until the
poll note changes. The answer is one gzip member: a fixed header, the segments in order, the
fresh part compressed per scrape, an empty final block and a trailer whose CRC-32 runs over the
uncompressed bytes (zlib.crc32 chained over the blocks' lines once per change of the store, at
some 4 GB/s; then over the fresh part per scrape). One member, not one per block as before:
urllib3 2.6+ garbles a body of several. Finished blocks are compressed at GZIP_LEVEL, the
running jobs' blocks, compressed again as they change, at CHURN_LEVEL.

Measured at 10,000 jobs (benchmarks/scale.py's; the render alone, in-process, medians): an
unchanged gzip scrape took 2.9 ms, of which client_python's encoding of the fresh part was 2 ms
and 23 gzip.compress calls most of the rest; it takes 0.22 ms (SourceCollector keeps its
families while the statistics stay; the process collector's reads of /proc are most of it). A
scrape after the running tenth changed took 330 ms (every block of every family compressed
again, at level 6); it takes 60 ms, most of it rendering the changed jobs. A first render took
0.84 s; it takes 0.32 s (per-family calls for runs of jobs, a line template generated per
family, numbers written lately kept, instead of one call per job and family). The first
render of those 10,000 jobs restored from storage (the minimum of 7) took 0.20 s; it takes
0.11 s with the loops of Number and Keyed families, and 0.67 s at 50,000 jobs (1.15 s before).
"""

from __future__ import annotations

import gzip
import struct
import threading
import zlib
from array import array
from dataclasses import dataclass, field
from functools import partial
from itertools import accumulate
from math import copysign
from operator import attrgetter
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, cast

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

BLOCK = 1024  # jobs per block, on average (a power of two)
MAX_BLOCK = 4 * BLOCK
GZIP_LEVEL = 6  # of the blocks of finished jobs, which change no more, and of the headers
CHURN_LEVEL = 1  # of the blocks of jobs still polled, compressed again as they change
FRESH_LEVEL = 1  # of the registry's part, compressed on every gzip scrape

JOB_LABELS = ("job_id", "provider", "source")
"""The labels of every job family's samples, naming the job (in the order they sort in)."""

Sample = tuple["Mapping[str, str]", float]
"""One sample of a job: its labels beyond JOB_LABELS (a family's `labels`), and its value."""

_go_float = cast("Callable[[float], str]", floatToGoString)  # client_python's own formatting


_WRITTEN: dict[float, str] = {}  # numbers written lately (times many jobs share), by value
WRITTEN = 16384


def _go(value: float) -> str:
    """floatToGoString, byte for byte, at a fraction of its cost: the two values most samples
    have first (not -0.0, which Go keeps), then the numbers written lately (a listing's time
    is every job's last success), then no checks for the infinities and NaN, whose repr ends
    in a letter, until one comes."""
    if value == 1.0:
        return "1.0"
    if value == 0.0 and copysign(1.0, value) > 0:
        return "0.0"
    text = _WRITTEN.get(value)
    if text is not None and value:  # equal values are written alike, but for -0.0
        return text
    text = repr(float(value))
    if text[-1] > "9":
        return _go_float(value)
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go writes an exponent sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        text = f"{mantissa}e+{dot - 1:02d}"
    if len(_WRITTEN) >= WRITTEN:
        _WRITTEN.clear()
    _WRITTEN[value] = text
    return text


def _escape(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:  # rare: three searches are cheaper
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


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
    _render_many: Callable[
        [Sequence[JobRecord], Sequence[tuple[str, ...]]], tuple[str, list[int]]
    ] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.type not in {"gauge", "counter"}:
            raise ValueError(f"{self.name}: a job family is a gauge or a counter")
        if set(self.labels) & set(JOB_LABELS) or len(set(self.labels)) < len(self.labels):
            raise ValueError(f"{self.name}: labels must be new and distinct: {self.labels}")
        object.__setattr__(self, "_render_many", self._renderer())

    def _renderer(
        self,
    ) -> Callable[[Sequence[JobRecord], Sequence[tuple[str, ...]]], tuple[str, list[int]]]:
        """render_many for this family, generated once (as dataclasses generates __init__):
        a sample line with a %s per label, all of them sorted as client_python writes them,
        filled from a tuple written out in that order, and where the job's labels sort side
        by side (in most families), one %s for the three, written once per job (_job_labels).
        Any loop over the labels, or a reordering call, per sample, cost a third more. A family
        of one number a job (`Number`) and one whose samples follow from a value that many
        jobs share (`Keyed`) each have a loop of their own: see those."""
        names = sorted((*JOB_LABELS, *self.labels))
        at = names.index(JOB_LABELS[0])
        together = tuple(names[at : at + len(JOB_LABELS)]) == JOB_LABELS
        if together:
            around = (names[:at], names[at + len(JOB_LABELS) :])
            pairs = ",".join([*(f'{n}="%s"' for n in around[0]), "%s",
                              *(f'{n}="%s"' for n in around[1])])  # fmt: skip
            values = [*(f"escape(labels[{n!r}])" for n in around[0]), "job[-1]",
                      *(f"escape(labels[{n!r}])" for n in around[1])]  # fmt: skip
        else:
            pairs = ",".join(f'{name}="%s"' for name in names)
            values = [
                f"job[{JOB_LABELS.index(n)}]" if n in JOB_LABELS else f"escape(labels[{n!r}])"
                for n in names
            ]
        line = f"{self.sample_name}{{{pairs}}} %s\n"
        if isinstance(self.samples, Number):
            loop = (
                "        value = number(record)\n"
                "        if value is None:\n"
                "            size(0)\n"
                "            continue\n"
                f"        text = line % ({', '.join(values)}, go(value))\n"
            )
        elif isinstance(self.samples, Keyed):
            # By id: an entry holds its shared value, so no other object has that id meanwhile.
            fill = "job[-1].join(known[0])" if together else "known[0] % (job[:-1] * known[1])"
            loop = (
                "        shared = key(record)\n"
                "        if shared is None:\n"
                "            size(0)\n"
                "            continue\n"
                "        known = written.get(id(shared))\n"
                "        if known is None:\n"
                "            known = written[id(shared)] = lines_of(shared)\n"
                f"        text = {fill}\n"
            )
        else:
            loop = (
                "        text = ''.join([\n"
                f"            line % ({', '.join(values)}, go(value))\n"
                "            for labels, value in samples(record)\n"
                "        ])\n"
            )
        source = (
            "def render_many(records, jobs):\n"
            "    out, sizes, written = [], [], {}\n"
            "    append, size = out.append, sizes.append\n"
            "    for record, job in zip(records, jobs, strict=True):\n"
            f"{loop}"
            "        append(text)\n"
            "        size(len(text))\n"
            "    return ''.join(out), sizes\n"
        )
        namespace: dict[str, Any] = {
            "line": line, "samples": self.samples, "escape": _escape, "go": _go,
            "number": getattr(self.samples, "value", None),
            "key": getattr(self.samples, "key", None),
            "lines_of": partial(self._lines_of, line, names, around if together else None),
        }  # fmt: skip
        exec(source, namespace)  # noqa: S102 - label names from this family's definition only
        return cast("Callable[..., tuple[str, list[int]]]", namespace["render_many"])

    def _lines_of(
        self,
        line: str,
        names: Sequence[str],
        around: tuple[Sequence[str], Sequence[str]] | None,
        shared: object,
    ) -> tuple[str | list[str], int, object]:
        """A Keyed family's lines of the samples that follow from `shared`, all but the job's
        labels: where those are side by side, with the other labels `around` them, the pieces
        that a job's labels join; else the lines with a %s for each of them. Then how many
        lines, and `shared` (kept with them)."""
        assert isinstance(self.samples, Keyed)
        samples = list(self.samples.of(shared))
        if around is None:
            texts = [
                line % (*("%s" if n in JOB_LABELS else _escape(labels[n]).replace("%", "%%")
                          for n in names), _go(value))
                for labels, value in samples
            ]  # fmt: skip
            return "".join(texts), len(texts), shared
        before, after = around
        pieces, tail = [], ""
        for labels, value in samples:
            head = "".join(f'{n}="{_escape(labels[n])}",' for n in before)
            pieces.append(f"{tail}{self.sample_name}{{{head}")
            tail = "".join(f',{n}="{_escape(labels[n])}"' for n in after) + f"}} {_go(value)}\n"
        return [*pieces, tail] if pieces else [], len(pieces), shared

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
        text, _ = self.render_many((record,), (job,))
        return text.encode()

    def render_many(
        self, records: Sequence[JobRecord], jobs: Sequence[tuple[str, ...]]
    ) -> tuple[str, list[int]]:
        """The sample lines of several jobs, one after another, and how many characters each
        job's take; `jobs` holds their JOB_LABELS values, escaped. One call for a run of jobs
        rather than one per job: at 50,000 jobs the calls alone were a third of a render."""
        return self._render_many(records, jobs)


# -- the samples of a family, by kind --------------------------------------------------------

NO_LABELS: Mapping[str, str] = MappingProxyType({})


def _seconds(when: datetime | None) -> float | None:
    return None if when is None else when.timestamp()


class Number:
    """The samples of a family in which a job has one number, unlabelled, or none: `value` of
    its record (None: no sample). The render calls `value` itself, with no tuple of samples
    made per job."""

    __slots__ = ("value",)

    def __init__(self, value: Callable[[JobRecord], float | None]) -> None:
        self.value = value

    def __call__(self, record: JobRecord) -> Iterable[Sample]:
        number = self.value(record)
        return () if number is None else ((NO_LABELS, number),)


class Keyed:
    """The samples of a family that follow from one value of a job's record that many jobs
    share (the same object): a state, or a snapshot's mapping (model._frozen makes equal ones
    one object). `key` reads it (None: no samples) and `of` makes the samples from it. The
    render writes the lines of each such value once per run of jobs, by identity, and each
    job's by filling in its labels: the state's eight lines were a third of a first render."""

    __slots__ = ("key", "of")

    def __init__(
        self, key: Callable[[JobRecord], object | None], of: Callable[[Any], Iterable[Sample]]
    ) -> None:
        self.key = key
        self.of = of

    def __call__(self, record: JobRecord) -> Iterable[Sample]:
        shared = self.key(record)
        return () if shared is None else self.of(shared)


def _of_snapshot(value: Callable[[JobSnapshot], float | None]) -> Number:
    """One number the last poll gave; no sample where the API gave none."""

    def number(record: JobRecord) -> float | None:
        snap = record.snapshot
        return None if snap is None else value(snap)

    return Number(number)


def _of_polled(value: Callable[[JobRecord], float | None]) -> Number:
    """One number the record holds (not the snapshot): like every family but asyncjob_up and
    the poll error, none for a job never polled successfully; none where it is unknown."""

    def number(record: JobRecord) -> float | None:
        return None if record.snapshot is None else value(record)

    return Number(number)


def _each(
    mapping: Callable[[JobSnapshot], Mapping[str, float]],
    label: str,
    vocabulary: Sequence[str] | None = None,
) -> Keyed:
    """One sample per key of a mapping the last poll gave, the key as `label`: in the order of
    `vocabulary` where it has one (the snapshot holds no key outside it), else in the mapping's
    own. A key the API does not report has no sample, rather than a made-up 0."""
    words = None if vocabulary is None else [(word, {label: word}) for word in vocabulary]

    def key(record: JobRecord) -> Mapping[str, float] | None:
        snap = record.snapshot
        found = None if snap is None else mapping(snap)
        return found or None

    def of(found: Mapping[str, float]) -> Iterable[Sample]:
        if words is None:
            return [({label: key}, value) for key, value in found.items()]
        return [(labels, found[word]) for word, labels in words if word in found]

    return Keyed(key, of)


_STATES = {
    current: tuple(({"state": state.value}, 1.0 if state is current else 0.0) for state in State)
    for current in State
}


def _current_state(record: JobRecord) -> State | None:
    return None if record.snapshot is None else record.snapshot.state


_state = Keyed(_current_state, _STATES.__getitem__)


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


_up = Number(lambda record: 1.0 if record.up else 0.0)


def _poll_error(record: JobRecord) -> Iterable[Sample]:
    error = record.last_error
    return () if error is None else (({"reason": error.value}, 1.0),)


def _last_progress_change(record: JobRecord) -> float | None:
    """Where the API tells how far the job is: else no stall can be told from it, and none is
    claimed (an alert on this time would fire for every long job of such an API)."""
    snap = record.snapshot
    return _seconds(record.last_progress_change) if snap and snap.shows_progress else None


def _snapshot_time(key: str) -> Number:
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


def render_job(record: JobRecord, families: Sequence[JobFamily] = FAMILIES) -> Chunks:
    """One job's sample lines, one chunk per family of `families` (empty where it has none)."""
    job = _job_labels(record)
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


# -- gzip: one member of independent raw deflate segments -------------------------------------

GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, no mtime, any OS
_LAST = zlib.compressobj(wbits=-15).flush()  # an empty final block: the deflate stream ends


def _deflate(data: bytes, level: int) -> bytes:
    """`data` as raw deflate that stands alone (it refers to nothing before it) and ends on a
    byte boundary without ending the stream (Z_FULL_FLUSH), so that segments made apart can be
    sent one after another as one deflate stream."""
    if not data:
        return b""
    deflater = zlib.compressobj(level, zlib.DEFLATED, -15)
    return deflater.compress(data) + deflater.flush(zlib.Z_FULL_FLUSH)


def _trailer(crc: int, size: int) -> bytes:
    return _LAST + struct.pack("<II", crc, size & 0xFFFFFFFF)


# -- the jobs' lines, in blocks ---------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Block:
    """A run of jobs, each family's lines of them joined (held once: no per-job copy), how
    many bytes of them each job has (`sizes[f * len(records) + j]` for family f and job j),
    and, once gzip was asked for, each family's lines as a deflate segment."""

    records: tuple[JobRecord, ...]
    lines: tuple[bytes, ...]
    sizes: array[int]
    level: int
    deflated: tuple[bytes, ...] | None = None

    def compressed(self) -> tuple[bytes, ...]:
        if self.deflated is None:
            self.deflated = tuple(_deflate(lines, self.level) for lines in self.lines)
        return self.deflated

    def starts(self, f: int) -> list[int]:
        """Where each job's lines of family f start in lines[f], and where the last ends."""
        count = len(self.records)
        return [0, *accumulate(self.sizes[f * count : (f + 1) * count])]


def _cut(records: Sequence[JobRecord]) -> list[Sequence[JobRecord]]:
    """`records` in blocks of about BLOCK jobs, cut after each job whose ID hashes to a
    multiple of BLOCK (and at MAX_BLOCK), so that a job coming or going changes the block it is
    in, not every block after it."""
    blocks: list[Sequence[JobRecord]] = []
    start, mask = 0, BLOCK - 1
    for i, record in enumerate(records):
        if not hash(record.job_id) & mask or i - start + 1 >= MAX_BLOCK:
            blocks.append(records[start : i + 1])
            start = i + 1
    if start < len(records):
        blocks.append(records[start:])
    return blocks


def _job_labels(record: JobRecord) -> tuple[str, ...]:
    """A job's JOB_LABELS values, escaped, and then all three as a line writes them side by
    side (most families' labels sort after them, or there are none). A job ID comes from the
    config, the jobs API or a webhook: masked like every label, in case a secret was pasted
    there (the record keeps the real one)."""
    job = (_escape(redactor.mask(record.job_id)), _escape(record.provider), _escape(record.source))
    return (*job, _JOB_PAIRS % job)


_JOB_PAIRS = ",".join(f'{name}="%s"' for name in JOB_LABELS)


def _render(
    records: Sequence[JobRecord], families: Sequence[JobFamily]
) -> list[tuple[bytes, list[int]]]:
    """For each family: the lines of `records`, and how many bytes each job's take."""
    jobs = [_job_labels(record) for record in records]
    rendered = []
    for family in families:
        text, sizes = family.render_many(records, jobs)
        data = text.encode()
        if len(data) != len(text):  # not all ASCII: each job's characters counted in bytes
            ends = list(accumulate(sizes, initial=0))
            sizes = [len(text[ends[i] : ends[i + 1]].encode()) for i in range(len(sizes))]
        rendered.append((data, sizes))
    return rendered


def _build(
    records: Sequence[JobRecord], old: _Block | None, families: Sequence[JobFamily], level: int
) -> _Block:
    """A block of `records`: the lines of a job whose record is in `old` (the same object:
    records are immutable) are taken from there, runs of them at once; the others are rendered,
    runs of them at once."""
    count, width = len(records), len(families)
    pieces: list[list[bytes | memoryview]] = [[] for _ in range(width)]
    sizes = array("I", bytes(4 * width * count))
    where = {} if old is None else {id(record): j for j, record in enumerate(old.records)}
    starts: list[list[int]] = []  # of each family's lines in `old`, once one is taken from it
    j = 0
    while j < count:
        src = where.get(id(records[j]))
        run = 1  # the jobs after it that are new too, or that follow it in `old`
        if src is None:
            while j + run < count and id(records[j + run]) not in where:
                run += 1
            for f, (data, counts) in enumerate(_render(records[j : j + run], families)):
                if data:
                    pieces[f].append(data)
                sizes[f * count + j : f * count + j + run] = array("I", counts)
            j += run
            continue
        while j + run < count and where.get(id(records[j + run])) == src + run:
            run += 1
        assert old is not None
        if not starts:
            starts = [old.starts(f) for f in range(width)]
            old_count, old_sizes = len(old.records), old.sizes
            views = [memoryview(lines) for lines in old.lines]
        for f in range(width):
            start, stop = starts[f][src], starts[f][src + run]
            if stop > start:
                pieces[f].append(views[f][start:stop])
            sizes[f * count + j : f * count + j + run] = old_sizes[
                f * old_count + src : f * old_count + src + run
            ]
        j += run
    lines = tuple(b"".join(family) for family in pieces)
    return _Block(tuple(records), lines, sizes, level)


@dataclass(slots=True)
class _Zipped:
    """The jobs' part of a gzip body for one (generation, headers): the gzip header, then each
    family's header and blocks as deflate segments; the CRC-32 and length of what they hold."""

    key: tuple[int, tuple[bytes, ...]]
    parts: list[bytes]
    crc: int
    size: int


class _One:
    """One metric family, as client_python's encoders read a registry."""

    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> Iterator[Metric]:
        yield self._metric


_EOF = b"# EOF\n"


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
        self._generation = -1
        self._blocks: tuple[_Block, ...] = ()
        self._headers: dict[bool, tuple[str, tuple[bytes, ...], tuple[bytes, ...]]] = {}
        self._zipped: dict[bool, _Zipped] = {}
        self._fresh: dict[bool, dict[str, tuple[Metric, bytes]]] = {False: {}, True: {}}

    def prime(self) -> None:
        """Render the jobs' lines now rather than at the first scrape: see Exporter.start."""
        with self._lock:
            self._jobs()

    def render(self, openmetrics: bool, gzipped: bool, names: Sequence[str] = ()) -> list[bytes]:
        """The body, as parts to send in order (one gzip member when `gzipped`)."""
        with self._lock:
            blocks = self._jobs()
            headers, deflated_headers = self._family_headers(openmetrics)
            if names:
                return self._restricted(blocks, headers, openmetrics, gzipped, names)
            fresh = self._fresh_part(openmetrics)
            if not gzipped:
                parts: list[bytes] = []
                for f, header in enumerate(headers):  # a family no job has still gets its HELP
                    parts.append(header)
                    parts += [block.lines[f] for block in blocks if block.lines[f]]
                parts.append(fresh)
                return parts
            zipped = self._zip(blocks, headers, deflated_headers, openmetrics)
            tail = _deflate(fresh, FRESH_LEVEL)
            trailer = _trailer(zlib.crc32(fresh, zipped.crc), zipped.size + len(fresh))
            return [*zipped.parts, tail, trailer]

    def _restricted(
        self,
        blocks: Sequence[_Block],
        headers: Sequence[bytes],
        openmetrics: bool,
        gzipped: bool,
        names: Sequence[str],
    ) -> list[bytes]:
        """`?name[]=`: only those families, for this scrape alone (nothing of it is kept)."""
        parts: list[bytes] = []
        for f, family in enumerate(self.families):
            if family.sample_name in names:
                parts.append(headers[f])
                parts += [block.lines[f] for block in blocks if block.lines[f]]
        encode = generate_openmetrics if openmetrics else generate_latest
        registry: _Collects = self.registry.restricted_registry(names)
        if self._selection.patterns:
            registry = _Selected(registry, self._selection)
        parts.append(encode(registry))
        return [gzip.compress(b"".join(parts), GZIP_LEVEL)] if gzipped else parts

    def _family_headers(self, openmetrics: bool) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
        """Each job family's HELP and TYPE, and as deflate segments, made again only when the
        poll note changes (a reload)."""
        note = self._poll_note()
        cached = self._headers.get(openmetrics)
        if cached is None or cached[0] != note:
            raw = tuple(f.header(note, openmetrics).encode() for f in self.families)
            cached = (note, raw, tuple(_deflate(header, GZIP_LEVEL) for header in raw))
            self._headers[openmetrics] = cached
        return cached[1], cached[2]

    def _fresh_part(self, openmetrics: bool) -> bytes:
        """The registry's families, collected now; a family's text is kept while it collects
        the same (client_python's encoder costs several microseconds a sample, most of a
        scrape of an unchanged store), and only those that changed are encoded again."""
        encode = generate_openmetrics if openmetrics else generate_latest
        kept, seen = self._fresh[openmetrics], {}
        parts = []
        keeps = self._selection.keeps
        for metric in self.registry.collect():
            if not keeps(metric.name, metric.type):  # left out by --metric-allow/denylist
                continue
            cached = kept.get(metric.name)
            if cached is None or cached[0] != metric:
                text = encode(_One(metric))
                cached = (metric, text.removesuffix(_EOF) if openmetrics else text)
            seen[metric.name] = cached
            parts.append(cached[1])
        self._fresh[openmetrics] = seen
        if openmetrics:
            parts.append(_EOF)
        return b"".join(parts)

    def _zip(
        self,
        blocks: Sequence[_Block],
        headers: tuple[bytes, ...],
        deflated_headers: tuple[bytes, ...],
        openmetrics: bool,
    ) -> _Zipped:
        """The jobs' part of the gzip body, kept while the store and the headers stay; its
        blocks' segments are made once per block."""
        key = (self._generation, headers)
        zipped = self._zipped.get(openmetrics)
        if zipped is not None and zipped.key == key:
            return zipped
        parts, crc, size = [GZIP_HEADER], 0, 0
        for f, header in enumerate(headers):
            parts.append(deflated_headers[f])
            crc, size = zlib.crc32(header, crc), size + len(header)
            for block in blocks:
                lines = block.lines[f]
                if lines:
                    parts.append(block.compressed()[f])
                    crc, size = zlib.crc32(lines, crc), size + len(lines)
        zipped = self._zipped[openmetrics] = _Zipped(key, parts, crc, size)
        return zipped

    def _jobs(self) -> tuple[_Block, ...]:
        """The jobs' blocks, built again only where records changed: finished jobs first (they
        change no more, so their blocks stay), then the others, each in the store's order."""
        store = self._store
        if store is None:
            return ()
        generation = store.generation
        if generation == self._generation:
            return self._blocks
        finished: list[JobRecord] = []
        others: list[JobRecord] = []
        for record in store.jobs():
            snapshot = record.snapshot
            (finished if snapshot is not None and snapshot.state.terminal else others).append(
                record
            )
        old = {(b.records[0].source, b.records[0].job_id): b for b in self._blocks}
        blocks = []
        for group, level in ((finished, GZIP_LEVEL), (others, CHURN_LEVEL)):
            previous: _Block | None = None
            for part in _cut(group):
                first = part[0]
                match = old.get((first.source, first.job_id), previous)
                if (
                    match is not None
                    and len(match.records) == len(part)
                    and all(a is b for a, b in zip(match.records, part, strict=True))
                ):
                    block = match
                else:
                    block = _build(part, match, self.families, level)
                blocks.append(block)
                previous = match
        self._blocks, self._generation = tuple(blocks), generation
        return self._blocks
