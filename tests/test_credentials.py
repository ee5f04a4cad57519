"""Microsoft Entra ID for the Azure providers, with a fake credential at the credential seam."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
from conftest import Harness, demo_raw_config, wait_until

from exporter import credentials
from exporter.http import HttpClient, HttpSettings, TokenBucket
from exporter.logging import Redactor
from exporter.providers import PROVIDERS
from exporter.providers.base import UpstreamRequest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from exporter.model import Attempt
    from exporter.simulator import Simulator


@dataclass
class AccessToken:
    token: str
    expires_on: int


@dataclass
class FakeCredential:
    """Hands out tok-1, tok-2, ... valid for `lifetime` seconds; can be made to fail."""

    lifetime: int = 3600
    fail: bool = False
    failures_left: int = 0
    scopes: list[tuple[str, ...]] = field(default_factory=list)

    def get_token(self, *scopes: str) -> AccessToken:
        if self.fail or self.failures_left > 0:
            self.failures_left -= 1
            raise RuntimeError("ManagedIdentityCredential: no identity on this host")
        self.scopes.append(scopes)
        return AccessToken(f"tok-{len(self.scopes)}", int(time.time()) + self.lifetime)


@pytest.fixture
def fake() -> Iterator[tuple[FakeCredential, list[str | None]]]:
    credential = FakeCredential()
    client_ids: list[str | None] = []

    def factory(client_id: str | None) -> FakeCredential:
        client_ids.append(client_id)
        return credential

    credentials.credential_factory = factory
    credentials.reset()
    yield credential, client_ids
    credentials.credential_factory = None
    credentials.reset()


def entra(sim: Simulator) -> dict[str, Any]:
    raw = demo_raw_config(sim)
    raw["sources"] = raw["sources"][:2]  # training and analyze-text, both with Entra ID
    for source in raw["sources"]:
        source["auth"] = {"azure_ad": {"client_id": "0000-app"}}
    return raw


LABELS = {
    "provider": "azure_language_analyze_text",
    "source": "language-analyze",
    "job_id": "analyze-ok",
}


def test_bearer_token_is_sent_and_cached(make_harness: Callable[..., Harness], fake: Any) -> None:
    credential, client_ids = fake
    h = make_harness(entra, bearer_tokens=frozenset({"tok-1"}))
    h.exporter.poll_once()
    h.exporter.poll_once()
    (first, second) = h.sim.seen("analyze-ok")
    assert first.headers["authorization"] == second.headers["authorization"] == "Bearer tok-1"
    assert "ocp-apim-subscription-key" not in first.headers
    assert credential.scopes == [
        ("https://cognitiveservices.azure.com/.default",)
    ]  # one token for all
    assert client_ids == ["0000-app"]
    assert h.scrape().get("asyncjob_up", **LABELS) == 1


def test_token_is_refreshed_before_it_expires(
    make_harness: Callable[..., Harness], fake: Any
) -> None:
    """A token within REFRESH_MARGIN of expiry is replaced before the next request."""
    credential, _ = fake
    credential.lifetime = int(credentials.REFRESH_MARGIN) - 60
    h = make_harness(entra, bearer_tokens=frozenset({"tok-1", "tok-2", "tok-3", "tok-4", "tok-5"}))
    h.exporter.poll_once()
    h.exporter.poll_once()
    tokens = [r.headers["authorization"] for r in h.sim.seen("analyze-ok")]
    assert len(set(tokens)) == 2
    assert all(t.startswith("Bearer tok-") for t in tokens)


def test_no_token_is_an_auth_failure(make_harness: Callable[..., Harness], fake: Any) -> None:
    credential, _ = fake
    credential.fail = True
    h = make_harness(entra)
    h.exporter.poll_once()
    m = h.scrape()
    assert m.get("asyncjob_up", **LABELS) == 0
    assert m.get("asyncjob_last_poll_error_info", **LABELS, reason="auth") == 1
    assert h.sim.seen("analyze-ok") == []  # nothing was sent without a token
    # Getting the token is an attempt like any other: counted, and retried (3 retries).
    source = {"provider": LABELS["provider"], "source": LABELS["source"]}
    assert m.get("asyncjob_request_errors_total", **source, reason="auth") == 4
    assert m.get("asyncjob_requests_total", **source) == 4


def test_a_token_that_comes_back_is_used_on_the_retry(
    make_harness: Callable[..., Harness], fake: Any
) -> None:
    """The token service fails once (IMDS not ready yet): the retry gets a token, the poll works."""
    credential, _ = fake
    credential.failures_left = 1
    h = make_harness(entra, bearer_tokens=frozenset({"tok-1"}))
    h.exporter.poll_once()
    m = h.scrape()
    assert m.get("asyncjob_up", **LABELS) == 1
    # One cached credential serves both sources: whichever asked first met the failure once.
    errors = sum(v for (n, lbls), v in m.samples.items()
                 if n == "asyncjob_request_errors_total" and ("reason", "auth") in lbls)  # fmt: skip
    requests_sent = sum(v for (n, _), v in m.samples.items() if n == "asyncjob_requests_total")
    assert (errors, requests_sent) == (1, 4)  # three jobs, one of them retried once
    assert len(h.sim.requests) == 3


def test_building_a_request_fetches_no_token(fake: Any) -> None:
    """The token is obtained by the HTTP layer per attempt, not when the request is built."""
    credential, _ = fake
    source = PROVIDERS["azure_language_analyze_text"].source_model.model_validate(
        {"name": "s", "provider": "azure_language_analyze_text", "endpoint": "https://x.example",
         "job_ids": ["j"], "auth": {"azure_ad": {}}}
    )  # fmt: skip
    request = PROVIDERS["azure_language_analyze_text"].request(source, "j")
    assert credential.scopes == []
    assert "Authorization" not in request.headers
    assert request.auth is not None
    assert dict(request.auth.headers()) == {"Authorization": "Bearer tok-1"}


def test_shutdown_interrupts_the_wait_for_a_budget_before_a_token_is_asked_for(
    fake: Any,
) -> None:
    """Shutdown cancels a poll waiting for its request budget: no token is asked for, and no
    attempt is made or counted."""
    credential, _ = fake
    spent = TokenBucket(1, capacity=1)
    spent.reserve()  # the next token comes in a minute
    client = HttpClient(HttpSettings(5.0, 3, 1.0, 1024), [spent])
    request = UpstreamRequest("GET", "http://127.0.0.1:9/", auth=credentials.EntraToken(None))
    attempts: list[Attempt] = []

    async def shut_down_while_waiting() -> None:
        async with client:
            poll = asyncio.create_task(client.fetch_json(request, attempts))
            await asyncio.sleep(0.2)
            assert not poll.done()  # waiting for the budget
            poll.cancel()
            with pytest.raises(asyncio.CancelledError):
                await poll

    asyncio.run(shut_down_while_waiting())
    assert (credential.scopes, attempts) == ([], [])


def test_bearer_tokens_are_redacted_in_logs() -> None:
    redactor = Redactor()
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJjb2duaXRpdmUifQ.c2lnbmF0dXJl"
    assert (
        redactor.mask(f"401 for Authorization: Bearer {jwt}")
        == "401 for Authorization: Bearer <redacted>"
    )
    assert redactor.mask(f"token={jwt} rejected") == "token=<redacted> rejected"


def test_a_token_service_that_hangs_holds_up_neither_the_stop_nor_the_exit(
    make_harness: Callable[..., Harness], fake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Getting a token blocks: it runs off the poller's loop, on a daemon thread, so stopping
    cancels the polls waiting for it at once, and the interpreter's exit does not wait for it
    (a pool's worker thread is joined at exit: three hung token calls held a process 60 s)."""
    credential: FakeCredential = fake[0]
    release = threading.Event()
    hung: list[threading.Thread] = []
    real_get_token = credential.get_token

    def hang(*scopes: str) -> AccessToken:
        hung.append(threading.current_thread())
        release.wait(60)
        return real_get_token(*scopes)

    monkeypatch.setattr(credential, "get_token", hang)
    h = make_harness(entra)
    try:
        h.exporter.start()
        wait_until(lambda: hung, what="a poll waiting for its token")
        pollers = list(h.exporter.pollers.values())
        h.exporter.stop()
        assert [p.alive for p in pollers] == [False, False]
        assert hung[0].is_alive()  # still in the token service
        assert hung[0].daemon
        assert h.sim.requests == []
    finally:
        release.set()
