"""The README is the user's manual: every flag, metric, alert and config key it names exists,
and everything the code offers is named in it."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import yaml
from conftest import REPO, Harness, with_source

from exporter.cli import build_parser
from exporter.config import GlobalConfig
from exporter.providers import PROVIDERS
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
    assert named <= families | exposed, named - families - exposed


def test_alerts() -> None:
    groups = yaml.safe_load((REPO / "alerting/rules/asyncjob-alerts.yaml").read_text())["groups"]
    alerts = {rule["alert"] for group in groups for rule in group["rules"]}
    assert set(re.findall(r"`(AsyncJob[A-Za-z]+)`", README)) == alerts


def test_config_keys_and_providers() -> None:
    assert table_keys("### `global`") == set(GlobalConfig.model_fields)
    source_keys = set().union(*(p.source_model.model_fields for p in PROVIDERS.values()))
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
