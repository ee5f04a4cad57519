"""An analyze-text job's finish time (JobSnapshot.finished, the source of
asyncjob_finished_timestamp_seconds): set for a finished job only, never from a placeholder.

Expected values are read off the fixture files by hand, not produced by the parser.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from conftest import fixture

from exporter.providers import PROVIDERS

if TYPE_CHECKING:
    from exporter.model import JobSnapshot

NAME = "azure_language_analyze_text"
POLLED_AT = datetime(2026, 3, 2, 11, 30, tzinfo=UTC)
PLACEHOLDER = "0001-01-01T00:00:00Z"  # what .NET serializes an unset DateTime as


def parse(payload: Any) -> JobSnapshot:
    return PROVIDERS[NAME].parse(payload, POLLED_AT)


def changed(payload: Any, **fields: Any) -> Any:
    """A copy of an answer with some top-level fields replaced."""
    return {**copy.deepcopy(payload), **fields}


@pytest.mark.parametrize(
    ("payload", "finished"),
    [
        (fixture(NAME, "seed-001-status.json"),
         datetime(2021, 5, 19, 14, 32, 25, 578000, tzinfo=UTC)),
        (fixture(NAME, "real-cancelled-job.json"), datetime(2026, 3, 2, 8, 1, 30, tzinfo=UTC)),
    ],
)  # fmt: skip
def test_a_finished_job_finishes_at_its_last_update(payload: Any, finished: datetime) -> None:
    snap = parse(payload)
    assert snap.state.terminal
    assert snap.finished == finished


def test_an_unfinished_job_has_no_finish_time_whatever_its_answer_carries() -> None:
    snap = parse(changed(fixture(NAME, "seed-001-status.json"), status="running"))
    assert not snap.state.terminal
    assert snap.finished is None


def test_a_placeholder_is_not_a_finish_time() -> None:
    snap = parse(changed(fixture(NAME, "real-cancelled-job.json"), lastUpdatedDateTime=PLACEHOLDER))
    assert snap.state.terminal
    assert snap.finished is None
