"""Microsoft Entra ID for the Azure providers, with a fake credential at the credential seam."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
from conftest import Harness, demo_raw_config

from exporter import credentials
from exporter.logging import Redactor

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

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
    scopes: list[tuple[str, ...]] = field(default_factory=list)

    def get_token(self, *scopes: str) -> AccessToken:
        if self.fail:
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


def test_bearer_tokens_are_redacted_in_logs() -> None:
    redactor = Redactor()
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJjb2duaXRpdmUifQ.c2lnbmF0dXJl"
    assert (
        redactor.mask(f"401 for Authorization: Bearer {jwt}")
        == "401 for Authorization: Bearer <redacted>"
    )
    assert redactor.mask(f"token={jwt} rejected") == "token=<redacted> rejected"
