"""A training job's finish time (JobSnapshot.finished, the source of
asyncjob_finished_timestamp_seconds): set for a finished job only, never from a placeholder.

Expected values are read off the fixture files by hand, not produced by the parser.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import example_body, fixture

from exporter.model import JobSnapshot, State
from exporter.providers import PROVIDERS

NAME = "azure_language_training"
POLLED_AT = datetime(2026, 3, 2, 11, 30, tzinfo=UTC)
PLACEHOLDER = "0001-01-01T00:00:00Z"  # what .NET serializes an unset DateTime as


def parse(payload: Any) -> JobSnapshot:
    return PROVIDERS[NAME].parse(payload, POLLED_AT)


def training_job() -> Any:
    """The first job of the 2023-04-01 list example: succeeded, both phases with an end."""
    return copy.deepcopy(
        example_body(NAME, "2023-04-01_SuccessfulListTrainingJobs.json")["value"][0]
    )


def test_a_finished_job_finishes_at_its_latest_phase_end() -> None:
    """The later phase end, not lastUpdatedDateTime."""
    snap = parse(training_job())
    assert snap.state.terminal
    assert snap.finished == datetime(2022, 4, 18, 15, 47, 23, 837889, tzinfo=UTC)


@pytest.mark.parametrize(
    "payload",
    [
        fixture(NAME, "real-conversations-evaluating.json"),  # two phases ended, evaluation not
        fixture(NAME, "seed-000-status.json"),
    ],
)
def test_an_unfinished_job_has_no_finish_time_whatever_its_answer_carries(payload: Any) -> None:
    snap = parse(payload)
    assert not snap.state.terminal
    assert snap.finished is None


def test_a_training_job_falls_back_to_its_last_update_when_no_phase_has_an_end() -> None:
    """Phase ends that are missing or placeholders give way to lastUpdatedDateTime; one real
    phase end among placeholders is the finish."""
    last_update = datetime(2022, 4, 18, 15, 47, 50, tzinfo=UTC)
    job = training_job()
    for key in ("trainingStatus", "evaluationStatus"):
        del job["result"][key]["endDateTime"]
    assert parse(job).finished == last_update
    job = training_job()
    for key in ("trainingStatus", "evaluationStatus"):
        job["result"][key]["endDateTime"] = PLACEHOLDER
    assert parse(job).finished == last_update
    job = training_job()
    job["result"]["evaluationStatus"]["endDateTime"] = PLACEHOLDER
    training_end = datetime(2022, 4, 18, 15, 47, 19, 263968, tzinfo=UTC)
    assert parse(job).finished == training_end


def test_a_failed_training_job_finishes_at_its_last_phase_end() -> None:
    """A job that failed in training has no evaluation end: the training end is the finish."""
    job = training_job()
    job["status"] = "failed"
    del job["result"]["evaluationStatus"]["endDateTime"]
    job["result"]["evaluationStatus"]["status"] = "notStarted"
    parsed = parse(job)
    assert parsed.state is State.FAILED
    assert parsed.finished == datetime(2022, 4, 18, 15, 47, 19, 263968, tzinfo=UTC)
