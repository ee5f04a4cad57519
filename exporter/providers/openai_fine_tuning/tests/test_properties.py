"""No answer to the events request crashes its reading, and a step of a known total is its
progress. (That no answer crashes the parser or the listing's reading is
tests/providers/test_parser_properties.py's, for every provider.)"""

from __future__ import annotations

from typing import Any

from fuzzing import POLLED_AT, SECONDARY, listing_like
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.providers.base import ParseError
from exporter.providers.openai_fine_tuning import PROVIDER
from exporter.providers.openai_fine_tuning.api import read_events

RUNNING = PROVIDER.parse({"status": "running", "created_at": 1721764800}, POLLED_AT)


@settings(max_examples=SECONDARY, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=listing_like("openai_fine_tuning"))  # events come as a list
def test_any_events_answer_completes_the_snapshot_or_is_a_parse_error(payload: Any) -> None:
    try:
        snap = read_events(payload, RUNNING, POLLED_AT)
    except ParseError:
        return
    assert snap.state is RUNNING.state
    assert 0.0 <= snap.progress.get("overall", 0.0) <= 1.0
    assert snap.training_step is None or snap.training_step >= 0


@given(step=st.integers(0, 10**6), total=st.integers(1, 10**6), loss=st.floats(0, 100))
def test_a_step_of_a_known_total_is_its_progress(step: int, total: int, loss: float) -> None:
    event = {"type": "metrics", "message": f"Step {step}/{total}: training loss={loss:.2f}",
             "data": {"step": step, "train_loss": loss}}  # fmt: skip
    snap = read_events({"data": [event]}, RUNNING, POLLED_AT)
    assert snap.training_step == step
    assert snap.progress["overall"] == min(step / total, 1.0)
    assert snap.training_loss == {"train": loss}
