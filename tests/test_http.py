"""The HTTP helper's pure parts: Retry-After in both forms, and status codes to reasons."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from exporter.http import classify_status, rate_limit_wait, retry_after_seconds, wait_in_words
from exporter.model import ErrorReason
from exporter.server import parse_listen_address

NOW = datetime(2026, 11, 22, 8, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("30", 30.0),
        (" 2 ", 2.0),
        ("Sun, 22 Nov 2026 08:01:30 GMT", 90.0),
        ("Sun, 22 Nov 2026 07:00:00 GMT", 0.0),  # in the past: retry now
        ("soon", None),
        ("-5", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header, NOW) == seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        # Translator's own 429 body, as it comes without a Retry-After header.
        ("Too many requests. ... Please retry after 1 second.", 1.0),
        ("Rate limit is exceeded. Try again in 2 seconds.", None),  # no 'retry after': no guess
        ("retry after 30 seconds", 30.0),
        ("Retry-After: 5", 5.0),
        ("please retry after 1.5s", 1.5),
        ("retry after 2 minutes", 120.0),
        ("retry after 250 ms", 0.25),
        ("no wait named here", None),
    ],
)
def test_wait_in_words(text: str, seconds: float | None) -> None:
    assert wait_in_words(text) == seconds


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (200, None),
        (204, None),
        (301, ErrorReason.CLIENT_ERROR),
        (400, ErrorReason.CLIENT_ERROR),
        (401, ErrorReason.AUTH),
        (403, ErrorReason.AUTH),
        (404, ErrorReason.NOT_FOUND),
        (429, ErrorReason.THROTTLED),
        (500, ErrorReason.SERVER_ERROR),
        (503, ErrorReason.SERVER_ERROR),
    ],
)
def test_status_reasons(status: int, reason: ErrorReason | None) -> None:
    assert classify_status(status) == reason


@pytest.mark.parametrize(
    ("address", "parsed"),
    [(":9879", ("", 9879)), ("127.0.0.1:0", ("127.0.0.1", 0)), ("[::1]:9100", ("::1", 9100))],
)
def test_listen_address(address: str, parsed: tuple[str, int]) -> None:
    assert parse_listen_address(address) == parsed


@pytest.mark.parametrize("address", ["9879", "host:", "host:99999", "host:http"])
def test_bad_listen_address(address: str) -> None:
    with pytest.raises(ValueError, match="invalid listen address"):
        parse_listen_address(address)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        # OpenAI: Go durations, remaining and reset named "-remaining-X" / "-reset-X".
        ({"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0",
          "x-ratelimit-reset-requests": "6m0s"}, 360.0),
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1m30.5s",
          "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "20ms"}, 90.5),
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1h2m"}, 3720.0),
        # Anthropic: RFC 3339 times, named "-X-remaining" / "-X-reset".
        ({"anthropic-ratelimit-requests-limit": "50",
          "anthropic-ratelimit-requests-remaining": "0",
          "anthropic-ratelimit-requests-reset": "2026-11-22T08:00:42Z"}, 42.0),
        ({"anthropic-ratelimit-tokens-remaining": "0",
          "anthropic-ratelimit-tokens-reset": "2026-11-22T07:59:00Z"}, 0.0),  # passed: now
        # A limit with room left, or an exhausted one with no reset, names no wait.
        ({"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "6m0s"}, None),
        ({"x-ratelimit-remaining-requests": "0"}, None),
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-tokens": "6m0s"}, None),
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "soon"}, None),
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "12"}, 12.0),
        ({}, None),
    ],
)  # fmt: skip
def test_rate_limit_wait(headers: dict[str, str], seconds: float | None) -> None:
    """An exhausted limit's reset, in either vendor's spelling, is the wait; else none."""
    assert rate_limit_wait(headers, NOW) == seconds
