"""The Anthropic Message Batches provider read against published answers: state, counts, times,
the request it makes, the listing's paging and lookback, and the URLs it recognises."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from exporter.model import TASK_STATES, State
from exporter.providers import PROVIDERS
from exporter.providers.anthropic_message_batch.api import (
    DEFAULT_ENDPOINT,
    PROVIDER,
    Source,
    ended_state,
    lister,
    parse,
)
from exporter.providers.base import ListQuery, Located, ParseError

FIXTURES = Path(__file__).parent.parent / "fixtures"
POLLED_AT = datetime(2026, 1, 1, tzinfo=UTC)
KEY = "sk-ant-api03-test-key"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def source(**extra: Any) -> Source:
    return Source.model_validate(
        {"name": "claude", "provider": "anthropic_message_batch", "auth": {"api_key": KEY}, **extra}
    )


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def test_registered() -> None:
    """The registry names the provider by the folder's PROVIDER."""
    assert PROVIDERS["anthropic_message_batch"] is PROVIDER


def test_in_progress_from_the_docs() -> None:
    """A new batch runs: every request is processing, no progress is claimed, no finish."""
    snap = parse(fixture("anthropic-docs_batch-processing_create_in_progress.json"), POLLED_AT)
    assert snap.state is State.RUNNING
    assert snap.vendor_status == "in_progress"
    assert snap.progress == {}  # the API does not say how far it is
    assert not snap.shows_progress
    assert snap.tasks == {"in_progress": 2, "completed": 0, "failed": 0, "cancelled": 0,
                          "expired": 0}  # fmt: skip
    assert snap.created == snap.started == at("2024-09-24T18:37:24.100435Z")
    assert snap.expiration == at("2024-09-25T18:37:24.100435Z")
    assert snap.finished is None
    assert snap.estimated_completion is None


def test_every_task_state_is_exported_even_at_zero() -> None:
    """All five counts are in the snapshot, so all five task series are exported."""
    snap = parse(fixture("anthropic-cookbook_batch-processing_in_progress.derived.json"), POLLED_AT)
    assert set(snap.tasks) == set(TASK_STATES)


def test_canceling_from_the_docs() -> None:
    """`canceling` is cancelling; its cancel time is the last update."""
    snap = parse(fixture("anthropic-docs_batch-processing_cancel_canceling.json"), POLLED_AT)
    assert snap.state is State.CANCELLING
    assert snap.progress == {}
    assert snap.last_update == at("2024-09-24T18:39:03.114875Z")
    assert snap.finished is None


def test_ended_all_succeeded_recorded_by_the_cookbook() -> None:
    """A real ended batch (4 of 4 succeeded) is succeeded, complete, finished at ended_at."""
    snap = parse(
        fixture("anthropic-cookbook_batch-processing_ended_succeeded.derived.json"), POLLED_AT
    )
    assert snap.state is State.SUCCEEDED
    assert snap.progress["overall"] == 1.0
    assert snap.tasks["completed"] == 4
    assert snap.tasks["in_progress"] == 0
    assert snap.finished == at("2024-10-08T00:46:47.283392Z")
    assert snap.last_update == snap.finished


def test_ended_mixed_is_partially_succeeded() -> None:
    """7 succeeded, 2 errored, 1 expired: partially succeeded, 9 of 10 done."""
    snap = parse(fixture("synthetic-ended_partially_succeeded.json"), POLLED_AT)
    assert snap.state is State.PARTIALLY_SUCCEEDED
    assert snap.progress["overall"] == pytest.approx(0.9)
    assert snap.tasks == {"in_progress": 0, "completed": 7, "failed": 2, "cancelled": 0,
                          "expired": 1}  # fmt: skip
    assert snap.finished == at("2024-09-25T18:37:24.100435Z")


def test_ended_after_a_cancel_before_any_result_is_cancelled() -> None:
    """A batch cancelled before any request had a result ends cancelled, finished at ended_at."""
    snap = parse(fixture("synthetic-ended_canceled.json"), POLLED_AT)
    assert snap.state is State.CANCELLED
    assert snap.progress["overall"] == 0.0
    assert snap.tasks["cancelled"] == 2
    assert snap.finished == at("2024-09-24T18:39:05.287314Z")


def test_ended_all_expired_is_failed() -> None:
    """No request succeeded (all expired): failed."""
    snap = parse(fixture("synthetic-ended_all_expired.json"), POLLED_AT)
    assert snap.state is State.FAILED
    assert snap.tasks["expired"] == 3


@pytest.mark.parametrize(
    ("succeeded", "errored", "canceled", "expired", "state"),
    [
        (5, 0, 0, 0, State.SUCCEEDED),
        (4, 1, 0, 0, State.PARTIALLY_SUCCEEDED),
        (1, 0, 3, 0, State.PARTIALLY_SUCCEEDED),  # cancelled after some results: they count
        (1, 0, 0, 4, State.PARTIALLY_SUCCEEDED),
        (0, 5, 0, 0, State.FAILED),
        (0, 0, 0, 5, State.FAILED),
        (0, 2, 3, 0, State.FAILED),  # errors came before the cancel: not to be hidden
        (0, 0, 5, 0, State.CANCELLED),
        (0, 0, 3, 2, State.CANCELLED),  # canceled and expired: no request had a result
        (0, 0, 0, 0, State.FAILED),  # no counts at all: nothing succeeded
    ],
)
def test_ended_state_from_counts(
    succeeded: int, errored: int, canceled: int, expired: int, state: State
) -> None:
    """The documented table of an ended batch's state by its counts."""
    counts = {"processing": 0, "succeeded": succeeded, "errored": errored,
              "canceled": canceled, "expired": expired}  # fmt: skip
    assert ended_state(counts) is state


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("in_progress", State.RUNNING),
        ("IN_PROGRESS", State.RUNNING),
        ("in-progress", State.RUNNING),
        ("In Progress", State.RUNNING),
        ("canceling", State.CANCELLING),
        ("Cancelling", State.CANCELLING),
        ("ENDED", State.SUCCEEDED),
        ("archived", State.UNKNOWN),
        ("", State.UNKNOWN),
    ],
)
def test_status_spellings(status: str, state: State) -> None:
    """Case and separators are tolerated; an unknown status is unknown, never a crash."""
    body = fixture("anthropic-cookbook_batch-processing_ended_succeeded.derived.json")
    snap = parse({**body, "processing_status": status}, POLLED_AT)
    assert snap.state is state
    assert (snap.finished is not None) == state.terminal


def test_running_answer_with_an_end_time_has_no_finish() -> None:
    """The API reference's filler example (in_progress with every time set): no finish, no
    progress, every count kept as sent."""
    snap = parse(fixture("anthropic-api-reference_retrieve_all_fields.json"), POLLED_AT)
    assert snap.state is State.RUNNING
    assert snap.finished is None
    assert snap.progress == {}
    assert snap.tasks == {"in_progress": 100, "completed": 50, "failed": 30, "cancelled": 10,
                          "expired": 10}  # fmt: skip


def test_tolerant_reader() -> None:
    """Extra fields are ignored; missing optional fields are absent values, not errors."""
    body = {
        "id": "msgbatch_1", "processing_status": "ended", "created_at": "2024-09-24T18:37:24Z",
        "request_counts": {"succeeded": 2, "future_bucket": 9}, "new_field": {"x": 1},
    }  # fmt: skip
    snap = parse(body, POLLED_AT)
    assert snap.state is State.SUCCEEDED
    assert snap.expiration is None
    assert snap.finished is None  # ended, but the answer says not when
    assert snap.tasks["cancelled"] == 0


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"processing_status": "ended", "request_counts": {}},  # no id
        {"id": "msgbatch_1", "request_counts": {}},  # no status
        {"id": "msgbatch_1", "processing_status": "ended"},  # no counts
        {"id": "msgbatch_1", "processing_status": "ended", "request_counts": {"succeeded": -1}},
        {"id": "msgbatch_1", "processing_status": "ended", "request_counts": {"errored": "2"}},
        {
            "id": "msgbatch_1",
            "processing_status": "ended",
            "request_counts": {},
            "created_at": "yesterday",
        },
        fixture("synthetic-error_not_found.json"),
    ],
)
def test_unreadable_answers_are_parse_errors(body: Any) -> None:
    """What is not a message batch is a ParseError, with no snapshot."""
    with pytest.raises(ParseError):
        parse(body, POLLED_AT)


def test_request_sends_the_key_and_version_in_headers() -> None:
    """GET {endpoint}/messages/batches/{id}, x-api-key and anthropic-version; the key is in no
    URL and no repr."""
    request = PROVIDER.request(source(), "msgbatch_01HkcTjaV5uDC8jWR4ZsDV8d")
    assert request.method == "GET"
    assert request.url == f"{DEFAULT_ENDPOINT}/messages/batches/msgbatch_01HkcTjaV5uDC8jWR4ZsDV8d"
    assert request.headers == {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    assert request.json is None
    assert KEY not in request.url
    assert KEY not in repr(request)
    assert KEY not in repr(source())


def test_api_version_and_key_file(tmp_path: Path) -> None:
    """The source's api_version is the anthropic-version header; the key may come from a file."""
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n", encoding="utf-8")
    configured = Source.model_validate({
        "name": "claude", "provider": "anthropic_message_batch", "api_version": "2026-10-21",
        "endpoint": "https://gateway.example/anthropic/v1", "auth": {"api_key_file": str(key_file)},
    })  # fmt: skip
    request = PROVIDER.request(configured, "msgbatch_1")
    assert request.url == "https://gateway.example/anthropic/v1/messages/batches/msgbatch_1"
    assert request.headers["anthropic-version"] == "2026-10-21"
    assert request.headers["x-api-key"] == KEY


def test_job_id_cannot_leave_the_path() -> None:
    """An ID is one path segment, percent-encoded."""
    assert PROVIDER.request(source(), "a/../b?x").url.endswith("/messages/batches/a%2F..%2Fb%3Fx")


def test_locate() -> None:
    """A batch URL and its results URL name the batch; other places name nothing."""
    claude = source()
    base = f"{DEFAULT_ENDPOINT}/messages/batches"
    assert PROVIDER.locate(claude, f"{base}/msgbatch_1") == Located("msgbatch_1")
    assert PROVIDER.locate(claude, f"{base}/msgbatch_1/results") == Located("msgbatch_1")
    assert PROVIDER.locate(claude, "https://evil.example/v1/messages/batches/msgbatch_1") is None
    assert PROVIDER.locate(claude, f"{base}/msgbatch_1/cancel") is None
    assert PROVIDER.locate(claude, f"{DEFAULT_ENDPOINT}/batches/batch_1") is None


# -- listing ------------------------------------------------------------------------------------

NOW = datetime(2024, 9, 25, 12, 0, tzinfo=UTC)


def entry(job_id: str, age_hours: float, status: str = "in_progress", **extra: Any) -> Any:
    created = NOW - timedelta(hours=age_hours)
    counts = {"processing": 1, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    body = {"id": job_id, "type": "message_batch", "processing_status": status,
            "created_at": created.isoformat().replace("+00:00", "Z"),
            "expires_at": (created + timedelta(hours=24)).isoformat().replace("+00:00", "Z"),
            "request_counts": counts, "ended_at": None}  # fmt: skip
    if status == "ended":
        body["request_counts"] = {**counts, "processing": 0, "succeeded": 1}
        ended = extra.pop("ended_hours", age_hours)
        body["ended_at"] = (NOW - timedelta(hours=ended)).isoformat().replace("+00:00", "Z")
    return {**body, **extra}


def first_listing() -> ListQuery:
    since = NOW - timedelta(hours=24)
    return ListQuery(since, since)


def test_first_request_and_paging() -> None:
    """limit=100 first; then after_id = last_id while has_more, with the same headers."""
    (ask,) = lister(source(), first_listing())
    url = urlsplit(ask.request.url)
    assert url.path == "/v1/messages/batches"
    assert parse_qs(url.query) == {"limit": ["100"]}
    assert ask.request.headers["x-api-key"] == KEY
    page = ask.read({"data": [entry("b2", 1), entry("b1", 2)], "has_more": True,
                     "first_id": "b2", "last_id": "b1"}, NOW)  # fmt: skip
    assert [job.job_id for job in page.listed] == ["b2", "b1"]
    assert all(job.snapshot is not None for job in page.listed)
    (follow,) = page.follow
    assert parse_qs(urlsplit(follow.request.url).query) == {"limit": ["100"], "after_id": ["b1"]}
    assert follow.request.headers == ask.request.headers
    last = follow.read({"data": [entry("b0", 3)], "has_more": False, "first_id": "b0",
                        "last_id": "b0"}, NOW)  # fmt: skip
    assert [job.job_id for job in last.listed] == ["b0"]
    assert last.follow == ()


def test_paging_stops_at_the_lookback() -> None:
    """Newest first: the first batch older than the lookback ends the walk, and is not listed."""
    (ask,) = lister(source(), first_listing())
    page = ask.read({"data": [entry("new", 1), entry("old", 25)], "has_more": True,
                     "last_id": "old"}, NOW)  # fmt: skip
    assert [job.job_id for job in page.listed] == ["new"]
    assert page.follow == ()


@pytest.mark.parametrize(
    "payload",
    [
        {"data": [], "has_more": True, "last_id": "x"},  # empty page: the SDK stops too
        {"data": [entry("b", 1)], "has_more": True, "last_id": None},
        {"data": [entry("b", 1)], "has_more": False, "last_id": "b"},
        {"data": [entry("b", 1)], "last_id": "b"},  # has_more missing: not "more"
    ],
)
def test_paging_ends_as_the_sdk_ends(payload: Any) -> None:
    """No next page without has_more, a last_id and entries."""
    (ask,) = lister(source(), first_listing())
    assert ask.read(payload, NOW).follow == ()


def test_later_listings_skip_finished_batches_seen_before() -> None:
    """After the first listing: every unfinished batch in the lookback, finished ones only if
    created or ended since the listing before."""
    since = NOW - timedelta(hours=24)
    query = ListQuery(since, NOW - timedelta(hours=1))
    (ask,) = lister(source(), query)
    data = [
        entry("running-new", 0.5),
        entry("ended-new", 0.5, "ended", ended_hours=0.1),
        entry("running-old", 5),
        entry("ended-recently", 6, "ended", ended_hours=0.2),
        entry("ended-long-ago", 7, "ended", ended_hours=6),
    ]
    page = ask.read({"data": data, "has_more": False}, NOW)
    assert [job.job_id for job in page.listed] == [
        "running-new", "ended-new", "running-old", "ended-recently",
    ]  # fmt: skip


def test_listing_tolerates_odd_entries() -> None:
    """Non-objects and unsafe IDs are skipped; an unreadable entry is listed without a status
    (its own poll says what is wrong)."""
    (ask,) = lister(source(), first_listing())
    page = ask.read({"data": ["x", None, entry("../x", 1), entry("bad", 1, request_counts=3),
                              entry("bad-time", 1, created_at="soon")]}, NOW)  # fmt: skip
    assert [(job.job_id, job.snapshot) for job in page.listed] == [
        ("bad", None),
        ("bad-time", None),
    ]


@pytest.mark.parametrize("payload", [[], {"data": {}}, {"data": "x"}])
def test_unreadable_listing_is_a_parse_error(payload: Any) -> None:
    """A listing that is not a list answer fails whole."""
    (ask,) = lister(source(), first_listing())
    with pytest.raises(ParseError):
        ask.read(payload, NOW)


def test_published_list_page() -> None:
    """The API reference's list example is read (its batch is dated 2024-08-20)."""
    since = datetime(2024, 8, 1, tzinfo=UTC)
    (ask,) = lister(source(), ListQuery(since, since))
    page = ask.read(fixture("anthropic-api-reference_list_page.json"), NOW)
    assert [job.job_id for job in page.listed] == ["msgbatch_013Zva2CMHLNnXjNJJKqJ2EF"]
    (follow,) = page.follow
    assert "after_id=last_id" in follow.request.url
