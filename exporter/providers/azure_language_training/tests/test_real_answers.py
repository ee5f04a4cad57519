"""What the live service sends where it differs from its documents (../fixtures/real-*).

Expected values are read off the fixture files by hand, not produced by the parser.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import fixture

from exporter.model import JobSnapshot, State
from exporter.providers import PROVIDERS

NAME = "azure_language_training"
POLLED_AT = datetime(2026, 3, 2, 11, 30, tzinfo=UTC)


def parse(payload: Any) -> JobSnapshot:
    return PROVIDERS[NAME].parse(payload, POLLED_AT)


def test_conversations_job_reports_three_phases_and_no_stale_estimate() -> None:
    """Data generation 100, training 100, evaluation 40: overall 80%, estimate not exported."""
    snap = parse(fixture(NAME, "real-conversations-evaluating.json"))
    assert snap.state is State.RUNNING
    assert dict(snap.progress) == pytest.approx(
        {"data_generation": 1.0, "training": 1.0, "evaluation": 0.4, "overall": 0.8}
    )
    assert snap.display_name == "orders-v4"
    # estimatedEndDateTime (10:40) covers training, which ended at 10:38; evaluation goes on.
    assert snap.estimated_completion is None
    assert snap.started == datetime(2026, 3, 2, 10, 5, 10, tzinfo=UTC)


def test_estimate_is_kept_while_training_runs() -> None:
    payload = fixture(NAME, "real-conversations-evaluating.json")
    payload["result"]["trainingStatus"] = {"percentComplete": 60, "status": "running"}
    payload["result"]["evaluationStatus"] = {"percentComplete": 0, "status": "notStarted"}
    snap = parse(payload)
    assert snap.estimated_completion == datetime(2026, 3, 2, 10, 40, tzinfo=UTC)
    assert snap.progress["overall"] == pytest.approx(1.6 / 3)


def test_training_phase_marked_succeeded_below_100_percent_has_ended() -> None:
    payload = fixture(NAME, "real-conversations-evaluating.json")
    payload["result"]["trainingStatus"]["percentComplete"] = 99
    assert parse(payload).estimated_completion is None
