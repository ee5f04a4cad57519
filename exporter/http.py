"""The one place upstream HTTP happens: authentication, timeouts, retries, Retry-After, a size cap.

`HttpClient.fetch_json` sends one `UpstreamRequest` and returns a `Fetched` (the decoded JSON
and any Retry-After the upstream sent with it) or raises `FetchError` with the reason Prometheus
will count. Every attempt, whatever became of it, is appended to the caller's `attempts`: the
HTTP layer reports what happened and counts nothing itself.

- Authentication happens here, per attempt: a request's `auth` (an Entra ID token source) may do
  network I/O, so it is retried, counted and interrupted at shutdown like the request itself.
- 429, 5xx, connection errors and timeouts are retried with capped exponential backoff and full
  jitter. A server's wait wins when it names one: the Retry-After header (seconds or a date), or,
  for a 429 without the header, the reset of an exhausted rate limit named in `*ratelimit*`
  headers (OpenAI's `x-ratelimit-reset-requests: 6m0s`, Anthropic's
  `anthropic-ratelimit-requests-reset: <RFC 3339>`), or a wait written in the body ("retry after
  1 second", as Translator's own 429 says). A success that says a limit is exhausted (its
  remaining count 0) paces the next request the same way.
- Faults are classified here, never left to escape: a connection broken mid-body is
  `connection`, a stall is `timeout`, an undecodable or absurdly nested body is `bad_response`.
- The whole exchange, body included, has one deadline, so a server that trickles bytes cannot
  hold a worker for ever.

Requests go through urllib3's pools directly, not through `requests`: a Session's per-request
work (merging settings, preparing, cookies, hooks, redirect checks) was a third of the HTTP
cost of a poll, and a poll is mostly HTTP (at 10,000 jobs with a tenth running, the exporter's
CPU per poll went from about 0.85 ms to about 0.6 ms). What requests did that the exporter
relies on is done here: the proxies the environment names (HTTPS_PROXY, NO_PROXY; read once
per host), a JSON body, the default Accept-Encoding, no redirects, no retries of its own.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog
import urllib3
import urllib3.exceptions
from requests.utils import get_environ_proxies, select_proxy

from exporter import __version__
from exporter.logging import redactor
from exporter.model import Attempt, ErrorReason
from exporter.upstream import AuthUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from exporter.upstream import UpstreamRequest

log = structlog.get_logger(__name__)

RETRYABLE = frozenset(
    {
        ErrorReason.THROTTLED,
        ErrorReason.SERVER_ERROR,
        ErrorReason.CONNECTION,
        ErrorReason.TIMEOUT,
    }
)
_CHUNK = 64 * 1024
_ERROR_BODY_BYTES = 16 * 1024  # of a 429's body, read for a wait named in words
USER_AGENT = f"asyncjob-exporter/{__version__}"
_WAIT_IN_WORDS = re.compile(
    r"retry\W{0,3}after\D{0,20}?(\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|secs?|seconds?|minutes?)?\b",
    re.IGNORECASE,
)
# What a broken connection looks like from inside a body read, by library layer.
_BROKEN = (urllib3.exceptions.ProtocolError, http.client.HTTPException, OSError)
_STALLED = (urllib3.exceptions.ReadTimeoutError, socket.timeout, TimeoutError)
_NO_ANSWER = (urllib3.exceptions.ConnectTimeoutError, urllib3.exceptions.ReadTimeoutError,
              urllib3.exceptions.TimeoutError, socket.timeout, TimeoutError)  # fmt: skip
_NO_RETRIES = urllib3.Retry(total=False, redirect=False)  # what retries=False means, made once
_HEADERS = {
    "User-Agent": USER_AGENT,
    "Accept": "application/json",
    **urllib3.util.make_headers(accept_encoding=True),  # what urllib3 can decode, as requests
}


@dataclass(frozen=True, slots=True)
class HttpSettings:
    timeout: float
    retries: int
    max_retry_wait: float
    max_response_bytes: int
    backoff_base: float = 0.5


@dataclass(frozen=True, slots=True)
class Fetched:
    """A successful exchange: the decoded body, and the upstream's Retry-After if it sent one."""

    payload: Any
    retry_after: float | None = None


class FetchError(Exception):
    """A request failed for `reason`; the message is safe to log (no secrets, no body dump)."""

    def __init__(
        self,
        reason: ErrorReason,
        message: str,
        retry_after: float | None = None,
        *,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after
        self.retryable = reason in RETRYABLE if retryable is None else retryable


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


_GO_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:h|ms|us|µs|ns|m|s))+")
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_LIMIT_ROLES = {"remaining", "reset"}
_LIMIT_NOISE = {"x", "ratelimit", *_LIMIT_ROLES}


def _reset_seconds(value: str, now: datetime) -> float | None:
    """A rate limit's reset: a duration ("6m0s", "20ms", "1.5s", "30"), or a time (RFC 3339)."""
    value = value.strip()
    if _GO_DURATION.fullmatch(value):
        return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _GO_PART.findall(value))
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        return number if 0 <= number < 1e7 else None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def rate_limit_wait(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """How long until the exhausted rate limits named in `*ratelimit*` headers reset: for each
    limit (requests, tokens, ...) whose remaining count is 0, its reset; the longest of them.
    None when no limit is exhausted or none says when it resets. Remaining and reset pair up by
    the rest of their names: `x-ratelimit-remaining-requests` with `x-ratelimit-reset-requests`,
    `anthropic-ratelimit-requests-remaining` with `anthropic-ratelimit-requests-reset`."""
    remaining: dict[frozenset[str], str] = {}
    resets: dict[frozenset[str], str] = {}
    for name, value in headers.items():
        parts = name.lower().split("-")
        if "ratelimit" not in parts or len(role := _LIMIT_ROLES.intersection(parts)) != 1:
            continue
        limit = frozenset(parts) - _LIMIT_NOISE
        (remaining if role == {"remaining"} else resets)[limit] = value
    waits = [
        wait
        for limit, left in remaining.items()
        if left.strip() == "0" and limit in resets
        if (wait := _reset_seconds(resets[limit], now or datetime.now(UTC))) is not None
    ]
    return max(waits, default=None)


def wait_in_words(text: str) -> float | None:
    """A wait a throttling answer names in prose ("Please retry after 1 second"), in seconds."""
    match = _WAIT_IN_WORDS.search(text)
    if match is None:
        return None
    value, unit = float(match[1]), (match[2] or "s").lower()
    if unit.startswith(("ms", "milli")):
        return value / 1000
    return value * 60 if unit.startswith("min") else value


class TokenBucket:
    """A request budget (`max_requests_per_minute`): at most `capacity` requests at once (a
    minute's worth by default), refilled continuously at the rate. A request that finds no
    token reserves the next one and is told how long to wait, so waiting requests go in turn
    and none is dropped."""

    def __init__(
        self,
        per_minute: float,
        capacity: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_minute = per_minute
        self.per_second = per_minute / 60.0
        self.capacity = capacity if capacity is not None else max(1.0, per_minute)
        self._clock = clock
        self._tokens = self.capacity
        self._at = clock()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take a token; the seconds to wait before using it (0 when one was there)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.per_second)
            self._at = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.per_second


class HttpClient:
    """One per source: a pooled session sized for that source's concurrency. Every attempt
    first takes a token from each of `budgets` (the source's and the global request budget),
    waiting when there is none."""

    def __init__(
        self,
        settings: HttpSettings,
        pool_size: int,
        stop: threading.Event,
        budgets: Sequence[TokenBucket] = (),
    ) -> None:
        self.settings = settings
        self._stop = stop
        self._budgets = tuple(budgets)
        self._pool_size = pool_size
        self._timeout = urllib3.Timeout(connect=settings.timeout, read=settings.timeout)
        # Pools by scheme://host (a source talks to one or two hosts), and by proxy URL; the
        # environment (HTTPS_PROXY, NO_PROXY) is read once per host.
        self._pools: dict[str, urllib3.HTTPConnectionPool] = {}
        self._proxied: dict[str, urllib3.ProxyManager] = {}
        self._proxies: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            for pool in self._pools.values():
                pool.close()
            for manager in self._proxied.values():
                manager.clear()

    def fetch_json(self, request: UpstreamRequest, attempts: list[Attempt]) -> Fetched:
        """Send `request`, retrying what is worth retrying; every attempt goes into `attempts`."""
        retry = 0
        while True:
            if self._stop.is_set():
                raise Stopped
            delayed = self._within_budget()
            started = time.monotonic()
            try:
                fetched = self._attempt(request)
            except FetchError as exc:
                attempts.append(Attempt(time.monotonic() - started, exc.reason, delayed))
                wait = self._retry_wait(exc, retry)
                if wait is None:
                    raise
                log.debug("retrying", url=request.url, reason=exc.reason.value, wait=wait)
                if self._stop.wait(wait):
                    raise Stopped from exc
                retry += 1
            except Exception:
                # A bug of ours mid-attempt: the attempt still happened and still counts.
                attempts.append(
                    Attempt(time.monotonic() - started, ErrorReason.BAD_RESPONSE, delayed)
                )
                raise
            else:
                attempts.append(Attempt(time.monotonic() - started, delayed=delayed))
                return fetched

    def _route(self, url: str) -> tuple[urllib3.HTTPConnectionPool | urllib3.ProxyManager, str]:
        """Where to send `url`, and what to ask there: a proxy's pools with the whole URL, where
        the environment names a proxy for the URL's scheme and host (NO_PROXY applied); else
        the host's own pool with the path. Found once per host."""
        # A pool's key and the target, by splitting strings: urlsplit was 3% of a poll.
        scheme, _, rest = url.partition("://")
        netloc, slash, tail = rest.partition("/")
        key = f"{scheme}://{netloc}"
        target = f"{slash}{tail.partition('#')[0]}" if slash else "/"
        pool = self._pools.get(key)
        if pool is not None and "?" not in netloc and "#" not in netloc:
            return pool, target
        parts = urlsplit(url)
        key = f"{parts.scheme}://{parts.netloc}"
        target = f"{parts.path or '/'}?{parts.query}" if parts.query else parts.path or "/"
        pool = self._pools.get(key)
        if pool is not None:
            return pool, target
        proxies = self._proxies.get(key)
        if proxies is None:
            proxies = self._proxies[key] = get_environ_proxies(key)
        proxy = select_proxy(url, proxies) if proxies else None
        with self._lock:
            if proxy is not None:
                manager = self._proxied.get(proxy)
                if manager is None:
                    manager = self._proxied[proxy] = urllib3.ProxyManager(
                        proxy, num_pools=4, maxsize=self._pool_size
                    )
                return manager, url
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = urllib3.connection_from_url(key, maxsize=self._pool_size)
            return pool, target

    def _within_budget(self) -> bool:
        """Wait for a token of every budget (interrupted by shutdown); True if it had to."""
        wait = max((bucket.reserve() for bucket in self._budgets), default=0.0)
        if wait <= 0:
            return False
        if self._stop.wait(wait):
            raise Stopped
        return True

    def _retry_wait(self, exc: FetchError, retry: int) -> float | None:
        if not exc.retryable or retry >= self.settings.retries:
            return None
        wait = exc.retry_after
        if wait is None:
            # Full jitter: spread the retries of many jobs that failed together.
            wait = random.uniform(0.5, 1.0) * self.settings.backoff_base * 2**retry  # noqa: S311
        return min(wait, self.settings.max_retry_wait)

    def _attempt(self, request: UpstreamRequest) -> Fetched:
        settings = self.settings
        deadline = time.monotonic() + settings.timeout
        headers = dict(request.headers)
        if request.auth is not None:
            try:
                headers.update(request.auth.headers())
            except AuthUnavailable as exc:
                # Token services fail for passing reasons too (IMDS not ready): worth a retry.
                raise FetchError(ErrorReason.AUTH, str(exc), retryable=True) from None
        response = self._send(request, headers)
        try:
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            if retry_after is None:
                retry_after = rate_limit_wait(response.headers)
            reason = classify_status(response.status)
            if reason is not None:
                if reason is ErrorReason.THROTTLED and retry_after is None:
                    text = self._read(response, deadline, _ERROR_BODY_BYTES, truncate=True)
                    retry_after = wait_in_words(text.decode("utf-8", "replace"))
                raise FetchError(reason, f"HTTP {response.status}", retry_after)
            data = self._read(response, deadline, settings.max_response_bytes)
        finally:
            # As requests did: a body read whole has given its connection back already; one
            # that was not is closed, so that no leftover of it is read as the next answer.
            response.close()
            response.release_conn()
        try:
            return Fetched(json.loads(data), retry_after)
        except (ValueError, UnicodeDecodeError):
            # Masked before it is cut at ";", so no cut leaves part of a secret behind.
            kind = redactor.mask(response.headers.get("Content-Type", "no content type"))
            kind = kind.split(";")[0]
            raise FetchError(ErrorReason.BAD_RESPONSE, f"body is not JSON ({kind})") from None
        except RecursionError:
            raise FetchError(ErrorReason.BAD_RESPONSE, "body nested too deeply") from None

    def _send(self, request: UpstreamRequest, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        """Send the request; its answer's head has come. No retries here, nor redirects: a
        redirect would carry the key header to another host."""
        merged = urllib3.HTTPHeaderDict(_HEADERS)  # names are case-insensitive
        for name, value in headers.items():
            merged[name] = value
        body = None
        if request.json is not None:
            body = json.dumps(request.json, allow_nan=False).encode()
            merged.setdefault("Content-Type", "application/json")
        pool, target = self._route(request.url)
        try:
            return pool.urlopen(
                request.method, target, body=body, headers=merged,
                timeout=self._timeout, retries=_NO_RETRIES, redirect=False, preload_content=False,
            )  # fmt: skip
        except urllib3.exceptions.NewConnectionError as exc:  # a ConnectTimeoutError, oddly
            raise FetchError(ErrorReason.CONNECTION, _name(exc)) from None
        except _NO_ANSWER:
            raise FetchError(
                ErrorReason.TIMEOUT, f"no answer within {self.settings.timeout:g}s"
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # The exception text can be long and nested; its class name says what happened.
            raise FetchError(ErrorReason.CONNECTION, _name(exc)) from None

    def _read(
        self,
        response: urllib3.BaseHTTPResponse,
        deadline: float,
        cap: int,
        *,
        truncate: bool = False,
    ) -> bytes:
        """The body, up to `cap` bytes (over it: an error, or with `truncate` the first `cap`)."""
        chunks: list[bytes] = []
        size = 0
        try:
            # read1 returns what has arrived (up to _CHUNK), so the deadline is checked between
            # reads even when a server trickles its answer a byte at a time.
            while chunk := response.read1(_CHUNK, decode_content=True):
                size += len(chunk)
                chunks.append(chunk)
                if size > cap:
                    if truncate:
                        break
                    raise FetchError(ErrorReason.BAD_RESPONSE, f"body larger than {cap} bytes")
                if time.monotonic() > deadline:
                    raise FetchError(
                        ErrorReason.TIMEOUT, f"body not received within {self.settings.timeout:g}s"
                    )
        except _STALLED:
            raise FetchError(ErrorReason.TIMEOUT, "body stalled (read timed out)") from None
        except urllib3.exceptions.DecodeError:
            raise FetchError(ErrorReason.BAD_RESPONSE, "body cannot be decoded") from None
        except _BROKEN as exc:
            raise FetchError(ErrorReason.CONNECTION, f"connection broken ({_name(exc)})") from None
        return b"".join(chunks)[:cap] if truncate else b"".join(chunks)


def _name(exc: BaseException) -> str:
    return type(exc).__name__
