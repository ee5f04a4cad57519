"""The fine-tunes' listing: what it asks and how it reads the IDs in every shape they come in."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import source_of

from exporter.model import ErrorReason
from exporter.providers import PROVIDERS, ParseError
from exporter.providers.base import ListQuery, ListRequest

NAME = "stable_diffusion_finetune"
AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


def first() -> ListRequest:
    lister = PROVIDERS[NAME].lister
    assert lister is not None
    src = source_of(NAME, auth={"api_key": "k"}, discovery={})
    (ask,) = lister(src, ListQuery(LONG_AGO, LONG_AGO))
    return ask


def test_stable_diffusion_posts_the_key_in_the_body() -> None:
    ask = first()
    assert (ask.request.method, urlsplit(ask.request.url).path) == ("POST", "/api/v3/finetune_list")
    assert ask.request.json == {"key": "k"}


@pytest.mark.parametrize(
    "body",
    [
        {"status": "success", "data": ["a1", "b2"]},
        {"status": "success", "data": [{"model_id": "a1"}, {"training_id": "b2", "status": "x"}]},
        {"status": "success", "models": [{"id": "a1"}, "b2", "a1", {"id": "../etc"}, None]},
    ],
)
def test_stable_diffusion_reads_the_ids_in_any_of_their_shapes(body: Any) -> None:
    page = first().read(body, AT)
    assert [(job.job_id, job.snapshot) for job in page.listed] == [("a1", None), ("b2", None)]


def test_stable_diffusion_list_errors_are_failed_listings_with_a_reason() -> None:
    ask = first()
    with pytest.raises(ParseError) as caught:
        ask.read({"status": "error", "message": "Invalid Api Key"}, AT)
    assert caught.value.reason is ErrorReason.AUTH
    with pytest.raises(ParseError, match="expected a list"):
        ask.read({"status": "success", "data": "none"}, AT)
