"""No JSON input crashes the Anthropic parser or lister: each returns an in-range value or
raises ParseError; and an ended batch's state always agrees with its counts."""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.model import TASK_STATES, State
from exporter.providers.anthropic_message_batch.api import Source, lister, parse
from exporter.providers.base import ListQuery, ParseError

FIXTURES = Path(__file__).parent.parent / "fixtures"
POLLED_AT = datetime(2026, 1, 1, tzinfo=UTC)
EXAMPLES = int(os.environ.get("PARSER_FUZZ_EXAMPLES", "300"))

STRINGS = ["in_progress", "canceling", "ended", "ENDED", "message_batch", "",
           "2024-09-24T18:37:24.100435Z", "0001-01-01T00:00:00Z"]  # fmt: skip
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(STRINGS)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)
KEYS = [
    "id", "type", "processing_status", "request_counts", "processing", "succeeded", "errored",
    "canceled", "expired", "created_at", "expires_at", "ended_at", "cancel_initiated_at",
    "archived_at", "results_url", "data", "has_more", "first_id", "last_id",
]  # fmt: skip
batch_like = st.recursive(
    scalars,
    lambda children: st.dictionaries(st.sampled_from(KEYS), children, max_size=9),
    max_leaves=30,
)
counts = st.integers(min_value=0, max_value=10_000)


def check(payload: Any) -> None:
    try:
        snap = parse(payload, POLLED_AT)
    except ParseError:
        return
    assert "overall" in snap.progress or (not snap.progress and not snap.state.terminal)
    assert all(0.0 <= v <= 1.0 and not math.isnan(v) for v in snap.progress.values())
    assert set(snap.tasks) == set(TASK_STATES)
    assert all(v >= 0 for v in snap.tasks.values())
    assert snap.finished is None or snap.state.terminal


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=json_values | batch_like)
def test_any_json_is_a_snapshot_or_a_parse_error(payload: Any) -> None:
    check(payload)


REAL = [
    json.loads(path.read_text(encoding="utf-8"))
    for path in sorted(FIXTURES.glob("*.json"))
    if not path.name.startswith("synthetic-error")
]
BATCHES = [b for b in REAL if "data" not in b] + [e for b in REAL for e in b.get("data", [])]


def _mutate(value: Any, path: list[int], replacement: Any) -> Any:
    """Replace one node of `value` (chosen by `path`) with `replacement`, or delete it."""
    if not path or not isinstance(value, dict | list) or not value:
        return replacement
    if isinstance(value, dict):
        keys = sorted(value)
        key = keys[path[0] % len(keys)]
        out = dict(value)
        if replacement == "<delete>" and len(path) == 1:
            del out[key]
        else:
            out[key] = _mutate(value[key], path[1:], replacement)
        return out
    out_list = list(value)
    out_list[path[0] % len(out_list)] = _mutate(out_list[path[0] % len(out_list)], path[1:],
                                                replacement)  # fmt: skip
    return out_list


@settings(max_examples=EXAMPLES * 3, deadline=None)
@given(
    body=st.sampled_from(BATCHES),
    path=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=3),
    replacement=json_values | st.just("<delete>") | st.integers(min_value=2**63, max_value=2**80),
)
def test_mutated_published_answers_never_crash(
    body: Any, path: list[int], replacement: Any
) -> None:
    """Published answers with one field removed, retyped or made huge: snapshot or ParseError."""
    check(_mutate(body, path, replacement))


@settings(max_examples=EXAMPLES, deadline=None)
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
    total = processing + succeeded + errored + canceled + expired
    assert snap.state.terminal
    assert (snap.state is State.SUCCEEDED) == (succeeded > 0 and succeeded == total)
    assert (snap.state is State.PARTIALLY_SUCCEEDED) == (0 < succeeded < total)
    if snap.state is State.CANCELLED:
        assert succeeded == errored == 0 < canceled
    if snap.state is not State.SUCCEEDED:
        done = (succeeded + errored) / total if total else 0.0
        assert math.isclose(snap.progress["overall"], min(done, 1.0))


SOURCE = Source.model_validate(
    {"name": "claude", "provider": "anthropic_message_batch", "auth": {"api_key": "k"}}
)
SINCE = datetime(2024, 9, 24, tzinfo=UTC)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=json_values | batch_like | st.builds(
    lambda data, more, last: {"data": data, "has_more": more, "last_id": last},
    st.lists(st.sampled_from(BATCHES) | batch_like, max_size=4), json_values, json_values,
))  # fmt: skip
def test_any_listing_is_a_page_or_a_parse_error(payload: Any) -> None:
    """A list answer of any shape: a page of path-safe jobs, or ParseError."""
    (ask,) = lister(SOURCE, ListQuery(SINCE, SINCE + timedelta(hours=1)))
    try:
        page = ask.read(payload, POLLED_AT)
    except ParseError:
        return
    assert all(job.job_id and "/" not in job.job_id for job in page.listed)
    assert len(page.follow) <= 1
