"""What the live services send where it differs from their documents (each provider's
fixtures/real-*).

Expected values are read off the fixture files by hand, not produced by the parsers.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import fixture

from exporter.model import MAX_LABEL_LENGTH, JobSnapshot, State
from exporter.providers import PROVIDERS

POLLED_AT = datetime(2026, 3, 2, 11, 30, tzinfo=UTC)


def parse(provider: str, payload: Any) -> JobSnapshot:
    return PROVIDERS[provider].parse(payload, POLLED_AT)


# -- Stable Diffusion ----------------------------------------------------------------------------


def test_long_worker_log_is_parsed_to_its_last_step() -> None:
    """A log over the label limit, in the worker's 'N More Steps to go ... | Time Elapsed' form."""
    payload = fixture("stable_diffusion_finetune", "real-worker-log-step4.json")
    assert len(payload["data"]) > 2 * MAX_LABEL_LENGTH  # the old parser saw only the first 200
    snap = parse("stable_diffusion_finetune", payload)
    assert snap.state is State.RUNNING
    assert snap.vendor_status == "trained_model_uploading"
    assert snap.progress == {"overall": 4 / 6}  # Step:4 ..., 2 More Steps to go
    assert snap.estimated_completion == POLLED_AT + timedelta(minutes=12)


def test_step_line_in_the_middle_of_a_long_log_counts() -> None:
    """Whatever comes after the last step line (long, or with no step) does not hide it."""
    payload = fixture("stable_diffusion_finetune", "real-worker-log-step4.json")
    payload["data"] += "\n" + "upload chunk done\n" * 500
    assert parse("stable_diffusion_finetune", payload).progress == {"overall": 4 / 6}


def test_training_failed_stage_is_a_failed_job() -> None:
    snap = parse(
        "stable_diffusion_finetune",
        fixture("stable_diffusion_finetune", "real-training-failed.json"),
    )
    assert (snap.state, snap.vendor_status) == (State.FAILED, "training_failed")
    assert snap.progress == {"overall": 1 / 6}  # Step:1, 5 More Steps to go
    assert snap.estimated_completion is None  # finished: nothing to estimate


def test_only_labels_are_truncated() -> None:
    """A stage longer than a label is cut in the label, and is still read whole."""
    payload = {"status": "success", "messege": "x" * 500, "data": ""}
    snap = parse("stable_diffusion_finetune", payload)
    assert snap.vendor_status == "x" * MAX_LABEL_LENGTH
    assert snap.state is State.UNKNOWN


# -- Training jobs -------------------------------------------------------------------------------


def test_conversations_job_reports_three_phases_and_no_stale_estimate() -> None:
    """Data generation 100, training 100, evaluation 40: overall 80%, estimate not exported."""
    snap = parse(
        "azure_language_training",
        fixture("azure_language_training", "real-conversations-evaluating.json"),
    )
    assert snap.state is State.RUNNING
    assert dict(snap.progress) == pytest.approx(
        {"data_generation": 1.0, "training": 1.0, "evaluation": 0.4, "overall": 0.8}
    )
    assert snap.display_name == "orders-v4"
    # estimatedEndDateTime (10:40) covers training, which ended at 10:38; evaluation goes on.
    assert snap.estimated_completion is None
    assert snap.started == datetime(2026, 3, 2, 10, 5, 10, tzinfo=UTC)


def test_estimate_is_kept_while_training_runs() -> None:
    payload = fixture("azure_language_training", "real-conversations-evaluating.json")
    payload["result"]["trainingStatus"] = {"percentComplete": 60, "status": "running"}
    payload["result"]["evaluationStatus"] = {"percentComplete": 0, "status": "notStarted"}
    snap = parse("azure_language_training", payload)
    assert snap.estimated_completion == datetime(2026, 3, 2, 10, 40, tzinfo=UTC)
    assert snap.progress["overall"] == pytest.approx(1.6 / 3)


def test_training_phase_marked_succeeded_below_100_percent_has_ended() -> None:
    payload = fixture("azure_language_training", "real-conversations-evaluating.json")
    payload["result"]["trainingStatus"]["percentComplete"] = 99
    assert parse("azure_language_training", payload).estimated_completion is None


# -- Cancelled work is not done ------------------------------------------------------------------


def test_cancelled_batch_progress_counts_only_finished_documents() -> None:
    """3 succeeded + 1 failed of 10, 6 cancelled: progress 0.4, not 1.0."""
    snap = parse(
        "azure_document_translation",
        fixture("azure_document_translation", "real-cancelled-batch.json"),
    )
    assert snap.state is State.CANCELLED
    assert snap.progress == {"overall": 0.4}
    assert snap.documents == {
        "succeeded": 3,
        "failed": 1,
        "in_progress": 0,
        "not_started": 0,
        "cancelled": 6,
    }
    assert snap.characters_charged == 4200


def test_cancelled_analyze_job_exports_its_cancelled_tasks() -> None:
    """Total 5, completed 1: the 4 tasks in no count were cancelled; progress 1/5."""
    snap = parse(
        "azure_language_analyze_text",
        fixture("azure_language_analyze_text", "real-cancelled-job.json"),
    )
    assert snap.state is State.CANCELLED
    assert snap.tasks == {"completed": 1, "failed": 0, "in_progress": 0, "cancelled": 4}
    assert snap.progress == {"overall": 0.2}


def test_cancelling_job_counts_tasks_outside_every_count_as_cancelled() -> None:
    payload = fixture("azure_language_analyze_text", "real-cancelled-job.json")
    payload["status"] = "cancelling"
    payload["tasks"].update(inProgress=1)
    snap = parse("azure_language_analyze_text", payload)
    assert snap.state is State.CANCELLING
    assert snap.tasks["cancelled"] == 3


def test_running_job_has_no_cancelled_tasks() -> None:
    payload = fixture("azure_language_analyze_text", "real-cancelled-job.json")
    payload["status"] = "running"
    assert parse("azure_language_analyze_text", payload).tasks["cancelled"] == 0


# -- Text Analytics v3.x -------------------------------------------------------------------------


def test_failed_v31_job_counts_its_failed_tasks_errors() -> None:
    """No displayName, errors only inside the failed task (2 document errors), entries 'state'."""
    snap = parse(
        "azure_text_analytics_analyze",
        fixture("azure_text_analytics_analyze", "real-v3.1-failed-task.json"),
    )
    assert (snap.state, snap.vendor_status) == (State.FAILED, "failed")
    assert snap.display_name == ""
    assert snap.errors == 2
    assert snap.tasks == {"completed": 1, "failed": 1, "in_progress": 0, "cancelled": 0}
    assert snap.progress == {"overall": 1.0}


def test_failed_task_without_listed_errors_counts_one() -> None:
    payload = fixture("azure_text_analytics_analyze", "real-v3.1-failed-task.json")
    del payload["tasks"]["keyPhraseExtractionTasks"][0]["results"]
    assert parse("azure_text_analytics_analyze", payload).errors == 1


def test_rejected_task_entry_counts_as_failed() -> None:
    payload = fixture("azure_text_analytics_analyze", "real-v3.1-failed-task.json")
    payload["tasks"]["keyPhraseExtractionTasks"][0]["state"] = "rejected"
    assert parse("azure_text_analytics_analyze", payload).errors == 2


def test_v32_preview_succeeded_and_na_name() -> None:
    """The live preview says 'succeeded' (docs: 'completed') and 'NA' for no name."""
    snap = parse(
        "azure_text_analytics_analyze",
        fixture("azure_text_analytics_analyze", "real-v3.2-preview.2-succeeded.json"),
    )
    assert (snap.state, snap.vendor_status) == (State.SUCCEEDED, "succeeded")
    assert snap.display_name == ""
    assert snap.errors == 0
    assert snap.tasks == {"completed": 1, "failed": 0, "in_progress": 0, "cancelled": 0}
