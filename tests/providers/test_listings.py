"""The providers' listings, read from the vendors' own list examples: what each asks and reads.

Expected values are read off the example JSON by hand.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import example_body

from exporter.model import ErrorReason, State
from exporter.providers import PROVIDERS, ParseError
from exporter.providers.base import ListQuery, ListRequest, Page

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


def source(provider: str, **keys: Any) -> Any:
    raw = {"name": "s", "provider": provider, "endpoint": "https://x.example", "discovery": {}}
    auth = (
        {"api_key": "k"} if provider == "stable_diffusion_finetune" else {"subscription_key": "k"}
    )
    return PROVIDERS[provider].source_model.model_validate({**raw, "auth": auth, **keys})


def first(provider: str, query: ListQuery | None = None, **keys: Any) -> tuple[ListRequest, ...]:
    lister = PROVIDERS[provider].lister
    assert lister is not None
    return lister(source(provider, **keys), query or ListQuery(LONG_AGO, LONG_AGO))


def params(url: str) -> dict[str, str]:
    return {key: values[-1] for key, values in parse_qs(urlsplit(url).query).items()}


def read(ask: ListRequest, body: Any) -> Page:
    return ask.read(body, AT)


# -- Translator ---------------------------------------------------------------------------------


def test_translator_asks_for_the_window_then_for_unfinished_and_recent_batches() -> None:
    since, recent = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    (everything,) = first("azure_document_translation", ListQuery(since, since))
    assert urlsplit(everything.request.url).path == "/translator/document/batches"
    assert params(everything.request.url) == {
        "api-version": "2024-05-01", "maxpagesize": "100",
        "createdDateTimeUtcStart": "2026-01-01T00:00:00Z",
    }  # fmt: skip
    active, new = first("azure_document_translation", ListQuery(since, recent))
    assert params(active.request.url)["statuses"] == "NotStarted,Running,Cancelling"
    assert params(active.request.url)["createdDateTimeUtcStart"] == "2026-01-01T00:00:00Z"
    assert "statuses" not in params(new.request.url)
    assert params(new.request.url)["createdDateTimeUtcStart"] == "2026-01-02T00:00:00Z"
    assert active.request.headers["Ocp-Apim-Subscription-Key"] == "k"


def test_translator_v1_lists_under_its_own_route_with_dollar_parameters() -> None:
    (ask,) = first("azure_document_translation", api_version="v1.1")
    assert urlsplit(ask.request.url).path == "/translator/text/batch/v1.1/batches"
    assert "$maxpagesize=100" in ask.request.url  # not percent-encoded
    page = read(ask, example_body("azure_document_translation", "v1.1_operations.json"))
    (batch,) = page.listed
    assert batch.job_id == "273622bd-835c-4946-9798-fd8f19f6bbf2"  # v1.x says "id"
    assert page.follow == ()  # no @nextLink: the end


def test_translator_reads_the_2024_list_example_and_follows_its_next_link_on_our_host() -> None:
    (ask,) = first("azure_document_translation")
    page = read(ask, example_body("azure_document_translation", "2024-05-01_operations.json"))
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


# -- Language training --------------------------------------------------------------------------


def test_training_lists_the_source_project_or_every_recently_active_project() -> None:
    (ask,) = first("azure_language_training", project="LoanAgreements")
    assert urlsplit(ask.request.url).path == (
        "/language/authoring/analyze-text/projects/LoanAgreements/train/jobs"
    )
    assert params(ask.request.url) == {"api-version": "2023-04-01", "maxpagesize": "100"}
    since = datetime(2022, 4, 18, 14, 10, tzinfo=UTC)
    (projects,) = first("azure_language_training", ListQuery(since, since))
    assert urlsplit(projects.request.url).path == "/language/authoring/analyze-text/projects"
    page = read(
        projects, example_body("azure_language_training", "2022-05-01_SuccessfulListProjects.json")
    )
    # LoanAgreements was trained at 14:14:28, after `since`; MoviesSummary was last modified at
    # 14:03:12 and never trained: skipped.
    assert [urlsplit(f.request.url).path.split("/")[-3] for f in page.follow] == ["LoanAgreements"]


def test_training_reads_the_list_example_with_each_jobs_project_and_the_lookback() -> None:
    since = datetime(2022, 4, 18, 17, 0, tzinfo=UTC)
    (ask,) = first("azure_language_training", ListQuery(since, since), project="LoanAgreements")
    page = read(
        ask, example_body("azure_language_training", "2022-05-01_SuccessfulListTrainingJobs.json")
    )
    # Three jobs, created 15:44:44, 17:22:11 and 17:44:04: the first is before the lookback.
    assert [job.job_id for job in page.listed] == [
        "9145f93f-6f37-418c-8527-d2ded84cece0_637858368000000000",
        "ee23c900-354d-4b6d-96e1-8197db2bd5f7_637858368000000000",
    ]
    assert {job.project for job in page.listed} == {"LoanAgreements"}
    assert all(job.snapshot and job.snapshot.state is State.SUCCEEDED for job in page.listed)
    assert page.follow == ()  # "nextLink": null


# -- Stable Diffusion ---------------------------------------------------------------------------


def test_stable_diffusion_posts_the_key_in_the_body() -> None:
    (ask,) = first("stable_diffusion_finetune")
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
    (ask,) = first("stable_diffusion_finetune")
    page = read(ask, body)
    assert [(job.job_id, job.snapshot) for job in page.listed] == [("a1", None), ("b2", None)]


def test_stable_diffusion_list_errors_are_failed_listings_with_a_reason() -> None:
    (ask,) = first("stable_diffusion_finetune")
    with pytest.raises(ParseError) as caught:
        read(ask, {"status": "error", "message": "Invalid Api Key"})
    assert caught.value.reason is ErrorReason.AUTH
    with pytest.raises(ParseError, match="expected a list"):
        read(ask, {"status": "success", "data": "none"})
