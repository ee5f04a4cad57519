"""What a signed call-back must prove (exporter/webhooks.py): a Standard Webhooks signature of
its body with the source's secret, made within five minutes of now. The signatures here are
made by hand from the standard's recipe (HMAC-SHA256 of "id.timestamp.body", base64), not by
the code under test."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import TYPE_CHECKING

import pytest

from exporter.providers.base import Webhook
from exporter.webhooks import TOLERANCE, WebhookCall, admits, proven, secret_problem

if TYPE_CHECKING:
    from collections.abc import Callable

KEY = b"a key of thirty-two bytes, here!"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
SIGNED = Webhook("signed", lambda _: None, signed=True)
TOKEN = Webhook("token", lambda _: None)
BODY = b'{"object": "event", "type": "batch.completed", "data": {"id": "batch_abc"}}'


def signature(body: bytes, at: float, msg_id: str = "msg_1", key: bytes = KEY) -> str:
    signed = hmac.new(key, f"{msg_id}.{int(at)}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(signed).decode()


def call(sig: str, at: float, msg_id: str = "msg_1") -> WebhookCall:
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(at)), "webhook-signature": sig}
    return WebhookCall("signed", "src", signature=headers)


@pytest.fixture
def now() -> float:
    """The real clock, read in the test: the library checks the timestamp against it too."""
    return time.time()


def test_a_signature_made_with_the_secret_proves_the_call(now: float) -> None:
    """The standard's own recipe, done by hand, is accepted."""
    assert proven(SIGNED, SECRET, call(signature(BODY, now), now), BODY, now)


def test_one_right_signature_among_several_is_enough(now: float) -> None:
    """During a secret rotation a sender signs with both keys, space-separated."""
    both = f"{signature(BODY, now, key=b'an old key')} {signature(BODY, now)}"
    assert proven(SIGNED, SECRET, call(both, now), BODY, now)


WRONG: dict[str, Callable[[float], tuple[str, bytes]]] = {
    "another body": lambda at: (signature(BODY, at), BODY.replace(b"abc", b"abd")),
    "another key": lambda at: (signature(BODY, at, key=b"not the source's key"), BODY),
    "another message id": lambda at: (signature(BODY, at, msg_id="msg_2"), BODY),
    "no version": lambda at: (signature(BODY, at).removeprefix("v1,"), BODY),
    "another version": lambda at: (signature(BODY, at).replace("v1,", "v2,"), BODY),
    "not base64": lambda _: ("v1,!!!", BODY),
    "a body that is not UTF-8": lambda at: (signature(b"\xff", at), b"\xff"),
}


@pytest.mark.parametrize("what", WRONG)
def test_a_wrong_signature_is_refused(what: str, now: float) -> None:
    """Anything but the secret's signature of this very body and id is refused, never raised."""
    sig, body = WRONG[what](now)
    assert admits(SIGNED, SECRET, call(sig, now), now)  # the head cannot tell
    assert not proven(SIGNED, SECRET, call(sig, now), body, now)


@pytest.mark.parametrize("skew", [-TOLERANCE - 1, TOLERANCE + 1, -86400.0])
def test_a_call_signed_more_than_five_minutes_away_is_refused_from_its_head(
    skew: float, now: float
) -> None:
    """A replayed (old) or post-dated call is refused before its body is read."""
    at = now + skew
    assert not admits(SIGNED, SECRET, call(signature(BODY, at), at), now)
    assert not proven(SIGNED, SECRET, call(signature(BODY, at), at), BODY, now)


@pytest.mark.parametrize("skew", [-TOLERANCE + 30, TOLERANCE - 30])
def test_a_call_signed_within_five_minutes_is_admitted(skew: float, now: float) -> None:
    """Clocks differ: five minutes either way are allowed, as the standard's library allows."""
    at = now + skew
    assert proven(SIGNED, SECRET, call(signature(BODY, at), at), BODY, now)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_call_without_a_signature_header_is_refused_from_its_head(
    missing: str, now: float
) -> None:
    """All three headers are needed; a token does not stand in for them."""
    headers = dict(call(signature(BODY, now), now).signature)
    headers[missing] = ""
    unsigned = WebhookCall("signed", "src", token=SECRET, signature=headers)
    assert not admits(SIGNED, SECRET, unsigned, now)


@pytest.mark.parametrize("stamp", ["soon", "nan", "inf", ""])
def test_a_timestamp_that_is_not_a_time_is_refused(stamp: str, now: float) -> None:
    """The timestamp header is read as seconds; anything else is a refusal, not an error."""
    headers = {**call(signature(BODY, now), now).signature, "webhook-timestamp": stamp}
    assert not admits(SIGNED, SECRET, WebhookCall("signed", "src", signature=headers), now)


def test_a_token_hook_takes_the_token_and_nothing_else(now: float) -> None:
    """An unsigned hook compares its token; a signature does not stand in for it."""
    assert admits(TOKEN, "t0ken", WebhookCall("token", "src", token="t0ken"), now)
    assert not admits(TOKEN, "t0ken", WebhookCall("token", "src", token="t0ke"), now)
    assert not admits(TOKEN, "t0ken", call(signature(BODY, now), now), now)


@pytest.mark.parametrize("bad", ["whsec_", "", "whsec_a"])
def test_a_secret_that_cannot_sign_is_named(bad: str) -> None:
    """A config check can tell a secret that is not a Standard Webhooks secret."""
    assert secret_problem(bad) is not None
    assert secret_problem(SECRET) is None
