"""What the live service sends where it differs from its documents (../fixtures/real-*).

Expected values are read off the fixture files by hand, not produced by the parser.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from conftest import fixture

from exporter.model import JobSnapshot, State
from exporter.providers import PROVIDERS

NAME = "azure_language_analyze_text"
POLLED_AT = datetime(2026, 3, 2, 11, 30, tzinfo=UTC)


def parse(payload: Any) -> JobSnapshot:
    return PROVIDERS[NAME].parse(payload, POLLED_AT)


def test_cancelled_analyze_job_exports_its_cancelled_tasks() -> None:
    """Total 5, completed 1: the 4 tasks in no count were cancelled; progress 1/5."""
    snap = parse(fixture(NAME, "real-cancelled-job.json"))
    assert snap.state is State.CANCELLED
    assert snap.tasks == {"completed": 1, "failed": 0, "in_progress": 0, "cancelled": 4}
    assert snap.progress == {"overall": 0.2}


def test_cancelling_job_counts_tasks_outside_every_count_as_cancelled() -> None:
    payload = fixture(NAME, "real-cancelled-job.json")
    payload["status"] = "cancelling"
    payload["tasks"].update(inProgress=1)
    snap = parse(payload)
    assert snap.state is State.CANCELLING
    assert snap.tasks["cancelled"] == 3


def test_running_job_has_no_cancelled_tasks() -> None:
    payload = fixture(NAME, "real-cancelled-job.json")
    payload["status"] = "running"
    assert parse(payload).tasks["cancelled"] == 0
