"""A batch's finish time (JobSnapshot.finished, the source of
asyncjob_finished_timestamp_seconds): its last action, for a finished batch only, never a
placeholder.

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

NAME = "azure_document_translation"
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
        (fixture(NAME, "seed-003-status.json"), datetime(2020, 3, 26, 1, 0, tzinfo=UTC)),
        (fixture(NAME, "real-cancelled-batch.json"),
         datetime(2026, 3, 2, 8, 3, 10, 765432, tzinfo=UTC)),
    ],
)  # fmt: skip
def test_a_finished_batch_finishes_at_its_last_action(payload: Any, finished: datetime) -> None:
    snap = parse(payload)
    assert snap.state.terminal
    assert snap.finished == finished


@pytest.mark.parametrize(
    "payload",
    [
        changed(fixture(NAME, "seed-003-status.json"), status="Running"),
        changed(fixture(NAME, "seed-003-status.json"),  # a finish placeholder, unfinished
                status="NotStarted", lastActionDateTimeUtc=PLACEHOLDER),
    ],
)  # fmt: skip
def test_an_unfinished_batch_has_no_finish_time_whatever_its_answer_carries(payload: Any) -> None:
    snap = parse(payload)
    assert not snap.state.terminal
    assert snap.finished is None


def test_a_placeholder_is_not_a_finish_time() -> None:
    snap = parse(changed(fixture(NAME, "seed-003-status.json"), lastActionDateTimeUtc=PLACEHOLDER))
    assert snap.state.terminal
    assert snap.finished is None
