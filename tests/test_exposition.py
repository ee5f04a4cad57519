"""The pre-rendered /metrics against the old way of rendering it, over randomized stores.

The oracle is `reference_render.py`: the collector as it was before pre-rendering, every family
built afresh with client_python's metric families and encoded by client_python. Both renders are
parsed by client_python's own parsers (the text format's and the strict OpenMetrics one) and
must agree sample for sample; gzip must decompress to the same bytes; promtool must accept a
large render.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from conftest import run_tool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text
from reference_render import JobCollector

from exporter import exposition as exposition_module
from exporter.app import metric_families
from exporter.collector import SourceCollector
from exporter.exposition import FAMILIES, JOB_LABELS, Exposition, JobFamily
from exporter.model import (
    DOCUMENT_STATES,
    LOSS_SPLITS,
    TASK_STATES,
    TOKEN_KINDS,
    ErrorReason,
    JobRecord,
    JobSnapshot,
    State,
)
from exporter.selection import Selection, parse_patterns

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
NOTE = (
    "Polled in the background every 30s by default (per-source poll_interval), not at scrape time."
)
JOB_FAMILIES = {f.name for f in FAMILIES}


@dataclass
class FakeStore:
    """Just what a render reads: the records, and a generation that moves when they do."""

    records: tuple[JobRecord, ...]
    generation: int = 0

    def jobs(self) -> tuple[JobRecord, ...]:
        return self.records

    def source_stats(self) -> tuple[()]:
        return ()

    def set(self, records: tuple[JobRecord, ...]) -> None:
        self.records, self.generation = records, self.generation + 1


# Label values as nasty as upstreams send: quotes, backslashes, newlines, unicode, empty.
label_text = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12
) | st.sampled_from(['a"b', "back\\slash", "two\nlines", "", "Éüñ 中文"])
times = st.none() | st.datetimes(
    min_value=datetime(2000, 1, 1),  # noqa: DTZ001 - hypothesis wants naive bounds
    max_value=datetime(2100, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)
ratios = st.floats(min_value=0.0, max_value=1.0)
counts = st.integers(min_value=0, max_value=2**53)
losses = st.floats(min_value=0.0, max_value=1e6) | st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def snapshots(draw: Any) -> JobSnapshot:
    phases = draw(st.dictionaries(st.sampled_from(["training", "evaluation", "data_generation"]),
                                  ratios, max_size=3))  # fmt: skip
    state = draw(st.sampled_from(list(State)))
    return JobSnapshot(
        state=state,
        vendor_status=draw(label_text),
        display_name=draw(label_text),
        # Empty: a running job whose API does not say how far it is (never a finished one).
        progress={} if not state.terminal and draw(st.booleans()) else {**phases, "overall": draw(ratios)},
        tasks=draw(st.dictionaries(st.sampled_from(TASK_STATES), counts)),
        documents=draw(st.dictionaries(st.sampled_from(DOCUMENT_STATES), counts)),
        characters_charged=draw(st.none() | counts),
        errors=draw(st.none() | counts),
        warnings=draw(st.none() | counts),
        tokens=draw(st.dictionaries(st.sampled_from(TOKEN_KINDS), counts)),
        training_step=draw(st.none() | counts),
        training_loss=draw(st.dictionaries(st.sampled_from(LOSS_SPLITS), losses)),
        created=draw(times), last_update=draw(times), started=draw(times),
        estimated_completion=draw(times), expiration=draw(times),
        finished=draw(times) if state.terminal else None,
    )  # fmt: skip


@st.composite
def records(draw: Any, index: int) -> JobRecord:
    return JobRecord(
        provider=draw(st.sampled_from(["azure_document_translation", "azure_language_training"])),
        source=draw(st.sampled_from(["a", "b-2"])),
        job_id=f"job-{index}",
        first_seen=T0,
        project=draw(st.none() | label_text),
        snapshot=draw(st.none() | snapshots()),
        up=draw(st.booleans()),
        last_error=draw(st.none() | st.sampled_from(list(ErrorReason))),
        last_poll_success=draw(times),
        last_progress_change=draw(times),
        finished_at=draw(times),
    )


stores = st.integers(min_value=0, max_value=12).flatmap(
    lambda n: st.tuples(*(records(i) for i in range(n)))
)


def reference(records: tuple[JobRecord, ...], openmetrics: bool = False) -> str:
    registry = CollectorRegistry()
    registry.register(JobCollector(FakeStore(records), lambda: 30.0))  # type: ignore[arg-type]
    encode = generate_openmetrics if openmetrics else generate_latest
    body: bytes = encode(registry)
    return body.decode()


def rendered(exposition: Exposition, openmetrics: bool = False, gzipped: bool = False) -> bytes:
    return b"".join(exposition.render(openmetrics, gzipped))


def samples(text: str, openmetrics: bool = False) -> dict[tuple[str, frozenset[Any]], float]:
    """Every job-family sample, by name and labels (each must be unique)."""
    parse = parse_openmetrics if openmetrics else parse_text
    found: dict[tuple[str, frozenset[Any]], float] = {}
    for family in parse(text):
        if family.name not in JOB_FAMILIES:
            continue
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in found, key
            found[key] = s.value
    return found


def helps(text: str) -> list[str]:
    """The HELP lines of the job families, in order."""
    return [
        line for line in text.splitlines()
        if line.startswith("# HELP ") and line.split()[2].removesuffix("_total") in JOB_FAMILIES
    ]  # fmt: skip


def same(a: dict[Any, float], b: dict[Any, float]) -> bool:
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in a
    )  # NaN equals NaN here


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=stores, second=stores)
def test_the_pre_rendered_output_agrees_with_the_old_render_sample_for_sample(
    first: tuple[JobRecord, ...], second: tuple[JobRecord, ...]
) -> None:
    """Over two successive stores (so the second render reuses what the first cached), in both
    formats and gzipped: the same samples as the old render, and the same HELP of each family."""
    store = FakeStore(first)
    exposition = Exposition(CollectorRegistry(), store, lambda: NOTE)
    for records in (first, second, second):  # the third: nothing changed, all reused
        if records is not store.records:
            store.set(records)
        for openmetrics in (False, True):
            text = rendered(exposition, openmetrics).decode()
            old = reference(records, openmetrics)
            assert same(samples(text, openmetrics), samples(old, openmetrics))
            assert helps(text) == helps(old)
            zipped = rendered(exposition, openmetrics, gzipped=True)
            assert gzip.decompress(zipped) == text.encode()


def blocks(text: str) -> dict[str, str]:
    """Each job family's block as written (HELP, TYPE and sample lines), by family name."""
    found = {}
    for part in text.removesuffix("# EOF\n").split("# HELP ")[1:]:
        name = part.split(" ", 1)[0].removesuffix("_total")
        if name in JOB_FAMILIES:
            found[name] = part
    return found


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=stores)
def test_each_job_family_is_byte_for_byte_what_the_old_render_wrote(
    records: tuple[JobRecord, ...],
) -> None:
    """Not only the same samples: the same bytes, family by family (label order, escaping,
    number formatting, sample order: finished jobs first, then the others, each in the store's
    order), in both formats."""
    exposition = Exposition(CollectorRegistry(), FakeStore(records), lambda: NOTE)
    in_order = tuple(sorted(records, key=lambda record: not record.finished))  # a stable sort
    for openmetrics in (False, True):
        text = rendered(exposition, openmetrics).decode()
        assert blocks(text) == blocks(reference(in_order, openmetrics))
        assert len(blocks(text)) == len(FAMILIES)


@settings(max_examples=200, deadline=None)
@given(record=records(0))
def test_every_family_yields_exactly_its_declared_labels(record: JobRecord) -> None:
    """A family's `labels` is what each of its samples carries, no more and no less, and its
    values are numbers: checked here, so that rendering need not check every sample."""
    for family in FAMILIES:
        for labels, value in family.samples(record):
            assert sorted(labels) == sorted(family.labels), family.name
            assert all(isinstance(text, str) for text in labels.values()), family.name
            assert isinstance(value, int | float), family.name
            assert not isinstance(value, bool), family.name


@settings(max_examples=2000)
@given(value=st.floats() | st.integers(min_value=-(2**64), max_value=2**64))
def test_numbers_are_written_as_client_python_writes_them(value: float) -> None:
    """The exposition's own number formatting (a fast path) is client_python's, byte for byte:
    the infinities, NaN, -0.0, exponents as Go writes them."""
    assert exposition_module._go(value) == exposition_module._go_float(value)


def test_family_names_are_distinct_and_no_label_is_a_job_label() -> None:
    """Two families of one name would write one family twice; a family's own label named like
    a job label would write that label twice in a line."""
    names = [family.sample_name for family in FAMILIES]
    assert len(set(names)) == len(names)
    assert all(not set(family.labels) & set(JOB_LABELS) for family in FAMILIES)
    with pytest.raises(ValueError, match="labels must be new and distinct"):
        JobFamily("asyncjob_x", "gauge", "X.", ("source",), lambda _record: ())


def test_a_new_family_is_one_definition(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the next fact about a job takes: one JobFamily. Its header, its samples named as
    its type wants, its labels sorted among the job's and escaped, in both formats, and
    selectable by name, with nothing else to change."""
    widgets = JobFamily("asyncjob_widgets", "counter", "Widgets the job used, by kind.", ("kind",),
                       lambda record: [({"kind": "input"}, 12), ({"kind": 'a"b'}, 2.5)]
                       if record.snapshot else ())  # fmt: skip
    monkeypatch.setattr(exposition_module, "FAMILIES", (*FAMILIES, widgets))
    running = JobSnapshot(state=State.RUNNING, vendor_status="Running", progress={"overall": 0.5})
    record = JobRecord("azure_document_translation", "a", "j1", T0, snapshot=running, up=True)
    exposition = Exposition(CollectorRegistry(), FakeStore((record,)), lambda: NOTE)
    text = rendered(exposition).decode()
    assert f"# HELP asyncjob_widgets_total Widgets the job used, by kind. {NOTE}\n" in text
    assert "# TYPE asyncjob_widgets_total counter\n" in text
    assert (
        'asyncjob_widgets_total{job_id="j1",kind="input",provider="azure_document_translation",'
        'source="a"} 12.0\n' in text
    )
    assert 'kind="a\\"b"' in text
    openmetrics = rendered(exposition, openmetrics=True).decode()
    assert "# TYPE asyncjob_widgets counter\n" in openmetrics
    strict: Callable[[str], Iterable[Any]] = parse_openmetrics  # the strict parser accepts it
    families = {family.name: family for family in strict(openmetrics)}
    assert [s.value for s in families["asyncjob_widgets"].samples] == [12.0, 2.5]
    only = b"".join(
        exposition.render(openmetrics=False, gzipped=False, names=["asyncjob_widgets_total"])
    ).decode()
    assert only.startswith("# HELP asyncjob_widgets_total ")
    assert "asyncjob_state" not in only


# Label values for the renders of their own that Number and Keyed families get: a % that a
# template must not take for its own, quotes, backslashes, newlines, unicode.
PERCENT_TEXT = st.sampled_from(["%s", "%%", "%", "a%sb%%c", 'q"%s', "back\\%s", "x\n%", "é%s中"])


@settings(max_examples=100, deadline=None)
@given(
    words=st.lists(PERCENT_TEXT, min_size=1, max_size=4, unique=True),
    ids=st.lists(PERCENT_TEXT | label_text, min_size=1, max_size=6, unique=True),
    value=st.floats() | st.integers(min_value=0, max_value=2**64),
)
def test_number_and_keyed_families_write_what_the_general_render_writes(
    words: list[str], ids: list[str], value: float
) -> None:
    """A family made as a Number or as Keyed (whose lines are written once per shared value and
    filled in per job) writes the same bytes as the same family made as a plain function of
    the record, with its labels around the job's (together, as most are) or between them,
    with a % in a label value or a job ID, and for jobs that have no sample."""
    shared = {word: float(i) for i, word in enumerate(words)}

    def key(record: JobRecord) -> object | None:
        return None if record.up else shared

    def of(found: dict[str, float]) -> list[tuple[dict[str, str], float]]:
        return [({"a_first": word, "kind": word, "zz_last": word}, v) for word, v in found.items()]

    def plain(record: JobRecord) -> Iterable[tuple[dict[str, str], float]]:
        return () if record.up else of(shared)

    def number(record: JobRecord) -> float | None:
        return None if record.up else value

    def one(record: JobRecord) -> Iterable[tuple[Any, float]]:
        return () if record.up else (({}, value),)

    jobs = tuple(JobRecord("azure_document_translation", "a%s", job_id, T0, up=i % 3 == 0)
                 for i, job_id in enumerate(ids))  # fmt: skip
    for labels in (("a_first", "zz_last"), ("kind",)):  # around the job's labels; between them
        fast = JobFamily("asyncjob_x", "gauge", "X.", labels, exposition_module.Keyed(key, of))
        slow = JobFamily("asyncjob_x", "gauge", "X.", labels, plain)
        assert fast.render_many(jobs, [exposition_module._job_labels(r) for r in jobs]) == (
            slow.render_many(jobs, [exposition_module._job_labels(r) for r in jobs])
        )
    fast = JobFamily("asyncjob_y", "counter", "Y.", (), exposition_module.Number(number))
    slow = JobFamily("asyncjob_y", "counter", "Y.", (), one)
    assert fast.render_many(jobs, [exposition_module._job_labels(r) for r in jobs]) == (
        slow.render_many(jobs, [exposition_module._job_labels(r) for r in jobs])
    )


def test_a_changed_job_is_re_rendered_and_the_others_reused() -> None:
    """Records are immutable: a new record object is a change, and only it is rendered again."""
    running = JobSnapshot(state=State.RUNNING, vendor_status="Running", progress={"overall": 0.5})
    jobs = tuple(JobRecord("azure_document_translation", "a", f"j{i}", T0, snapshot=running,
                           up=True) for i in range(600))  # fmt: skip
    store = FakeStore(jobs)
    exposition = Exposition(CollectorRegistry(), store, lambda: NOTE)
    before = rendered(exposition, gzipped=True)
    done = replace(running, state=State.SUCCEEDED, progress={"overall": 1.0})
    store.set((*jobs[:300], replace(jobs[300], snapshot=done), *jobs[301:]))
    after = gzip.decompress(rendered(exposition, gzipped=True)).decode()
    assert gzip.decompress(before) != after.encode()
    assert (
        'asyncjob_state{job_id="j300",provider="azure_document_translation",source="a",state="succeeded"} 1.0'
        in after
    )
    assert same(samples(after), samples(reference(store.records)))


def test_a_gzip_body_is_one_member_and_only_changed_blocks_are_compressed_again() -> None:
    """One gzip member (urllib3 2.6+ garbles a stream of several), whose segments of jobs that
    did not change are the very bytes sent before; and it decompresses to the identity body."""
    running = JobSnapshot(state=State.RUNNING, vendor_status="Running", progress={"overall": 0.5})
    done = replace(running, state=State.SUCCEEDED, progress={"overall": 1.0})
    jobs = tuple(JobRecord("azure_document_translation", "a", f"j{i}", T0,
                           snapshot=done if i % 10 else running, up=True)
                 for i in range(5000))  # fmt: skip
    store = FakeStore(jobs)
    exposition = Exposition(CollectorRegistry(), store, lambda: NOTE)
    before = exposition.render(openmetrics=False, gzipped=True)
    store.set(tuple(replace(job, up=False) if i % 10 == 0 else job for i, job in enumerate(jobs)))
    after = exposition.render(openmetrics=False, gzipped=True)
    reader = zlib.decompressobj(16 + zlib.MAX_WBITS)
    body = reader.decompress(b"".join(after))
    assert reader.eof
    assert not reader.unused_data
    assert body == rendered(exposition)
    kept = {id(part) for part in before} & {id(part) for part in after}
    assert len(kept) > len(after) // 2  # the finished jobs' segments, reused as they were


def test_promtool_accepts_a_large_render() -> None:
    """5,000 jobs of every shape, as Prometheus's own linter reads them."""
    snap = JobSnapshot(
        state=State.RUNNING, vendor_status='Running "fast"\\', display_name="a\nb",
        progress={"training": 0.5, "overall": 0.25}, tasks=dict.fromkeys(TASK_STATES, 1),
        documents=dict.fromkeys(DOCUMENT_STATES, 2), characters_charged=10, errors=0, warnings=1,
        created=T0, last_update=T0 + timedelta(seconds=1),
    )  # fmt: skip
    jobs = tuple(JobRecord("azure_language_training", "s", f"j-{i}", T0, project="p", snapshot=snap,
                           up=True, last_poll_success=T0) for i in range(5000))  # fmt: skip
    text = rendered(Exposition(CollectorRegistry(), FakeStore(jobs), lambda: NOTE))
    assert text.count(b"\n") > 5000 * 20
    result = run_tool("promtool", "check", "metrics", stdin=text)
    assert result.returncode == 0, result.stdout + result.stderr


# Metric selection. What each list keeps is said here from the families' names and types, not
# by the selection's own code; the oracle knows nothing of lists, and its render is filtered here.
SELECTIONS = {
    "allowlist": (
        "asyncjob_state, asyncjob_.*_timestamp_seconds, asyncjob_.*_total",  # counters: _total
        lambda f: f.name == "asyncjob_state" or f.name.endswith("_timestamp_seconds")
        or f.type == "counter",
    ),
    "denylist": (
        ("asyncjob_info,asyncjob_state,asyncjob_progress_ratio,"
         "asyncjob_translation_characters_charged"),  # a counter by client_python's name
        lambda f: f.name not in {"asyncjob_info", "asyncjob_state", "asyncjob_progress_ratio",
                                 "asyncjob_translation_characters_charged"},
    ),
}  # fmt: skip


def selection(kind: str) -> Selection:
    patterns = parse_patterns(SELECTIONS[kind][0], metric_families())
    return Selection.of(patterns, None) if kind == "allowlist" else Selection.of(None, patterns)


def keeps(kind: str) -> list[JobFamily]:
    keep: Callable[[JobFamily], bool] = SELECTIONS[kind][1]
    return [f for f in FAMILIES if keep(f)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=stores)
@pytest.mark.parametrize("kind", SELECTIONS)
def test_a_selection_renders_only_its_families_byte_for_byte(
    kind: str, records: tuple[JobRecord, ...]
) -> None:
    """With an allowlist and with a denylist, over stores of every shape: a family left out
    has no HELP, no TYPE and no sample; the body is the kept families' blocks, byte for byte
    as the oracle writes them, in both formats; gzipped, the same bytes."""
    kept = keeps(kind)
    dropped = [f for f in FAMILIES if f not in kept]
    assert kept
    assert dropped
    exposition = Exposition(CollectorRegistry(), FakeStore(records), lambda: NOTE, selection(kind))
    for openmetrics in (False, True):
        text = rendered(exposition, openmetrics).decode()
        # The exposition lists finished jobs first (their blocks stay): the oracle, in that order.
        in_order = tuple(sorted(records, key=lambda record: not record.finished))
        oracle = blocks(reference(in_order, openmetrics))
        end = "# EOF\n" if openmetrics else ""
        assert text == "".join(f"# HELP {oracle[f.name]}" for f in kept) + end
        written = {line.split("{")[0].split(" ")[0] for line in text.splitlines()}
        for family in dropped:
            assert family.sample_name not in written, family.name
            assert f" {family.name} " not in text
            assert f" {family.sample_name} " not in text
        zipped = rendered(exposition, openmetrics, gzipped=True)
        assert gzip.decompress(zipped) == text.encode()


def test_a_family_left_out_is_never_rendered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither rendered nor held: a denied family's samples are never asked for, and each job's
    cached chunks are the kept families' only; ?name[]= still narrows what is kept."""

    def never(record: JobRecord) -> Iterable[tuple[Any, float]]:
        raise AssertionError(record)

    unasked = JobFamily("asyncjob_unasked", "gauge", "Never asked.", ("split",), never)
    monkeypatch.setattr(exposition_module, "FAMILIES", (*FAMILIES, unasked))
    families = (*metric_families(), ("asyncjob_unasked", "gauge"))
    denied = Selection.of(None, parse_patterns("asyncjob_unasked,asyncjob_up", families))
    running = JobSnapshot(state=State.RUNNING, vendor_status="Running", progress={"overall": 0.5})
    jobs = tuple(JobRecord("azure_document_translation", "a", f"j{i}", T0, snapshot=running,
                           up=True) for i in range(300))  # fmt: skip
    exposition = Exposition(CollectorRegistry(), FakeStore(jobs), lambda: NOTE, denied)
    assert [f.name for f in exposition.families] == [
        f.name for f in FAMILIES if f.name != "asyncjob_up"
    ]
    text = gzip.decompress(rendered(exposition, gzipped=True)).decode()
    assert "asyncjob_unasked" not in text
    assert "asyncjob_up" not in text
    assert all(len(block.lines) == len(FAMILIES) - 1 for block in exposition._blocks)
    only = b"".join(
        exposition.render(openmetrics=False, gzipped=False, names=["asyncjob_state", "asyncjob_up"])
    )
    assert only.decode().startswith("# HELP asyncjob_state ")
    assert "asyncjob_up" not in only.decode()


def test_a_selection_filters_the_registry_but_never_process_or_python() -> None:
    """The registry's asyncjob_ families are selected as the jobs' are (a counter by its
    README name); client_python's process_ and python_ families always stay."""
    registry = CollectorRegistry()
    registry.register(SourceCollector(FakeStore(())))  # type: ignore[arg-type]
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    patterns = parse_patterns("asyncjob_requests_total,asyncjob_tracked_jobs", metric_families())
    selected = Exposition(registry, selection=Selection.of(patterns, None))
    for openmetrics in (False, True):
        parse = parse_openmetrics if openmetrics else parse_text
        every = {
            family.name for family in parse(rendered(Exposition(registry), openmetrics).decode())
        }
        names = {family.name for family in parse(rendered(selected, openmetrics).decode())}
        assert "asyncjob_build_info" in every
        assert {n for n in names if n.startswith("asyncjob_")} == {
            "asyncjob_requests", "asyncjob_tracked_jobs"
        }  # fmt: skip
        assert {n for n in every if not n.startswith("asyncjob_")} <= names
        assert any(n.startswith("process_") for n in names)
        assert "python_info" in names
