"""What the parser property tests share (tests/providers/test_parser_properties.py fuzzes every
provider in the registry with it; a provider's folder adds the properties of its own API):
any JSON, objects made of the keys and short strings of a provider's real answers, one change to
a real answer, and what every snapshot holds whatever it was made from."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from conftest import FIXTURES, FUZZ_EXAMPLES, fixture
from hypothesis import strategies as st

from exporter.providers import PROVIDERS

if TYPE_CHECKING:
    from collections.abc import Iterator

    from exporter.model import JobSnapshot

POLLED_AT = datetime(2026, 1, 1, tzinfo=UTC)
# CI asks 10,000 of each parser's no-crash test (above all); the narrower properties need fewer,
# and at 10,000 (or 30,000) each they made CI's make test several minutes longer.
SECONDARY = min(FUZZ_EXAMPLES, 1000)

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
huge = st.integers(min_value=2**63, max_value=2**80)  # past every count's range


def answers(provider: str) -> list[dict[str, Any]]:
    """Every answer among a provider's fixtures: a vendor example's bodies, or the file."""
    found: list[dict[str, Any]] = []
    for path in sorted(FIXTURES[provider].glob("*.json")):
        data = fixture(provider, path.name)
        candidates = [r.get("body") for r in data.get("responses", {}).values()] or [data]
        found += (body for body in candidates if isinstance(body, dict))
    return found


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


FOUND = {p: [pair for answer in answers(p) for pair in _walk(answer)] for p in PROVIDERS}
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


paths = st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=4)
replacements = json_values | st.just("<delete>") | huge


def anything_like(provider: str) -> st.SearchStrategy[Any]:
    """Any JSON, an object like the provider's answers, one of its real answers, or one changed
    in one place (a node removed, retyped, made huge, or made another answer: a listing's
    entry made a job-like object)."""
    real = st.sampled_from(answers(provider))
    like = job_like(provider)
    return json_values | like | real | st.builds(mutate, real, paths, replacements | like | real)


def listing_like(provider: str) -> st.SearchStrategy[Any]:
    """What `anything_like` draws, and as often the provider's real answers that hold a list
    (its listings), as they are or changed in one place."""
    lists = [a for a in answers(provider) if any(isinstance(v, list) for v in a.values())]
    if not lists:
        return anything_like(provider)
    real = st.sampled_from(lists)
    changed = st.builds(mutate, real, paths, replacements | job_like(provider) | real)
    return anything_like(provider) | real | changed


def mutate(value: Any, path: list[int], replacement: Any) -> Any:
    """Replace one node of `value` (chosen by `path`) with `replacement`, or delete it."""
    if not path or not isinstance(value, dict | list) or not value:
        return replacement
    if isinstance(value, dict):
        key = sorted(value)[path[0] % len(value)]
        out = dict(value)
        if replacement == "<delete>" and len(path) == 1:
            del out[key]
        else:
            out[key] = mutate(value[key], path[1:], replacement)
        return out
    items = list(value)
    index = path[0] % len(items)
    items[index] = mutate(items[index], path[1:], replacement)
    return items


def assert_in_range(snap: JobSnapshot) -> None:
    """What a snapshot holds whatever answer it came from."""
    assert "overall" in snap.progress or (not snap.progress and not snap.state.terminal)
    assert all(0.0 <= v <= 1.0 and not math.isnan(v) for v in snap.progress.values())
    counts = (*snap.tasks.values(), *snap.documents.values(), *snap.tokens.values())
    assert all(v >= 0 for v in counts)
    for value in (snap.characters_charged, snap.errors, snap.warnings, snap.training_step):
        assert value is None or value >= 0
    assert all(math.isfinite(v) for v in snap.training_loss.values())
    assert snap.finished is None or snap.state.terminal  # never a placeholder's time
