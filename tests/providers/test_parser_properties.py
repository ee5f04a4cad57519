"""No JSON input crashes a parser: it returns an in-range snapshot or raises ParseError.

Every provider in the registry is fuzzed the same way: with any JSON, with job-like objects
made of the keys and short strings of its own real answers (its fixtures), and with its real
answers changed in one place.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from conftest import FIXTURES, FUZZ_EXAMPLES, fixture
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.providers import PROVIDERS, ParseError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from exporter.model import JobSnapshot

POLLED_AT = datetime(2026, 1, 1, tzinfo=UTC)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["running", "Succeeded", "2022-04-18T15:45:06.8190649Z", ""])
    | st.just("0001-01-01T00:00:00Z")  # how .NET sends a time it has not set
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)


def _answers(provider: str) -> Iterator[Any]:
    """Every answer among a provider's fixtures: a vendor example's bodies, or the file."""
    for path in sorted(FIXTURES[provider].glob("*.json")):
        data = fixture(provider, path.name)
        candidates = [r.get("body") for r in data.get("responses", {}).values()] or [data]
        yield from (body for body in candidates if isinstance(body, dict))


def _walk(value: Any) -> Iterator[tuple[str | None, Any]]:
    """(key, value) of every member of every object in `value`, and (None, x) of every scalar."""
    if isinstance(value, dict):
        for key, member in value.items():
            yield key, member
            yield from _walk(member)
    elif isinstance(value, list):
        for member in value:
            yield from _walk(member)
    else:
        yield None, value


def _found(provider: str) -> list[tuple[str | None, Any]]:
    return [pair for answer in _answers(provider) for pair in _walk(answer)]


FOUND = {provider: _found(provider) for provider in PROVIDERS}
EVERY_KEY = sorted({key for found in FOUND.values() for key, _ in found if key is not None})


def job_like(provider: str) -> st.SearchStrategy[Any]:
    """Objects made of the keys of the provider's real answers (half the time; of every
    provider's the other half, for the spellings another version sends), holding any JSON or
    the short strings (statuses, dates) its answers hold."""
    own = sorted({key for key, _ in FOUND[provider] if key is not None})
    strings = sorted({v for _, v in FOUND[provider] if isinstance(v, str) and len(v) <= 40})
    keys = st.sampled_from(own) | st.sampled_from(EVERY_KEY)
    values = scalars | st.sampled_from(strings) if strings else scalars
    return st.recursive(
        values, lambda children: st.dictionaries(keys, children, max_size=8), max_leaves=30
    )


JOB_LIKE = {provider: job_like(provider) for provider in PROVIDERS}


def assert_in_range(snap: JobSnapshot) -> None:
    assert "overall" in snap.progress or (not snap.progress and not snap.state.terminal)
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
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_json_is_a_snapshot_or_a_parse_error(provider: str, data: st.DataObject) -> None:
    check(provider, data.draw(json_values | JOB_LIKE[provider], label="payload"))


REAL_BODIES = [(provider, body) for provider in PROVIDERS for body in _answers(provider)]


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


@settings(max_examples=FUZZ_EXAMPLES * 3, deadline=None)
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
