"""The batch provider read from the vendors' published answers: state by status and counts,
tasks, tokens, times; the request, the listing's paging, locating a batch, the webhook's job.

Expected values are read off the fixture files by hand, not produced by the parser.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import ValidationError

from exporter import credentials
from exporter.config import ConfigError, parse_config
from exporter.model import JobSnapshot, State
from exporter.providers.base import ListQuery, Located, ParseError
from exporter.providers.openai_batch import PROVIDER
from exporter.providers.openai_batch.api import Source

FIXTURES = Path(__file__).parents[1] / "fixtures"
POLLED_AT = datetime(2026, 3, 2, 11, 30, tzinfo=UTC)
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # base64 of 24 bytes


def fixture(name: str) -> Any:
    data = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data["responses"]["200"]["body"] if "responses" in data else data


def parse(name: str) -> JobSnapshot:
    return PROVIDER.parse(fixture(name), POLLED_AT)


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def source(**keys: Any) -> Source:
    raw = {"name": "s", "provider": "openai_batch", "auth": {"api_key": "sk-test"}, **keys}
    return Source.model_validate(raw)


def tasks(completed: int, failed: int, in_progress: int = 0, cancelled: int = 0,
          expired: int = 0) -> dict[str, int]:  # fmt: skip
    return {"completed": completed, "failed": failed, "in_progress": in_progress,
            "cancelled": cancelled, "expired": expired}  # fmt: skip


# -- state, from the status and the request counts ---------------------------------------------


def test_a_completed_batch_with_failed_requests_partially_succeeded() -> None:
    """OpenAI's reference batch: completed, 95 of 100 requests completed and 5 failed."""
    snap = parse("openai-openapi_retrieveBatch_completed.json")
    assert snap.state is State.PARTIALLY_SUCCEEDED
    assert snap.vendor_status == "completed"
    assert dict(snap.tasks) == tasks(95, 5)
    assert snap.progress == {"overall": 1.0}
    assert snap.created == at(1711471533)
    assert snap.started == at(1711471538)  # in_progress_at
    assert snap.expiration == at(1711557933)
    assert snap.finished == at(1711493163)  # completed_at
    assert snap.last_update == at(1711493163)
    assert snap.tokens == {}  # created before usage was reported
    assert snap.errors == 0


def test_a_completed_batch_with_every_request_failed_failed() -> None:
    """A real answer (kaapi-backend #723): completed, 0 of 9 requests completed, 9 failed."""
    snap = parse("kaapi-issue723_openai_completed_all_failed_0of9.derived.json")
    assert snap.state is State.FAILED
    assert snap.vendor_status == "completed"
    assert dict(snap.tasks) == tasks(0, 9)
    assert snap.progress == {"overall": 1.0}  # all the work finished; none of it succeeded
    assert snap.finished == at(1774437324)


def test_a_completed_batch_with_every_request_completed_succeeded() -> None:
    """Azure's quirks: in_progress_at null on a completed batch, file IDs "", endpoint null."""
    snap = parse("synthetic-azure-completed-quirks.json")
    assert snap.state is State.SUCCEEDED
    assert dict(snap.tasks) == tasks(2, 0)
    assert snap.started is None
    assert snap.finished == at(1646126136)


def test_an_expired_batch_that_did_part_of_its_work_partially_succeeded() -> None:
    """Expired with 1 of 10 completed: the other 9 expired."""
    snap = parse("synthetic-expired-1of10.json")
    assert snap.state is State.PARTIALLY_SUCCEEDED
    assert dict(snap.tasks) == tasks(1, 0, expired=9)
    assert snap.progress["overall"] == pytest.approx(0.1)
    assert snap.finished == at(1711557934)  # expired_at


@pytest.mark.parametrize(
    ("status", "counts", "state"),
    [
        ("expired", {"total": 10, "completed": 0, "failed": 0}, State.FAILED),
        ("expired", {"total": 0, "completed": 0, "failed": 0}, State.FAILED),
        ("expired", {"total": 4, "completed": 4, "failed": 0}, State.SUCCEEDED),
        ("completed", {"total": 0, "completed": 0, "failed": 0}, State.SUCCEEDED),
        ("completed", {"total": 3, "completed": 1, "failed": 2}, State.PARTIALLY_SUCCEEDED),
        ("failed", {"total": 3, "completed": 3, "failed": 0}, State.FAILED),
        ("cancelled", {"total": 3, "completed": 3, "failed": 0}, State.CANCELLED),
        ("Completed", {"total": 3, "completed": 3, "failed": 0}, State.SUCCEEDED),
    ],
)
def test_the_counts_decide_a_completed_or_expired_batch_only(
    status: str, counts: dict[str, int], state: State
) -> None:
    """All completed: succeeded; some: partially; none: failed. Failed and cancelled are what
    they say, and nothing to do is not success for a batch that expired."""
    assert PROVIDER.parse({"status": status, "request_counts": counts}, POLLED_AT).state is state


def test_a_failed_batch_counts_its_validation_errors() -> None:
    snap = parse("synthetic-failed-validation.json")
    assert snap.state is State.FAILED
    assert snap.errors == 2
    assert dict(snap.tasks) == tasks(0, 0)
    assert snap.finished == at(1711471540)  # failed_at


def test_a_cancelled_batch_counts_what_it_did_not_do_as_cancelled() -> None:
    snap = parse("synthetic-cancelled.json")
    assert snap.state is State.CANCELLED
    assert dict(snap.tasks) == tasks(23, 1, cancelled=76)
    assert snap.progress["overall"] == pytest.approx(0.24)
    assert snap.finished == at(1711475733)  # cancelled_at, the latest finish time


@pytest.mark.parametrize(
    ("name", "counts", "progress"),
    [
        ("openai-openapi_cancelBatch_cancelling.json", tasks(23, 1, 76), 0.24),
        ("azure-rest-api-specs_2024-10-21_cancel_batch_cancelling.json", tasks(100, 5, 395), 0.21),
    ],
)
def test_a_cancelling_batch_still_has_requests_in_progress(
    name: str, counts: dict[str, int], progress: float
) -> None:
    snap = parse(name)
    assert snap.state is State.CANCELLING
    assert dict(snap.tasks) == counts
    assert snap.progress["overall"] == pytest.approx(progress)
    assert snap.finished is None


def test_a_validating_batch_has_not_started() -> None:
    snap = parse("openai-openapi_createBatch_validating.json")
    assert snap.state is State.NOT_STARTED
    assert dict(snap.tasks) == tasks(0, 0)
    assert snap.progress == {"overall": 0.0}
    assert snap.started is None
    assert snap.expiration is None  # null while validating
    assert snap.last_update == at(1711471533)


def test_a_finalizing_azure_batch_with_nothing_completed_is_running() -> None:
    """Azure says finalizing with 0 of 2 completed for minutes: running, nothing done."""
    snap = parse("synthetic-azure-finalizing-0of2.json")
    assert snap.state is State.RUNNING
    assert dict(snap.tasks) == tasks(0, 0, in_progress=2)
    assert snap.progress == {"overall": 0.0}
    assert snap.last_update == at(1646126190)  # finalizing_at
    assert snap.finished is None


def test_azure_completed_batch_partially_succeeded() -> None:
    snap = parse("azure-rest-api-specs_2025-04-01-preview_get_batch_completed.json")
    assert snap.state is State.PARTIALLY_SUCCEEDED
    assert dict(snap.tasks) == tasks(400, 100)
    assert snap.finished == at(1646126136)


@pytest.mark.parametrize(
    ("name", "tokens"),
    [
        ("openai-openapi_BatchObject_completed_with_usage.json", {"input": 1500, "output": 500}),
        # A real answer, with the legacy prompt_tokens/completion_tokens at 0 beside them.
        ("litellm-issue14884_openai_completed_with_usage.json",
         {"input": 31493594, "output": 19786241}),
    ],
)  # fmt: skip
def test_usage_gives_input_and_output_tokens(name: str, tokens: dict[str, int]) -> None:
    assert parse(name).tokens == tokens


def test_an_unfinished_batch_has_no_finish_time_whatever_it_carries() -> None:
    answer = {**fixture("openai-openapi_cancelBatch_cancelling.json"), "completed_at": 1711475200}
    assert PROVIDER.parse(answer, POLLED_AT).finished is None


@pytest.mark.parametrize(
    "answer",
    [
        [],
        {"object": "batch"},  # no status
        {"status": 3},
        {"status": "completed", "request_counts": {"total": -1}},
        {"status": "completed", "created_at": "2024-03-26T16:45:33Z"},  # not unix seconds
        {"status": "completed", "created_at": 1e30},
        {"status": "completed", "usage": {"input_tokens": "many"}},
        {"error": {"message": "No batch found with id 'x'.", "type": "invalid_request_error"}},
    ],
)
def test_what_is_not_a_batch_is_a_parse_error(answer: Any) -> None:
    with pytest.raises(ParseError):
        PROVIDER.parse(answer, POLLED_AT)


# -- the request, the source ---------------------------------------------------------------------


def test_the_request_is_a_get_with_a_bearer_key_and_the_billing_headers() -> None:
    src = source(auth={"api_key": "sk-test", "organization": "org-abc", "project": "proj_1"})
    req = PROVIDER.request(src, "batch_abc123")
    assert (req.method, req.url) == ("GET", "https://api.openai.com/v1/batches/batch_abc123")
    assert req.headers == {
        "Authorization": "Bearer sk-test",
        "OpenAI-Organization": "org-abc",
        "OpenAI-Project": "proj_1",
    }
    assert req.auth is None
    assert "sk-test" not in repr(req)
    assert "sk-test" not in repr(src)


def test_an_azure_source_asks_its_v1_route_and_its_api_version() -> None:
    src = source(endpoint="https://r.openai.azure.com/openai/v1/", api_version="preview")
    assert PROVIDER.request(src, "batch_1").url == (
        "https://r.openai.azure.com/openai/v1/batches/batch_1?api-version=preview"
    )


def test_entra_id_sends_a_token_instead_of_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(credentials, "credential_factory", lambda _client_id: object())
    src = source(endpoint="https://r.openai.azure.com/openai/v1", auth={"azure_ad": {}})
    req = PROVIDER.request(src, "batch_1")
    assert "Authorization" not in req.headers
    assert isinstance(req.auth, credentials.EntraToken)
    assert credentials.SCOPE == "https://cognitiveservices.azure.com/.default"


@pytest.mark.parametrize(
    "auth",
    [{}, {"api_key": "a", "azure_ad": {}}, {"api_key": "a", "api_key_file": "/nonexistent"},
     {"api_key": "a", "organization": "org\r\nX-Evil: 1"}, {"subscription_key": "a"}],
)  # fmt: skip
def test_auth_is_one_key_or_entra_id(auth: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        source(auth=auth)


def config(**keys: Any) -> Any:
    return parse_config({"sources": [{"name": "s", "provider": "openai_batch",
                                      "auth": {"api_key": "sk-test"}, **keys}]})  # fmt: skip


def test_a_webhook_secret_is_a_standard_webhooks_secret(tmp_path: Path) -> None:
    assert config(webhook_secret=SECRET).sources[0].webhook_secret() == SECRET
    written = tmp_path / "whsec"
    written.write_text(SECRET + "\n")
    assert config(webhook_secret_file=str(written)).sources[0].webhook_secret() == SECRET
    assert config().sources[0].webhook_secret() is None
    for bad in ("whsec_a", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"):
        with pytest.raises(ConfigError) as caught:
            config(webhook_secret=bad)
        assert caught.value.problems == [
            ("sources[0].webhook_secret", "expected a Standard Webhooks secret: whsec_ and base64")
        ]
    with pytest.raises(ConfigError) as caught:
        config(webhook_secret=SECRET, webhook_secret_file=str(written))
    assert caught.value.problems == [
        ("sources[0].webhook_secret_file", "set webhook_secret or webhook_secret_file, not both")
    ]


# -- listing ---------------------------------------------------------------------------------------


def params(url: str) -> dict[str, str]:
    return {key: values[-1] for key, values in parse_qs(urlsplit(url).query).items()}


def first_listing(since: datetime = LONG_AGO, **keys: Any) -> Any:
    assert PROVIDER.lister is not None
    (ask,) = PROVIDER.lister(source(discovery={}, **keys), ListQuery(since, since))
    return ask


def test_the_listing_asks_a_hundred_batches_a_page_newest_first() -> None:
    ask = first_listing()
    assert urlsplit(ask.request.url).path == "/v1/batches"
    assert params(ask.request.url) == {"limit": "100"}
    assert ask.request.headers["Authorization"] == "Bearer sk-test"


def test_the_listing_is_the_poll_of_each_batch_and_pages_after_the_last_batch() -> None:
    """OpenAI's list example: has_more, and a last_id that names no batch on the page (the
    example dropped its placeholder entries): the next page is after the last batch listed,
    as the SDK asks."""
    page = first_listing().read(fixture("openai-openapi_listBatches_page.json"), POLLED_AT)
    (batch,) = page.listed
    assert batch.job_id == "batch_abc123"
    assert batch.snapshot is not None
    assert batch.snapshot.state is State.PARTIALLY_SUCCEEDED
    (follow,) = page.follow
    assert params(follow.request.url) == {"limit": "100", "after": "batch_abc123"}
    assert follow.request.headers["Authorization"] == "Bearer sk-test"
    assert follow.read(fixture("openai-openapi_listBatches_page.json"), POLLED_AT).follow


def test_the_listing_ends_where_the_list_says_it_ends() -> None:
    page = first_listing().read(
        fixture("azure-rest-api-specs_2024-10-01-preview_get_batches_list.json"), POLLED_AT
    )
    assert [job.job_id for job in page.listed] == ["batch_72a2792ef7d24ba7b82c7fe4a37e379f"]
    assert page.follow == ()  # has_more: false


def test_the_listing_stops_at_the_first_batch_older_than_the_lookback() -> None:
    body = fixture("openai-openapi_listBatches_page.json")
    older = {**body["data"][0], "id": "batch_old", "created_at": 1711400000}
    body = {**body, "data": [*body["data"], older]}
    page = first_listing(since=at(1711471000)).read(body, POLLED_AT)
    assert [job.job_id for job in page.listed] == ["batch_abc123"]
    assert page.follow == ()  # has_more, but the rest is older still


@pytest.mark.parametrize(
    "body", [{"object": "list"}, {"data": {"id": "batch_1"}}, [], {"data": None}]
)
def test_a_list_answer_without_a_list_is_a_parse_error(body: Any) -> None:
    with pytest.raises(ParseError):
        first_listing().read(body, POLLED_AT)


def test_entries_that_cannot_be_read_are_listed_to_be_polled_alone() -> None:
    body = {"data": [{"id": "batch_1", "status": 7}, {"id": "../etc"}, "x"], "has_more": False}
    page = first_listing().read(body, POLLED_AT)
    assert [(job.job_id, job.snapshot) for job in page.listed] == [("batch_1", None)]


# -- locate, webhook -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "url", "found"),
    [
        (None, "https://api.openai.com/v1/batches/batch_abc123", Located("batch_abc123")),
        ("https://r.openai.azure.com/openai/v1",
         "https://R.openai.azure.com/openai/v1/batches/batch_1?api-version=preview",
         Located("batch_1")),
        (None, "https://api.openai.com/v1/fine_tuning/jobs/ftjob-1", None),
        (None, "https://other.example/v1/batches/batch_abc123", None),
        (None, "https://api.openai.com/v1/batches/batch_1/cancel", None),
    ],
)  # fmt: skip
def test_a_batch_url_names_its_batch(endpoint: str | None, url: str, found: Located) -> None:
    src = source(**({} if endpoint is None else {"endpoint": endpoint}))
    assert PROVIDER.locate(src, url) == found


@pytest.mark.parametrize(
    ("name", "job_id"),
    [
        ("openai-openapi_WebhookBatchCompleted.json", "batch_abc123"),
        ("openai-openapi_WebhookBatchFailed.json", "batch_abc123"),
        ("openai-openapi_WebhookBatchExpired.json", "batch_abc123"),
        ("openai-openapi_WebhookBatchCancelled.json", "batch_abc123"),
    ],
)
def test_a_batch_event_names_its_batch(name: str, job_id: str) -> None:
    assert PROVIDER.webhook is not None
    assert PROVIDER.webhook.signed
    assert PROVIDER.webhook.slug == "openai"
    assert PROVIDER.webhook.job_id(fixture(name)) == job_id


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "fine_tuning.job.succeeded", "data": {"id": "ftjob-abc"}},
        {"type": "response.completed", "data": {"id": "resp_123"}},
        {"type": "batch.completed", "data": {}},
        {"type": "batch.completed", "data": "batch_1"},
        {"data": {"id": "batch_1"}},
        [],
    ],
)
def test_other_events_name_no_batch(payload: Any) -> None:
    assert PROVIDER.webhook is not None
    assert PROVIDER.webhook.job_id(payload) is None
