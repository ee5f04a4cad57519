"""--metric-allowlist and --metric-denylist: the patterns, what they keep, and the list of
families they are checked against (the exposition's part is in test_exposition.py, the command
line's in test_cli.py)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest
from conftest import with_source
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import metric_families
from exporter.exposition import FAMILIES
from exporter.selection import Selection, names_of, parse_patterns
from exporter.simulator import Fault
from exporter.storage import Storage

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from conftest import Harness

KNOWN = (("asyncjob_state", "gauge"), ("asyncjob_state_changes", "counter"),
         ("asyncjob_job_duration_seconds", "histogram"))  # fmt: skip


def allow(value: str, families: tuple[tuple[str, str], ...] = KNOWN) -> Selection:
    return Selection.of(parse_patterns(value, families), None)


def deny(value: str, families: tuple[tuple[str, str], ...] = KNOWN) -> Selection:
    return Selection.of(None, parse_patterns(value, families))


def kept(selection: Selection, families: tuple[tuple[str, str], ...] = KNOWN) -> list[str]:
    return [name for name, kind in families if selection.keeps(name, kind)]


def test_a_pattern_matches_a_whole_name() -> None:
    """As if anchored: asyncjob_state keeps asyncjob_state, not asyncjob_state_changes."""
    assert kept(allow("asyncjob_state")) == ["asyncjob_state"]
    assert kept(deny("asyncjob_state")) == [
        "asyncjob_state_changes",
        "asyncjob_job_duration_seconds",
    ]
    assert kept(allow("asyncjob_state.*")) == ["asyncjob_state", "asyncjob_state_changes"]
    with pytest.raises(ValueError, match='"state" matches no metric family'):
        allow("state")


def test_a_counter_answers_to_both_its_names_a_histogram_to_its_own() -> None:
    """The README's name of a counter (NAME_total) and client_python's (NAME) both select it; a
    histogram's samples' names (_bucket, _count, _sum) are not its name."""
    assert kept(allow("asyncjob_state_changes_total")) == ["asyncjob_state_changes"]
    assert kept(allow("asyncjob_state_changes")) == ["asyncjob_state_changes"]
    assert kept(allow(".*_total")) == ["asyncjob_state_changes"]
    assert kept(allow("asyncjob_job_duration_seconds")) == ["asyncjob_job_duration_seconds"]
    with pytest.raises(ValueError, match="matches no metric family"):
        allow("asyncjob_job_duration_seconds_bucket")
    assert names_of("asyncjob_x", "counter") == ("asyncjob_x_total", "asyncjob_x")


def test_entries_are_trimmed_and_an_empty_list_is_no_list() -> None:
    """As kube-state-metrics reads its lists: blanks around an entry go, empty entries too."""
    assert kept(allow(" asyncjob_state , ,asyncjob_job_duration_seconds,")) == [
        "asyncjob_state", "asyncjob_job_duration_seconds"
    ]  # fmt: skip
    assert kept(allow(" , ")) == [name for name, _ in KNOWN]
    assert kept(Selection()) == [name for name, _ in KNOWN]


def test_every_bad_pattern_is_named_and_the_families_listed() -> None:
    """A typo cannot keep nothing (allowlist) or silently keep everything (denylist)."""
    with pytest.raises(ValueError, match="matches no metric family") as caught:
        allow("asyncjob_stat,asyncjob_state,asyncjob_(,nothing")
    message = str(caught.value)
    assert message.startswith('"asyncjob_stat" matches no metric family; "asyncjob_(" is not a '
                              "regular expression: missing ), unterminated subpattern")  # fmt: skip
    assert '"nothing" matches no metric family (families: asyncjob_state, ' in message
    assert message.endswith("asyncjob_state_changes_total, asyncjob_job_duration_seconds)")


def test_the_lists_are_mutually_exclusive() -> None:
    """As in kube-state-metrics: one list or the other, never both."""
    state = (re.compile("asyncjob_state"),)
    with pytest.raises(ValueError, match="mutually exclusive"):
        Selection.of(state, state)
    assert Selection.of((), None) == Selection()


def test_only_asyncjob_families_are_ever_left_out() -> None:
    """client_python's process_ and python_ families are exported whatever the lists say."""
    everything = deny(".*")
    assert not everything.keeps("asyncjob_state", "gauge")
    assert everything.keeps("process_cpu_seconds", "counter")
    assert everything.keeps("python_gc_objects_collected", "counter")
    assert allow("asyncjob_state").keeps("python_info", "gauge")


def test_metric_families_lists_every_family_an_exporter_exports(
    make_harness: Callable[..., Harness], tmp_path: Path
) -> None:
    """What the lists are checked against is complete: an exporter with storage, discovery, a
    webhook and a failing job exports every family, and each is in metric_families(); so are
    the ones that appear only after an event."""
    storage = Storage.open(tmp_path / "data")
    try:
        h = make_harness(
            with_source(4, webhook_token="t", discovery={}), at=1000.0, storage=storage
        )
        h.sim.set_fault("batch-ok", Fault(status=404))
        h.exporter.poll_once()
        exposed = {
            (family.name, family.type)
            for family in text_string_to_metric_families(h.scrape().text)
            if family.name.startswith("asyncjob_")
        }
    finally:
        storage.close()
    listed = metric_families()
    names = {name for name, _ in listed}
    assert len(names) == len(listed)
    assert all(name.startswith("asyncjob_") for name in names)
    assert exposed <= set(listed), exposed - set(listed)
    assert {(f.name, f.type) for f in FAMILIES} <= set(listed)
    event_only = {"asyncjob_webhooks", "asyncjob_jobs_discovered", "asyncjob_storage_errors",
                  "asyncjob_jobs_dropped", "asyncjob_last_poll_error_info"}  # fmt: skip
    assert event_only <= names
