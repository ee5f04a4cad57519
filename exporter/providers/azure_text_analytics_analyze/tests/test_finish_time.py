"""A Text Analytics job's finish time (JobSnapshot.finished, the source of
asyncjob_finished_timestamp_seconds): set for a finished job only, never from a placeholder.

Expected values are read off the fixture files by hand, not produced by the parser.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from conftest import example_body, fixture

from exporter.providers import PROVIDERS

if TYPE_CHECKING:
    from exporter.model import JobSnapshot

NAME = "azure_text_analytics_analyze"
POLLED_AT = datetime(2026, 3, 2, 11, 30, tzinfo=UTC)


def parse(payload: Any) -> JobSnapshot:
    return PROVIDERS[NAME].parse(payload, POLLED_AT)


def changed(payload: Any, **fields: Any) -> Any:
    """A copy of an answer with some top-level fields replaced."""
    return {**copy.deepcopy(payload), **fields}


@pytest.mark.parametrize(
    ("payload", "finished"),
    [
        (example_body(NAME, "v3.1_SuccessfulAnalyzeStatusRequest.json"),
         datetime(2020, 10, 1, 15, 1, 3, tzinfo=UTC)),
        (fixture(NAME, "real-v3.1-failed-task.json"), datetime(2026, 3, 2, 8, 0, 20, tzinfo=UTC)),
    ],
)  # fmt: skip
def test_a_finished_job_finishes_at_its_last_update(payload: Any, finished: datetime) -> None:
    snap = parse(payload)
    assert snap.state.terminal
    assert snap.finished == finished


def test_an_unfinished_job_has_no_finish_time_whatever_its_answer_carries() -> None:
    snap = parse(changed(fixture(NAME, "real-v3.1-failed-task.json"), status="running"))
    assert not snap.state.terminal
    assert snap.finished is None


def test_a_time_before_the_job_was_created_is_not_a_finish_time() -> None:
    payload = changed(
        fixture(NAME, "real-v3.1-failed-task.json"), lastUpdateDateTime="2026-03-01T08:00:00Z"
    )
    snap = parse(payload)
    assert snap.state.terminal
    assert snap.finished is None
