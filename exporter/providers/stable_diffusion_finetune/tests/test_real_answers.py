"""What the live service sends where it differs from its documents (../fixtures/real-*).

Expected values are read off the fixture files by hand, not produced by the parser.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from conftest import fixture

from exporter.model import MAX_LABEL_LENGTH, JobSnapshot, State
from exporter.providers import PROVIDERS

NAME = "stable_diffusion_finetune"
POLLED_AT = datetime(2026, 3, 2, 11, 30, tzinfo=UTC)


def parse(payload: Any) -> JobSnapshot:
    return PROVIDERS[NAME].parse(payload, POLLED_AT)


def test_long_worker_log_is_parsed_to_its_last_step() -> None:
    """A log over the label limit, in the worker's 'N More Steps to go ... | Time Elapsed' form."""
    payload = fixture(NAME, "real-worker-log-step4.json")
    assert len(payload["data"]) > 2 * MAX_LABEL_LENGTH  # the old parser saw only the first 200
    snap = parse(payload)
    assert snap.state is State.RUNNING
    assert snap.vendor_status == "trained_model_uploading"
    assert snap.progress == {"overall": 4 / 6}  # Step:4 ..., 2 More Steps to go
    assert snap.estimated_completion == POLLED_AT + timedelta(minutes=12)


def test_step_line_in_the_middle_of_a_long_log_counts() -> None:
    """Whatever comes after the last step line (long, or with no step) does not hide it."""
    payload = fixture(NAME, "real-worker-log-step4.json")
    payload["data"] += "\n" + "upload chunk done\n" * 500
    assert parse(payload).progress == {"overall": 4 / 6}


def test_training_failed_stage_is_a_failed_job() -> None:
    snap = parse(fixture(NAME, "real-training-failed.json"))
    assert (snap.state, snap.vendor_status) == (State.FAILED, "training_failed")
    assert snap.progress == {"overall": 1 / 6}  # Step:1, 5 More Steps to go
    assert snap.estimated_completion is None  # finished: nothing to estimate


def test_only_labels_are_truncated() -> None:
    """A stage longer than a label is cut in the label, and is still read whole."""
    payload = {"status": "success", "messege": "x" * 500, "data": ""}
    snap = parse(payload)
    assert snap.vendor_status == "x" * MAX_LABEL_LENGTH
    assert snap.state is State.UNKNOWN
