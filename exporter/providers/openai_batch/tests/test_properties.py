"""No JSON input crashes the batch parser or the listing's reading: an in-range snapshot (a
page) or ParseError; and whatever the counts, the tasks add up and the state follows them."""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.model import State
from exporter.providers.base import ListQuery, ParseError
from exporter.providers.openai_batch import PROVIDER
from exporter.providers.openai_batch.api import Source

FIXTURES = Path(__file__).parents[1] / "fixtures"
POLLED_AT = datetime(2026, 1, 1, tzinfo=UTC)
EXAMPLES = int(os.environ.get("PARSER_FUZZ_EXAMPLES", "300"))

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["completed", "expired", "in_progress", "finalizing", "batch_1", ""])
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
    "id", "object", "status", "request_counts", "total", "completed", "failed", "usage",
    "input_tokens", "output_tokens", "errors", "data", "created_at", "in_progress_at",
    "expires_at", "completed_at", "failed_at", "expired_at", "cancelled_at", "finalizing_at",
    "has_more", "last_id",
]  # fmt: skip
batch_like = st.recursive(
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
    assert all(v >= 0 for v in (*snap.tasks.values(), *snap.tokens.values()))
    assert snap.errors is None or snap.errors >= 0
    assert snap.finished is None or snap.state.terminal


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=json_values | batch_like)
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
@given(payload=json_values | batch_like | st.sampled_from(REAL_BODIES))
def test_any_list_answer_is_a_page_or_a_parse_error(payload: Any) -> None:
    src = Source.model_validate({"name": "s", "provider": "openai_batch",
                                 "auth": {"api_key": "k"}, "discovery": {}})  # fmt: skip
    assert PROVIDER.lister is not None
    (ask,) = PROVIDER.lister(src, ListQuery(POLLED_AT, POLLED_AT))
    try:
        page = ask.read(payload, POLLED_AT)
    except ParseError:
        return
    assert all(len(follow.request.url) < 400 for follow in page.follow)


STATUSES = ["validating", "in_progress", "finalizing", "completed", "failed", "expired",
            "cancelling", "cancelled"]  # fmt: skip


@given(
    status=st.sampled_from(STATUSES),
    completed=st.integers(0, 10**6),
    failed=st.integers(0, 10**6),
    left=st.integers(0, 10**6),
)
def test_the_tasks_add_up_to_the_total_and_the_state_follows_the_counts(
    status: str, completed: int, failed: int, left: int
) -> None:
    total = completed + failed + left
    counts = {"total": total, "completed": completed, "failed": failed}
    snap = PROVIDER.parse({"status": status, "request_counts": counts}, POLLED_AT)
    ended = status in {"completed", "failed"}
    assert sum(snap.tasks.values()) == (completed + failed if ended else total)
    if status in {"completed", "expired"}:
        if completed == total and (total or status == "completed"):
            assert snap.state is State.SUCCEEDED
        elif completed:
            assert snap.state is State.PARTIALLY_SUCCEEDED
        else:
            assert snap.state is State.FAILED
