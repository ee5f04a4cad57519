"""The README is the user's manual: every flag, metric, alert and config key it names exists,
and everything the code offers is named in it."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import yaml
from conftest import REPO, Harness, with_source
from promql import answers_without, consumers, metrics_read

from benchmarks import prometheus_cost
from exporter.app import metric_families
from exporter.cli import build_parser
from exporter.config import GlobalConfig
from exporter.providers import PROVIDERS
from exporter.selection import Selection, names_of, parse_patterns
from exporter.simulator import Fault
from exporter.storage import Storage

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

README = (REPO / "README.md").read_text()


def table_keys(heading: str) -> set[str]:
    """First-column `code` entries of the table under a README heading."""
    section = README.split(heading, 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE))


def test_flags() -> None:
    options = {
        s
        for action in build_parser()._actions
        for s in action.option_strings
        if s.startswith("--") and s != "--help"
    }
    named = set(re.findall(r"`(--[a-z.-]+)", README))
    assert options <= named, options - named
    exporter_flags = {
        f for f in named if re.match(r"--(config|web|log)\.|--(once|demo|version)$", f)
    }
    assert exporter_flags <= options, exporter_flags - options


def test_metrics(make_harness: Callable[..., Harness], tmp_path: Path) -> None:
    storage = Storage.open(tmp_path / "data")  # for the storage's own family
    try:
        h = make_harness(
            with_source(4, webhook_token="t", discovery={}), at=1000.0, storage=storage
        )  # every family
        h.sim.set_fault("batch-ok", Fault(status=404))
        h.exporter.poll_once()
        exposed = {name for name, _ in h.scrape().samples}
    finally:
        storage.close()
    families = {
        re.sub(r"_(bucket|count|sum)$", "", n) for n in exposed if n.startswith("asyncjob_")
    }
    named = set(re.findall(r"`(asyncjob_[a-z_]+)`", README))
    documented = table_keys("## Metrics")
    assert families <= documented, families - documented
    # Some families have samples only for some providers' jobs; each is one the exporter has.
    listed = {names_of(name, kind)[0] for name, kind in metric_families()}
    assert named <= families | exposed | listed, named - families - exposed - listed
    assert documented == listed, documented ^ listed


def test_alerts() -> None:
    groups = yaml.safe_load((REPO / "alerting/rules/asyncjob-alerts.yaml").read_text())["groups"]
    alerts = {rule["alert"] for group in groups for rule in group["rules"]}
    assert set(re.findall(r"`(AsyncJob[A-Za-z]+)`", README)) == alerts


def test_config_keys_and_providers() -> None:
    assert table_keys("### `global`") == set(GlobalConfig.model_fields)
    source_keys = {  # as written in the config: a field's alias where it has one
        field.alias or name
        for provider in PROVIDERS.values()
        for name, field in provider.source_model.model_fields.items()
    }
    assert table_keys("### `sources[]`") == source_keys
    assert table_keys("### Providers") == set(PROVIDERS)


def test_demo_table_matches_the_simulator() -> None:
    """What the README says train-fail reaches is what the exporter reads from the simulator."""
    from datetime import UTC, datetime  # noqa: PLC0415

    from exporter.simulator import DEMO_JOBS, render  # noqa: PLC0415

    train_fail = next(j for j in DEMO_JOBS if j.job_id == "train-fail")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    body = render(train_fail, 1000.0, now, "text")
    snap = PROVIDERS["azure_language_training"].parse(body, now)
    row = next(line for line in README.splitlines() if line.startswith("| `train-fail` |"))
    overall, training = snap.progress["overall"], snap.progress["training"]
    assert f"{round(overall * 100)}% overall" in row, row
    assert f"training {round(training * 100)}%" in row, row


def _choosing() -> str:
    return README.split("### Choosing metrics", 1)[1].split("\n## ", 1)[0]


def _samples() -> dict[str, tuple[str, str]]:
    """Each sample name a query may read -> its family: (client_python's name, type)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    return {
        f"{name}{suffix}": (name, kind)
        for name, kind in metric_families()
        for suffix in suffixes.get(kind, ("",))
    }


def _panels(cell: str) -> set[tuple[str, str]]:
    """(dashboard, panel) pairs of a cell written `Overview: *A*, *B*; Job: *C*`."""
    if cell == "none":
        return set()
    found = set()
    for part in cell.split("; "):
        board, titles = part.split(": ", 1)
        found |= {(board, title) for title in re.findall(r"\*([^*]+)\*", titles)}
    return found


def test_choosing_metrics_says_what_each_family_feeds() -> None:
    """Each family the exporter can export has one row, and its panels, alerts and recording
    rules are those whose queries read it (through a recording rule too), as the dashboards
    and the rules have them today."""
    samples = {sample: names_of(*family)[0] for sample, family in _samples().items()}
    feeds: dict[str, tuple[set[tuple[str, str]], set[str]]] = {
        family: (set(), set()) for family in samples.values()
    }
    for consumer in consumers():
        read = {samples[m] for expr in consumer.exprs for m in metrics_read(expr) if m in samples}
        for family in read:
            panels, rules = feeds[family]
            if consumer.board:
                panels.add((consumer.board, consumer.name))
            else:
                rules.add(consumer.name)
    rows = re.findall(r"^\| `(asyncjob_[a-z_]+)` \| [^|]+ \| [^|]+ \| ([^|]+) \| ([^|]+) \|$",
                      _choosing(), re.MULTILINE)  # fmt: skip
    assert sorted(family for family, _, _ in rows) == sorted(feeds)
    for family, panels, rules in rows:
        assert _panels(panels) == feeds[family][0], family
        assert set(re.findall(r"`([^`]+)`", rules)) == feeds[family][1], family


def test_the_lean_allowlist_is_the_benchs_and_says_what_works() -> None:
    """The README's lean allowlist is what `make bench` measures; with it every dashboard
    variable still lists its values, and the panels and alerts the README says work are those
    that can still answer (`a unless b` needs a, `a or b` either), the others those that cannot."""
    found = re.search(r"```sh\n--metric-allowlist=(\S+)\n```", _choosing())
    assert found, "no lean allowlist"
    assert tuple(found[1].split(",")) == prometheus_cost.LEAN
    lean = Selection.of(parse_patterns(found[1], metric_families()), None)
    missing = {sample for sample, family in _samples().items() if not lean.keeps(*family)}
    works: dict[bool, tuple[set[tuple[str, str]], set[str]]] = {True: (set(), set()),
                                                                 False: (set(), set())}  # fmt: skip
    for consumer in consumers():
        answers = any(answers_without(expr, missing.__contains__) for expr in consumer.exprs)
        if consumer.variable:
            assert answers, consumer
        elif consumer.board:
            works[answers][0].add((consumer.board, consumer.name))
        elif consumer.name.startswith("AsyncJob"):
            works[answers][1].add(consumer.name)
    for label, answers in (("work", True), ("go empty, or cannot fire", False)):
        row = re.search(rf"^\| {label} \| ([^|]+) \| ([^|]+) \|$", _choosing(), re.MULTILINE)
        assert row, label
        assert _panels(row[1]) == works[answers][0], label
        assert set(re.findall(r"`([^`]+)`", row[2])) == works[answers][1], label
