"""The batches' listing, read from the vendor's own list examples: what it asks and reads.

Expected values are read off the example JSON by hand.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from conftest import example_body, source_of

from exporter.model import State
from exporter.providers import PROVIDERS
from exporter.providers.base import ListQuery, ListRequest

NAME = "azure_document_translation"
AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


def first(query: ListQuery | None = None, **keys: Any) -> tuple[ListRequest, ...]:
    lister = PROVIDERS[NAME].lister
    assert lister is not None
    src = source_of(NAME, auth={"subscription_key": "k"}, discovery={}, **keys)
    return lister(src, query or ListQuery(LONG_AGO, LONG_AGO))


def params(url: str) -> dict[str, str]:
    return {key: values[-1] for key, values in parse_qs(urlsplit(url).query).items()}


def test_translator_asks_for_the_window_then_for_unfinished_and_recent_batches() -> None:
    since, recent = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    (everything,) = first(ListQuery(since, since))
    assert urlsplit(everything.request.url).path == "/translator/document/batches"
    assert params(everything.request.url) == {
        "api-version": "2024-05-01", "maxpagesize": "100",
        "createdDateTimeUtcStart": "2026-01-01T00:00:00Z",
    }  # fmt: skip
    active, new = first(ListQuery(since, recent))
    assert params(active.request.url)["statuses"] == "NotStarted,Running,Cancelling"
    assert params(active.request.url)["createdDateTimeUtcStart"] == "2026-01-01T00:00:00Z"
    assert "statuses" not in params(new.request.url)
    assert params(new.request.url)["createdDateTimeUtcStart"] == "2026-01-02T00:00:00Z"
    assert active.request.headers["Ocp-Apim-Subscription-Key"] == "k"


def test_translator_v1_lists_under_its_own_route_with_dollar_parameters() -> None:
    (ask,) = first(api_version="v1.1")
    assert urlsplit(ask.request.url).path == "/translator/text/batch/v1.1/batches"
    assert "$maxpagesize=100" in ask.request.url  # not percent-encoded
    page = ask.read(example_body(NAME, "v1.1_operations.json"), AT)
    (batch,) = page.listed
    assert batch.job_id == "273622bd-835c-4946-9798-fd8f19f6bbf2"  # v1.x says "id"
    assert page.follow == ()  # no @nextLink: the end


def test_translator_reads_the_2024_list_example_and_follows_its_next_link_on_our_host() -> None:
    (ask,) = first()
    page = ask.read(example_body(NAME, "2024-05-01_operations.json"), AT)
    (batch,) = page.listed
    assert batch.job_id == "273622bd-835c-4946-9798-fd8f19f6bbf2"  # "translationId"
    assert batch.snapshot is not None
    assert batch.snapshot.state is State.SUCCEEDED
    assert dict(batch.snapshot.documents) == {
        "succeeded": 9, "failed": 1, "in_progress": 0, "not_started": 0, "cancelled": 0
    }  # fmt: skip
    assert batch.snapshot.characters_charged == 1000
    (follow,) = page.follow
    # The example's link names westus.cognitiveservices.azure.com: the key stays on our host.
    assert follow.request.url.startswith("https://x.example/translator/text/batch/v1.0/")
    assert params(follow.request.url)["skip"] == "1"
