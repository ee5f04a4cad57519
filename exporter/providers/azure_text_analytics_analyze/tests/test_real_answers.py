"""What the live service sends where it differs from its documents (../fixtures/real-*).

Expected values are read off the fixture files by hand, not produced by the parser.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from conftest import fixture

from exporter.model import JobSnapshot, State
from exporter.providers import PROVIDERS

NAME = "azure_text_analytics_analyze"
POLLED_AT = datetime(2026, 3, 2, 11, 30, tzinfo=UTC)


def parse(payload: Any) -> JobSnapshot:
    return PROVIDERS[NAME].parse(payload, POLLED_AT)


def test_failed_v31_job_counts_its_failed_tasks_errors() -> None:
    """No displayName, errors only inside the failed task (2 document errors), entries 'state'."""
    snap = parse(fixture(NAME, "real-v3.1-failed-task.json"))
    assert (snap.state, snap.vendor_status) == (State.FAILED, "failed")
    assert snap.display_name == ""
    assert snap.errors == 2
    assert snap.tasks == {"completed": 1, "failed": 1, "in_progress": 0, "cancelled": 0}
    assert snap.progress == {"overall": 1.0}


def test_failed_task_without_listed_errors_counts_one() -> None:
    payload = fixture(NAME, "real-v3.1-failed-task.json")
    del payload["tasks"]["keyPhraseExtractionTasks"][0]["results"]
    assert parse(payload).errors == 1


def test_rejected_task_entry_counts_as_failed() -> None:
    payload = fixture(NAME, "real-v3.1-failed-task.json")
    payload["tasks"]["keyPhraseExtractionTasks"][0]["state"] = "rejected"
    assert parse(payload).errors == 2


def test_v32_preview_succeeded_and_na_name() -> None:
    """The live preview says 'succeeded' (docs: 'completed') and 'NA' for no name."""
    snap = parse(fixture(NAME, "real-v3.2-preview.2-succeeded.json"))
    assert (snap.state, snap.vendor_status) == (State.SUCCEEDED, "succeeded")
    assert snap.display_name == ""
    assert snap.errors == 0
    assert snap.tasks == {"completed": 1, "failed": 0, "in_progress": 0, "cancelled": 0}
