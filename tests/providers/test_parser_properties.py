"""No JSON input crashes a parser: it returns an in-range snapshot or raises ParseError.

Every provider in the registry is fuzzed the same way (tests/fuzzing.py): with any JSON, with
job-like objects made of the keys and short strings of its own real answers (its fixtures), and
with its real answers changed in one place. A provider's folder adds its own API's properties.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import FUZZ_EXAMPLES
from fuzzing import (
    POLLED_AT,
    SECONDARY,
    answers,
    assert_in_range,
    job_like,
    json_values,
    listing_like,
    mutate,
    paths,
    replacements,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.config import parse_config
from exporter.providers import PROVIDERS, ParseError
from exporter.providers.base import ListQuery
from exporter.simulator import demo_config
from exporter.values import is_path_safe_id

JOB_LIKE = {provider: job_like(provider) for provider in PROVIDERS}


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


REAL_BODIES = [(provider, body) for provider in PROVIDERS for body in answers(provider)]


@settings(max_examples=FUZZ_EXAMPLES * 3, deadline=None)
@given(
    body=st.sampled_from(REAL_BODIES),
    path=paths,
    replacement=replacements,
)
def test_mutated_real_examples_never_crash(
    body: tuple[str, Any], path: list[int], replacement: Any
) -> None:
    """Real answers with one field removed, retyped or made huge: snapshot or ParseError."""
    provider, payload = body
    check(provider, mutate(payload, path, replacement))


def test_real_bodies_cover_every_provider() -> None:
    assert {provider for provider, _ in REAL_BODIES} == set(PROVIDERS)


LISTING_SOURCES = {
    source.provider: source
    for source in parse_config(demo_config("https://x.example", discovery=True), env={}).sources
    if PROVIDERS[source.provider].lister is not None
}
SINCE = datetime(2000, 1, 1, tzinfo=UTC)  # every answer's jobs are in the window


@pytest.mark.parametrize("provider", sorted(LISTING_SOURCES))
@settings(max_examples=SECONDARY, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_listing_answer_is_a_page_or_a_parse_error(provider: str, data: st.DataObject) -> None:
    """Any answer to any request of a listing: a page of path-safe jobs whose statuses are in
    range, whose follow-up requests stay short, or ParseError."""
    lister = PROVIDERS[provider].lister
    assert lister is not None
    asks = list(lister(LISTING_SOURCES[provider], ListQuery(SINCE, SINCE)))
    ask = data.draw(st.sampled_from(asks), label="request")
    payload = data.draw(listing_like(provider), label="payload")
    try:
        page = ask.read(payload, POLLED_AT)
    except ParseError:
        return
    for job in page.listed:
        assert is_path_safe_id(job.job_id)
        if job.snapshot is not None:
            assert_in_range(job.snapshot)
    assert all(len(follow.request.url) < 400 for follow in page.follow)


def test_every_lister_is_fuzzed() -> None:
    assert set(LISTING_SOURCES) == {p for p, provider in PROVIDERS.items() if provider.lister}
