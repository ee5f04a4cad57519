"""What a provider's call-back must prove before the job it names is polled: a source's token,
or a Standard Webhooks signature (https://www.standardwebhooks.com/) made with its secret.

A token is checked from the request's head alone. A signature covers the body, so it is
checked twice: from the head, that the three headers are there and the timestamp is within
TOLERANCE of now (the body of a call that cannot pass is never read); then, with the body,
the signature itself, by the `standardwebhooks` library. A call signed more than TOLERANCE
ago, or ahead, is refused as the library refuses it: a replayed call is worth nothing.
"""

from __future__ import annotations

import hmac
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import standardwebhooks
from standardwebhooks.webhooks import EmptyWebhookSecretError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from exporter.providers.base import Webhook

SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
TOLERANCE = 300.0  # seconds either way, the library's own five minutes


@dataclass(frozen=True, slots=True)
class WebhookCall:
    """What a call carries to prove itself: a token (`X-Webhook-Token` or `?token=`), and the
    Standard Webhooks headers, lower-case (empty where not sent). Secrets: not in repr."""

    slug: str
    source: str
    token: str = field(default="", repr=False)
    signature: Mapping[str, str] = field(default_factory=dict, repr=False)


def admits(hook: Webhook, secret: str, call: WebhookCall, now: float) -> bool:
    """Whether the call may go on from its head: the right token, or a signature that can
    still be checked (its headers sent, its timestamp within TOLERANCE of `now`)."""
    if not hook.signed:
        return hmac.compare_digest(call.token.encode(), secret.encode())
    if not all(call.signature.get(name) for name in SIGNATURE_HEADERS):
        return False
    try:
        sent = float(call.signature["webhook-timestamp"])
    except ValueError:
        return False
    return math.isfinite(sent) and abs(now - sent) <= TOLERANCE


def proven(hook: Webhook, secret: str, call: WebhookCall, body: bytes, now: float) -> bool:
    """Whether the whole call proves itself: `admits`, and for a signed hook, a signature of
    `body` made with `secret` (a `whsec_` base64 secret)."""
    if not admits(hook, secret, call, now):
        return False
    if not hook.signed:
        return True
    try:
        standardwebhooks.Webhook(secret).verify(body, dict(call.signature), json_parse=False)
    except (standardwebhooks.WebhookVerificationError, ValueError):  # ValueError: bad base64,
        return False  # a signature without its "v1," or a body that is not UTF-8
    return True


def secret_problem(secret: str) -> str | None:
    """Why `secret` cannot sign (for a source's config check), or None."""
    try:
        standardwebhooks.Webhook(secret)
    except (EmptyWebhookSecretError, ValueError):
        return "expected a Standard Webhooks secret: whsec_ and base64"
    return None
