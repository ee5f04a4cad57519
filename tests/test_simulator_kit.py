"""The simulator kit's timelines and its default throttled answer."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from exporter.simulator.kit import Moment, Outcome, SimJob, moment, terminal, too_many_requests


@pytest.mark.parametrize(
    ("outcome", "phase"),
    [("failed", "failed"), ("expired", "expired"), ("cancelled", "cancelled"),
     ("stalled", "running")],
)  # fmt: skip
def test_a_job_that_does_not_succeed_stops_at_stop_at(outcome: Outcome, phase: str) -> None:
    """Before `stop_at` it runs; from there it ends as its outcome says (a stalled job runs on
    without moving), with that share of the work done."""
    job = SimJob("j", "api", duration=100, start_delay=5, outcome=outcome, stop_at=0.3)
    assert moment(job, 3) == Moment("not_started", 0.0)
    assert moment(job, 25) == Moment("running", 0.2)
    assert moment(job, 35) == Moment(phase, 0.3)  # type: ignore[arg-type]
    assert moment(job, 500) == Moment(phase, 0.3)  # type: ignore[arg-type]
    assert terminal(job, 500) is (outcome != "stalled")


def test_the_default_throttled_answer_names_its_wait() -> None:
    clock = datetime(2026, 1, 1, tzinfo=UTC)
    status, headers, body = too_many_requests(SimJob("j", "api", retry_after=3), clock)
    assert (status, headers["Retry-After"]) == (429, "3")
    assert json.loads(body)["error"]["code"] == "RequestRateTooHigh"
