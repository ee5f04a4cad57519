"""A provider's follow-up (Provider.follow_up): a second request in the same poll, over real
HTTP on loopback. The poll is one value either way: both attempts counted, the snapshot the
follow-up's reading made, or the failure of either request."""

from __future__ import annotations

import dataclasses
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest
from conftest import poll_with

from exporter.http import HttpClient, HttpSettings
from exporter.model import ErrorReason, JobSnapshot, State
from exporter.providers.base import (
    FollowUp,
    Located,
    ParseError,
    Provider,
    SourceBase,
    UpstreamRequest,
    obj,
    text,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from datetime import datetime

WAITS = {"/slow": "7"}  # paths answered with a Retry-After


class Upstream(BaseHTTPRequestHandler):
    """/jobs/{id}: {"id", "status": "running"}; /events/{id}: {"data": [...]}; else 404."""

    seen: list[str]

    def do_GET(self) -> None:
        self.seen.append(self.path)
        kind, _, job = self.path.strip("/").partition("/")
        answers = {"jobs": {"id": job, "status": "running"}, "events": {"data": [job]}}
        body = json.dumps(answers.get(kind, {"error": "no such thing"})).encode()
        self.send_response(200 if kind in answers else 404)
        if f"/{job}" in WAITS:
            self.send_header("Retry-After", WAITS[f"/{job}"])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def upstream() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (Upstream,), {"seen": seen}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


@pytest.fixture
def client() -> HttpClient:
    return HttpClient(HttpSettings(5.0, 0, 1.0, 1 << 20))


def request(source: SourceBase, job_id: str, _project: str | None = None, /) -> UpstreamRequest:
    return UpstreamRequest("GET", f"{source.endpoint}/jobs/{job_id}")


def parse(payload: Any, _at: datetime) -> JobSnapshot:
    status = text(obj(payload, "job"), "status", required=True)
    return JobSnapshot(State.RUNNING, status, {"overall": 0.0})


def events(answer: Any, snapshot: JobSnapshot, _at: datetime) -> JobSnapshot:
    (step,) = obj(answer, "events")["data"]
    return dataclasses.replace(snapshot, display_name=f"then {step}")


def provider(events_of: str | None, read: Any = events) -> Provider[SourceBase]:
    """A provider that asks `/events/{events_of}` after each status (None: nothing more)."""

    def follow_up(
        source: SourceBase, _job_id: str, _project: str | None, _snapshot: JobSnapshot
    ) -> FollowUp | None:
        if events_of is None:
            return None
        return FollowUp(UpstreamRequest("GET", f"{source.endpoint}/{events_of}"), read)

    def locate(_source: SourceBase, _url: str) -> Located | None:
        return None

    return Provider("follow-up", SourceBase, request, parse, locate, follow_up=follow_up)


def source(url: str) -> SourceBase:
    return SourceBase(name="s", provider="follow-up", endpoint=url)


def test_a_follow_up_is_a_second_request_of_the_same_poll(
    upstream: tuple[str, list[str]], client: HttpClient
) -> None:
    """Its answer completes the snapshot; both requests are the poll's attempts."""
    url, seen = upstream
    outcome = poll_with(client, provider("events/42"), source(url), "j1")
    assert outcome.snapshot is not None
    assert outcome.snapshot.display_name == "then 42"
    assert len(outcome.attempts) == 2
    assert seen == ["/jobs/j1", "/events/42"]


def test_a_provider_that_asks_no_follow_up_makes_one_request(
    upstream: tuple[str, list[str]], client: HttpClient
) -> None:
    url, seen = upstream
    outcome = poll_with(client, provider(None), source(url), "j1")
    assert outcome.snapshot is not None
    assert len(outcome.attempts) == 1
    assert seen == ["/jobs/j1"]


def test_a_follow_up_that_fails_fails_the_poll(
    upstream: tuple[str, list[str]], client: HttpClient
) -> None:
    """The poll is one value: no half snapshot; the status answer's attempt still counts."""
    url, _ = upstream
    outcome = poll_with(client, provider("gone/42"), source(url), "j1")
    assert (outcome.snapshot, outcome.error) == (None, ErrorReason.NOT_FOUND)
    assert [a.error for a in outcome.attempts] == [None, ErrorReason.NOT_FOUND]


def test_a_follow_up_answer_that_cannot_be_read_fails_the_poll(
    upstream: tuple[str, list[str]], client: HttpClient
) -> None:
    def unreadable(_answer: Any, _snapshot: JobSnapshot, _at: datetime) -> JobSnapshot:
        raise ParseError("no events list")

    url, _ = upstream
    outcome = poll_with(client, provider("events/42", unreadable), source(url), "j1")
    assert (outcome.error, outcome.message) == (ErrorReason.BAD_RESPONSE, "no events list")


def test_a_wait_the_follow_up_answer_names_is_kept(
    upstream: tuple[str, list[str]], client: HttpClient
) -> None:
    """A Retry-After on either answer sets the earliest next poll."""
    url, _ = upstream
    outcome = poll_with(client, provider("events/slow"), source(url), "j1")
    assert outcome.snapshot is not None
    assert outcome.retry_after == 7.0


@pytest.mark.parametrize(
    ("link", "sent"),
    [
        # as written: an escaped slash is no slash, in the path or in a cursor (yarl unescapes
        # the one in the query), and an escaped = or + stays escaped
        ("events/a%2Fb?after=x%3Dy&cursor=a%2Fb%2Bc", "/events/a%2Fb?after=x%3Dy&cursor=a%2Fb%2Bc"),
        # a bare space cannot go on the wire: escaped as %20, not as a + (which is a plus sign
        # to a server that does not read form encoding)
        ("events/with space?q=a b", "/events/with%20space?q=a%20b"),
    ],
)
def test_a_link_is_sent_as_the_server_wrote_it(
    upstream: tuple[str, list[str]], client: HttpClient, link: str, sent: str
) -> None:
    url, seen = upstream
    poll_with(client, provider(link), source(url), "j1")
    assert seen == ["/jobs/j1", sent]
