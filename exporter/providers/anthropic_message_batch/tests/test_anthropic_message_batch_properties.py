"""An ended batch's state always agrees with its counts, and all five counts are its tasks.
(That no answer crashes the parser or the listing's reading is
tests/providers/test_parser_properties.py's, for every provider.)"""

from __future__ import annotations

import math

from fuzzing import POLLED_AT, SECONDARY
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.model import TASK_STATES, State
from exporter.providers.anthropic_message_batch.api import parse

counts = st.integers(min_value=0, max_value=10_000)


@settings(max_examples=SECONDARY, deadline=None)
@given(processing=counts, succeeded=counts, errored=counts, canceled=counts, expired=counts)
def test_ended_state_agrees_with_counts(
    processing: int, succeeded: int, errored: int, canceled: int, expired: int
) -> None:
    """An ended batch: succeeded only when every request did, failed or cancelled only when none
    did, and its progress is the share that succeeded or errored (1 when all succeeded)."""
    counted = {"processing": processing, "succeeded": succeeded, "errored": errored,
               "canceled": canceled, "expired": expired}  # fmt: skip
    body = {"id": "msgbatch_1", "processing_status": "ended", "request_counts": counted}
    snap = parse(body, POLLED_AT)
    assert set(snap.tasks) == set(TASK_STATES)
    total = processing + succeeded + errored + canceled + expired
    assert snap.state.terminal
    assert (snap.state is State.SUCCEEDED) == (succeeded > 0 and succeeded == total)
    assert (snap.state is State.PARTIALLY_SUCCEEDED) == (0 < succeeded < total)
    if snap.state is State.CANCELLED:
        assert succeeded == errored == 0 < canceled
    if snap.state is not State.SUCCEEDED:
        done = (succeeded + errored) / total if total else 0.0
        assert math.isclose(snap.progress["overall"], min(done, 1.0))
