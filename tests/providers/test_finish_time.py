"""Each parser's finish time (JobSnapshot.finished, the source of
asyncjob_finished_timestamp_seconds): set for a finished job only, never from a placeholder.

Expected values are read off the fixture files by hand, not produced by the parsers.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import example_body, fixture

from exporter.model import JobSnapshot, State
from exporter.providers import PROVIDERS

POLLED_AT = datetime(2026, 3, 2, 11, 30, tzinfo=UTC)
PLACEHOLDER = "0001-01-01T00:00:00Z"  # what .NET serializes an unset DateTime as


def parse(provider: str, payload: Any) -> JobSnapshot:
    return PROVIDERS[provider].parse(payload, POLLED_AT)


def changed(payload: Any, **fields: Any) -> Any:
    """A copy of an answer with some top-level fields replaced."""
    return {**copy.deepcopy(payload), **fields}


def training_job() -> Any:
    """The first job of the 2023-04-01 list example: succeeded, both phases with an end."""
    return copy.deepcopy(
        example_body("azure_language_training", "2023-04-01_SuccessfulListTrainingJobs.json")[
            "value"
        ][0]
    )


# (provider, answer, finish time): the finished answers of every provider.
FINISHED = [
    ("azure_document_translation", fixture("azure_document_translation", "seed-003-status.json"),
     datetime(2020, 3, 26, 1, 0, tzinfo=UTC)),
    ("azure_document_translation",
     fixture("azure_document_translation", "real-cancelled-batch.json"),
     datetime(2026, 3, 2, 8, 3, 10, 765432, tzinfo=UTC)),
    ("azure_language_training", training_job(),  # the later phase end, not lastUpdatedDateTime
     datetime(2022, 4, 18, 15, 47, 23, 837889, tzinfo=UTC)),
    ("azure_language_analyze_text",
     fixture("azure_language_analyze_text", "seed-001-status.json"),
     datetime(2021, 5, 19, 14, 32, 25, 578000, tzinfo=UTC)),
    ("azure_language_analyze_text",
     fixture("azure_language_analyze_text", "real-cancelled-job.json"),
     datetime(2026, 3, 2, 8, 1, 30, tzinfo=UTC)),
    ("azure_text_analytics_analyze",
     example_body("azure_text_analytics_analyze", "v3.1_SuccessfulAnalyzeStatusRequest.json"),
     datetime(2020, 10, 1, 15, 1, 3, tzinfo=UTC)),
    ("azure_text_analytics_analyze",
     fixture("azure_text_analytics_analyze", "real-v3.1-failed-task.json"),
     datetime(2026, 3, 2, 8, 0, 20, tzinfo=UTC)),
]  # fmt: skip


@pytest.mark.parametrize(("provider", "payload", "finished"), FINISHED)
def test_a_finished_job_has_the_finish_time_its_api_gives(
    provider: str, payload: Any, finished: datetime
) -> None:
    """Translator: lastActionDateTimeUtc; training: the latest phase endDateTime; analyze-text
    and Text Analytics: the last update of the finished job."""
    snap = parse(provider, payload)
    assert snap.state.terminal
    assert snap.finished == finished


@pytest.mark.parametrize(
    ("provider", "payload"),
    [
        ("azure_document_translation",
         changed(fixture("azure_document_translation", "seed-003-status.json"), status="Running")),
        ("azure_language_training",  # two phases ended, evaluation still running
         fixture("azure_language_training", "real-conversations-evaluating.json")),
        ("azure_language_training", fixture("azure_language_training", "seed-000-status.json")),
        ("azure_language_analyze_text",
         changed(fixture("azure_language_analyze_text", "seed-001-status.json"),
                 status="running")),
        ("azure_text_analytics_analyze",
         changed(fixture("azure_text_analytics_analyze", "real-v3.1-failed-task.json"),
                 status="running")),
        ("azure_document_translation",  # a finish placeholder on an unfinished batch
         changed(fixture("azure_document_translation", "seed-003-status.json"),
                 status="NotStarted", lastActionDateTimeUtc=PLACEHOLDER)),
    ],
)  # fmt: skip
def test_an_unfinished_job_has_no_finish_time_whatever_its_answer_carries(
    provider: str, payload: Any
) -> None:
    snap = parse(provider, payload)
    assert not snap.state.terminal
    assert snap.finished is None


@pytest.mark.parametrize(
    "name", ["seed-004-status.json", "real-training-failed.json", "real-worker-log-step4.json"]
)
def test_a_fine_tune_answer_has_no_finish_time(name: str) -> None:
    """Stable Diffusion gives no times: the store decides (tests/test_store.py)."""
    answer = fixture("stable_diffusion_finetune", name)
    assert parse("stable_diffusion_finetune", answer).finished is None


@pytest.mark.parametrize(
    ("provider", "payload"),
    [
        ("azure_document_translation",
         changed(fixture("azure_document_translation", "seed-003-status.json"),
                 lastActionDateTimeUtc=PLACEHOLDER)),
        ("azure_language_analyze_text",
         changed(fixture("azure_language_analyze_text", "real-cancelled-job.json"),
                 lastUpdatedDateTime=PLACEHOLDER)),
        ("azure_text_analytics_analyze",  # before its own creation: not a finish either
         changed(fixture("azure_text_analytics_analyze", "real-v3.1-failed-task.json"),
                 lastUpdateDateTime="2026-03-01T08:00:00Z")),
    ],
)  # fmt: skip
def test_a_placeholder_is_not_a_finish_time(provider: str, payload: Any) -> None:
    snap = parse(provider, payload)
    assert snap.state.terminal
    assert snap.finished is None


def test_a_training_job_falls_back_to_its_last_update_when_no_phase_has_an_end() -> None:
    """Phase ends that are missing or placeholders give way to lastUpdatedDateTime; one real
    phase end among placeholders is the finish."""
    last_update = datetime(2022, 4, 18, 15, 47, 50, tzinfo=UTC)
    job = training_job()
    for key in ("trainingStatus", "evaluationStatus"):
        del job["result"][key]["endDateTime"]
    assert parse("azure_language_training", job).finished == last_update
    job = training_job()
    for key in ("trainingStatus", "evaluationStatus"):
        job["result"][key]["endDateTime"] = PLACEHOLDER
    assert parse("azure_language_training", job).finished == last_update
    job = training_job()
    job["result"]["evaluationStatus"]["endDateTime"] = PLACEHOLDER
    training_end = datetime(2022, 4, 18, 15, 47, 19, 263968, tzinfo=UTC)
    assert parse("azure_language_training", job).finished == training_end


def test_a_failed_training_job_finishes_at_its_last_phase_end() -> None:
    """A job that failed in training has no evaluation end: the training end is the finish."""
    job = training_job()
    job["status"] = "failed"
    del job["result"]["evaluationStatus"]["endDateTime"]
    job["result"]["evaluationStatus"]["status"] = "notStarted"
    parsed = parse("azure_language_training", job)
    assert parsed.state is State.FAILED
    assert parsed.finished == datetime(2022, 4, 18, 15, 47, 19, 263968, tzinfo=UTC)
