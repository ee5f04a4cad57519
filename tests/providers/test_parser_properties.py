"""No JSON input crashes a parser: it returns an in-range snapshot or raises ParseError."""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from conftest import FIXTURES, fixture
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.providers import PROVIDERS, ParseError
from exporter.providers.stable_diffusion_finetune import parse_step

if TYPE_CHECKING:
    from exporter.model import JobSnapshot

POLLED_AT = datetime(2026, 1, 1, tzinfo=UTC)
# CI can raise this (issue #4 asks 10,000 per parser); the default keeps `make test` quick.
EXAMPLES = int(os.environ.get("PARSER_FUZZ_EXAMPLES", "300"))

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["running", "Succeeded", "model_ready", "2022-04-18T15:45:06.8190649Z", ""])
    | st.just("0001-01-01T00:00:00Z")  # how .NET sends a time it has not set
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)
KEYS = [
    "status", "messege", "message", "data", "summary", "tasks", "result", "trainingStatus",
    "evaluationStatus", "percentComplete", "total", "completed", "failed", "inProgress", "success",
    "totalCharacterCharged", "createdDateTime", "lastUpdatedDateTime", "id", "errors", "warnings",
    "dataGenerationStatus", "items", "state", "results", "cancelled", "displayName", "logs",
    "endDateTime", "lastActionDateTimeUtc", "lastUpdateDateTime", "createdDateTimeUtc",
]  # fmt: skip
job_like = st.recursive(
    scalars,
    lambda children: st.dictionaries(st.sampled_from(KEYS), children, max_size=8),
    max_leaves=30,
)


def assert_in_range(snap: JobSnapshot) -> None:
    assert "overall" in snap.progress
    assert all(0.0 <= v <= 1.0 and not math.isnan(v) for v in snap.progress.values())
    assert all(v >= 0 for v in (*snap.tasks.values(), *snap.documents.values()))
    for value in (snap.characters_charged, snap.errors, snap.warnings):
        assert value is None or value >= 0
    assert snap.finished is None or snap.state.terminal  # never a placeholder's time


def check(provider: str, payload: Any) -> None:
    try:
        snap = PROVIDERS[provider].parse(payload, POLLED_AT)
    except ParseError:
        return
    assert_in_range(snap)


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=json_values | job_like)
def test_any_json_is_a_snapshot_or_a_parse_error(provider: str, payload: Any) -> None:
    check(provider, payload)


def _status_bodies() -> list[tuple[str, Any]]:
    bodies: list[tuple[str, Any]] = []
    for provider in PROVIDERS:
        for path in sorted(FIXTURES[provider].glob("*.json")):
            data = fixture(provider, path.name)
            candidates = [r.get("body") for r in data.get("responses", {}).values()] or [data]
            bodies.extend((provider, body) for body in candidates if isinstance(body, dict))
    return bodies


REAL_BODIES = _status_bodies()


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
    index = path[0] % len(out_list)
    out_list[index] = _mutate(value[index], path[1:], replacement)
    return out_list


@settings(max_examples=EXAMPLES * 3, deadline=None)
@given(
    body=st.sampled_from(REAL_BODIES),
    path=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=4),
    replacement=json_values | st.just("<delete>") | st.integers(min_value=2**63, max_value=2**80),
)
def test_mutated_real_examples_never_crash(
    body: tuple[str, Any], path: list[int], replacement: Any
) -> None:
    """Real answers with one field removed, retyped or made huge: snapshot or ParseError."""
    provider, payload = body
    check(provider, _mutate(payload, path, replacement))


def test_real_bodies_cover_every_provider() -> None:
    assert {provider for provider, _ in REAL_BODIES} == set(PROVIDERS)


# -- the Stable Diffusion step line, generated in every wording we know of --------------------

words = st.lists(st.sampled_from(["Training", "Done", "Model", "Uploading", "Started", "Stage"]),
                 max_size=3).map(" ".join)  # fmt: skip
eta_units = st.sampled_from([("minutes", 1.0), ("minute", 1.0), ("min", 1.0), ("mins", 1.0),
                             ("hours", 60.0), ("hour", 60.0), ("seconds", 1 / 60), ("", 1.0)])  # fmt: skip
suffixes = st.lists(
    st.sampled_from(
        ["Time Elapsed : 905 seconds", "GPU : A100", "loss : 0.07", "ETA2 : 9 minutes"]
    ),
    max_size=3,
)


@st.composite
def step_lines(draw: st.DrawFn) -> tuple[str, int, int, float | None]:
    """(line, steps done, steps left, ETA minutes): Step N, optional words, M [More] Steps to
    go, an optional ETA in any unit, any trailing | fields."""
    done, left = draw(st.integers(0, 10_000)), draw(st.integers(0, 10_000))
    separator = draw(st.sampled_from([":", ": ", " : ", " "]))
    more = draw(st.sampled_from(["", "More ", "more "]))
    steps = draw(st.sampled_from(["Steps to go", "Step to go", "steps left", "steps remaining"]))
    line = f"Step{separator}{done} {draw(words)}, {left} {more}{steps}"
    eta = draw(st.none() | st.tuples(st.integers(0, 600), eta_units))
    minutes = None
    if eta is not None:
        eta_separator = draw(st.sampled_from([" : ETA : ", " ETA: ", ", ETA ", " | ETA : "]))
        line += f"{eta_separator}{eta[0]} {eta[1][0]}".rstrip()
        minutes = eta[0] * eta[1][1]
    line += "".join(f" | {field}" for field in draw(suffixes))
    return line, done, left, minutes


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(case=step_lines())
def test_step_lines_parse_in_every_wording(case: tuple[str, int, int, float | None]) -> None:
    """Every generated wording of a step line gives its step, steps left and ETA."""
    line, done, left, minutes = case
    parsed = parse_step(line)
    assert parsed is not None, line
    assert parsed[:2] == (done, left), line
    if minutes is None:
        assert parsed[2] is None, line
    else:
        assert parsed[2] == pytest.approx(minutes), line
