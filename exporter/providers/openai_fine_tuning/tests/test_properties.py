"""No JSON input crashes the fine-tuning parser, the reading of its events or of its listing: an
in-range snapshot (a page) or ParseError."""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.providers.base import ListQuery, ParseError
from exporter.providers.openai_batch.api import Source
from exporter.providers.openai_fine_tuning import PROVIDER
from exporter.providers.openai_fine_tuning.api import read_events

FIXTURES = Path(__file__).parents[1] / "fixtures"
POLLED_AT = datetime(2026, 1, 1, tzinfo=UTC)
EXAMPLES = int(os.environ.get("PARSER_FUZZ_EXAMPLES", "300"))

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["running", "paused", "succeeded", "metrics", "Step 3/10: loss=1", "Step 7:"])
    | st.integers(min_value=0, max_value=2_000_000_000)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)
KEYS = [
    "id", "object", "status", "created_at", "finished_at", "estimated_finish", "trained_tokens",
    "error", "message", "code", "user_provided_suffix", "data", "type", "step", "train_loss",
    "valid_loss", "full_valid_loss", "has_more",
]  # fmt: skip
job_like = st.recursive(
    scalars,
    lambda children: st.dictionaries(st.sampled_from(KEYS), children, max_size=8),
    max_leaves=30,
)


def _bodies() -> list[Any]:
    bodies = []
    for path in sorted(FIXTURES.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        bodies.append(data["responses"]["200"]["body"] if "responses" in data else data)
    return bodies


REAL_BODIES = _bodies()


def check(payload: Any) -> None:
    try:
        snap = PROVIDER.parse(payload, POLLED_AT)
    except ParseError:
        return
    assert "overall" in snap.progress or (not snap.progress and not snap.state.terminal)
    assert all(0.0 <= v <= 1.0 and not math.isnan(v) for v in snap.progress.values())
    assert all(v >= 0 for v in snap.tokens.values())
    assert snap.training_step is None or snap.training_step >= 0
    assert all(math.isfinite(v) for v in snap.training_loss.values())
    assert snap.errors is None or snap.errors >= 0
    assert snap.finished is None or snap.state.terminal


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=json_values | job_like)
def test_any_json_is_a_snapshot_or_a_parse_error(payload: Any) -> None:
    check(payload)


def _mutate(value: Any, path: list[int], replacement: Any) -> Any:
    """Replace one node of `value` (chosen by `path`) with `replacement`, or delete it."""
    if not path or not isinstance(value, dict | list) or not value:
        return replacement
    if isinstance(value, dict):
        key = sorted(value)[path[0] % len(value)]
        out = dict(value)
        if replacement == "<delete>" and len(path) == 1:
            del out[key]
        else:
            out[key] = _mutate(value[key], path[1:], replacement)
        return out
    items = list(value)
    items[path[0] % len(items)] = _mutate(items[path[0] % len(items)], path[1:], replacement)
    return items


@settings(max_examples=EXAMPLES * 3, deadline=None)
@given(
    body=st.sampled_from(REAL_BODIES),
    path=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=4),
    replacement=json_values | st.just("<delete>") | st.integers(min_value=2**63, max_value=2**80),
)
def test_mutated_real_answers_never_crash(body: Any, path: list[int], replacement: Any) -> None:
    """Real answers with one field removed, retyped or made huge: snapshot or ParseError."""
    check(_mutate(body, path, replacement))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=json_values | job_like | st.sampled_from(REAL_BODIES))
def test_any_list_answer_is_a_page_or_a_parse_error(payload: Any) -> None:
    src = Source.model_validate({"name": "s", "provider": "openai_fine_tuning",
                                 "auth": {"api_key": "k"}, "discovery": {}})  # fmt: skip
    assert PROVIDER.lister is not None
    (ask,) = PROVIDER.lister(src, ListQuery(POLLED_AT, POLLED_AT))
    try:
        page = ask.read(payload, POLLED_AT)
    except ParseError:
        return
    assert all(len(follow.request.url) < 400 for follow in page.follow)


RUNNING = PROVIDER.parse({"status": "running", "created_at": 1721764800}, POLLED_AT)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=json_values | job_like | st.sampled_from(REAL_BODIES))
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
