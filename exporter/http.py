"""The one place upstream HTTP happens: timeouts, retries, Retry-After, a body size cap.

`HttpClient.fetch_json` sends one `UpstreamRequest` and returns its decoded JSON body or raises
`FetchError` with the reason Prometheus will count. 429, 5xx and connection errors are retried
with capped exponential backoff (Retry-After wins when the server sends it, capped too); every
attempt is reported to `observe` so the request counters include retries. The whole exchange,
body included, has one deadline, so a server that trickles bytes cannot hold a worker forever.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import requests
import structlog
from requests.adapters import HTTPAdapter

from exporter import __version__
from exporter.model import ErrorReason

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

    from exporter.providers.base import UpstreamRequest

log = structlog.get_logger(__name__)

RETRYABLE = frozenset({ErrorReason.THROTTLED, ErrorReason.SERVER_ERROR, ErrorReason.CONNECTION})
_CHUNK = 64 * 1024
USER_AGENT = f"asyncjob-exporter/{__version__}"


@dataclass(frozen=True, slots=True)
class HttpSettings:
    timeout: float
    retries: int
    max_retry_wait: float
    max_response_bytes: int
    backoff_base: float = 0.5


class FetchError(Exception):
    """A request failed for `reason`; the message is safe to log (no secrets, no body dump)."""

    def __init__(self, reason: ErrorReason, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


class Stopped(Exception):  # noqa: N818 - not an error: the exporter is shutting down
    """Raised instead of waiting out a backoff when the exporter is stopping."""


def classify_status(status: int) -> ErrorReason | None:
    if status < 300:
        return None
    if status in {401, 403}:
        return ErrorReason.AUTH
    if status == 404:
        return ErrorReason.NOT_FOUND
    if status == 429:
        return ErrorReason.THROTTLED
    if status >= 500:
        return ErrorReason.SERVER_ERROR
    return ErrorReason.CLIENT_ERROR


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class HttpClient:
    """One per source: a pooled session sized for that source's concurrency."""

    def __init__(self, settings: HttpSettings, pool_size: int, stop: threading.Event) -> None:
        self.settings = settings
        self._stop = stop
        self._session = requests.Session()
        self._session.headers["User-Agent"] = USER_AGENT
        self._session.headers["Accept"] = "application/json"
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def close(self) -> None:
        self._session.close()

    def fetch_json(
        self, request: UpstreamRequest, observe: Callable[[float, ErrorReason | None], None]
    ) -> Any:
        """Send `request` (retrying what is worth retrying) and return the decoded JSON."""
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                payload = self._attempt(request)
            except FetchError as exc:
                observe(time.monotonic() - started, exc.reason)
                wait = self._retry_wait(exc, attempt)
                if wait is None:
                    raise
                log.debug("retrying", url=request.url, reason=exc.reason.value, wait=wait)
                if self._stop.wait(wait):
                    raise Stopped from exc
                attempt += 1
            else:
                observe(time.monotonic() - started, None)
                return payload

    def _retry_wait(self, exc: FetchError, attempt: int) -> float | None:
        if exc.reason not in RETRYABLE or attempt >= self.settings.retries:
            return None
        retry_after = exc.retry_after
        if retry_after is None:
            # Full jitter: spread the retries of many jobs that failed together.
            retry_after = random.uniform(0.5, 1.0) * self.settings.backoff_base * 2**attempt  # noqa: S311
        return min(retry_after, self.settings.max_retry_wait)

    def _attempt(self, request: UpstreamRequest) -> Any:
        settings = self.settings
        deadline = time.monotonic() + settings.timeout
        try:
            response = self._session.request(
                request.method,
                request.url,
                headers=dict(request.headers),
                json=request.json,
                timeout=settings.timeout,
                stream=True,
                allow_redirects=False,  # a redirect would carry the key header to another host
            )
        except requests.Timeout:
            raise FetchError(
                ErrorReason.TIMEOUT, f"no answer within {settings.timeout:g}s"
            ) from None
        except requests.RequestException as exc:
            raise FetchError(ErrorReason.CONNECTION, _describe(exc)) from None
        with response:
            reason = classify_status(response.status_code)
            if reason is not None:
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                raise FetchError(reason, f"HTTP {response.status_code}", retry_after)
            body = self._read(response, deadline)
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError):
            kind = response.headers.get("Content-Type", "no content type").split(";")[0]
            raise FetchError(ErrorReason.BAD_RESPONSE, f"body is not JSON ({kind})") from None

    def _read(self, response: requests.Response, deadline: float) -> bytes:
        cap = self.settings.max_response_bytes
        chunks: list[bytes] = []
        size = 0
        try:
            # read1 returns what has arrived (up to _CHUNK), so the deadline is checked between
            # reads even when a server trickles its answer a byte at a time.
            while chunk := response.raw.read1(_CHUNK, decode_content=True):
                size += len(chunk)
                if size > cap:
                    raise FetchError(ErrorReason.BAD_RESPONSE, f"body larger than {cap} bytes")
                if time.monotonic() > deadline:
                    raise FetchError(
                        ErrorReason.TIMEOUT, f"body not received within {self.settings.timeout:g}s"
                    )
                chunks.append(chunk)
        except requests.Timeout:
            raise FetchError(ErrorReason.TIMEOUT, "read timed out") from None
        except requests.RequestException as exc:
            raise FetchError(ErrorReason.CONNECTION, _describe(exc)) from None
        return b"".join(chunks)


def _describe(exc: requests.RequestException) -> str:
    # The exception text can be long and nested; its class name says what happened.
    return type(exc).__name__
