"""The one place upstream HTTP happens: authentication, timeouts, retries, Retry-After, a size cap.

`HttpClient.fetch_json` sends one `UpstreamRequest` and returns a `Fetched` (the decoded JSON
and any Retry-After the upstream sent with it) or raises `FetchError` with the reason Prometheus
will count. Every attempt, whatever became of it, is appended to the caller's `attempts`: the
HTTP layer reports what happened and counts nothing itself.

- Authentication happens here, per attempt: a request's `auth` (an Entra ID token source) may do
  network I/O, so it runs off the event loop, and is retried and counted like the request itself.
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
  hold a poll for ever.

The client is aiohttp's, on the poller's event loop (exporter/poller.py): a poll waiting for its
answer costs no thread, so many polls in flight cost no switching between threads. Blocking
workers on urllib3 (`max_concurrency` to a source) spent about as much CPU handing the GIL to
one another as on the polls themselves. What the exporter relies on is set here: the proxies
the environment names (HTTPS_PROXY, NO_PROXY, read once per host as requests reads them, and no
~/.netrc); a URL sent as the provider or the server wrote it (requests' requoting: escapes
kept, a bare space escaped; yarl would unescape `%2F` in a query); no cookies; no redirects; no
retries but ours (aiohttp's resend of an idempotent request is off); and aiohttp's bounded
decompression.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Self

import aiohttp
import structlog
from aiohttp.http_exceptions import ContentEncodingError
from multidict import CIMultiDict
from requests.utils import get_environ_proxies, requote_uri, select_proxy
from yarl import URL

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
_ERROR_BODY_BYTES = 16 * 1024  # of a 429's body, read for a wait named in words
USER_AGENT = f"asyncjob-exporter/{__version__}"
_WAIT_IN_WORDS = re.compile(
    r"retry\W{0,3}after\D{0,20}?(\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|secs?|seconds?|minutes?)?\b",
    re.IGNORECASE,
)
# Accept-Encoding is aiohttp's own: what it can decode.
_HEADERS = {"User-Agent": USER_AGENT, "Accept": "application/json"}


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
    """One per source, used on one event loop (`async with HttpClient(...) as client`), with a
    pool of kept-alive connections as large as the caller's requests in flight (the poller's
    lanes bound them; a cap here would make a request wait for a connection, against its
    timeout). Every attempt first takes a token from each of `budgets` (the source's and the
    global request budget), waiting when there is none. Shutdown cancels whatever awaits here:
    a backoff, a budget's wait, a request."""

    def __init__(self, settings: HttpSettings, budgets: Sequence[TokenBucket] = ()) -> None:
        self.settings = settings
        self._budgets = tuple(budgets)
        self._session: aiohttp.ClientSession | None = None
        # The proxy by scheme://host (a source talks to one or two hosts): the environment
        # (HTTPS_PROXY, NO_PROXY) is read once per host, as requests reads it.
        self._proxies: dict[str, str | None] = {}

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            # Idle connections are kept a minute (aiohttp's default is 15 s): a job polled
            # every 30 s reuses its connection, and most servers keep theirs open longer.
            connector=aiohttp.TCPConnector(limit=0, use_dns_cache=False, keepalive_timeout=60),
            headers=_HEADERS,
            # One deadline for the whole exchange, body included, so that a server that
            # trickles bytes cannot hold a poll for ever.
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
            cookie_jar=aiohttp.DummyCookieJar(),  # each poll stands alone
            trust_env=False,  # proxies are read below; no ~/.netrc credentials
        )
        # No request sent twice behind our back: aiohttp resends an idempotent request once
        # when the connection drops before the answer. Every request is budgeted and counted
        # here, so it is retried here.
        self._session._retry_connection = False  # noqa: SLF001 - in ClientSession.ATTRS, no flag
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch_json(self, request: UpstreamRequest, attempts: list[Attempt]) -> Fetched:
        """Send `request`, retrying what is worth retrying; every attempt goes into `attempts`."""
        retry = 0
        while True:
            delayed = await self._within_budget()
            started = time.monotonic()
            try:
                fetched = await self._attempt(request)
            except FetchError as exc:
                attempts.append(Attempt(time.monotonic() - started, exc.reason, delayed))
                wait = self._retry_wait(exc, retry)
                if wait is None:
                    raise
                log.debug("retrying", url=request.url, reason=exc.reason.value, wait=wait)
                await asyncio.sleep(wait)
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

    def _proxy(self, url: str) -> str | None:
        """The proxy the environment names for `url`'s scheme and host (NO_PROXY applied)."""
        scheme, _, rest = url.partition("://")
        key = f"{scheme}://{rest.partition('/')[0]}"
        try:
            return self._proxies[key]
        except KeyError:
            proxies = get_environ_proxies(key)
            proxy = self._proxies[key] = select_proxy(url, proxies) if proxies else None
            return proxy

    async def _within_budget(self) -> bool:
        """Wait for a token of every budget; True if it had to."""
        wait = max((bucket.reserve() for bucket in self._budgets), default=0.0)
        if wait <= 0:
            return False
        await asyncio.sleep(wait)
        return True

    def _retry_wait(self, exc: FetchError, retry: int) -> float | None:
        if not exc.retryable or retry >= self.settings.retries:
            return None
        wait = exc.retry_after
        if wait is None:
            # Full jitter: spread the retries of many jobs that failed together.
            wait = random.uniform(0.5, 1.0) * self.settings.backoff_base * 2**retry  # noqa: S311
        return min(wait, self.settings.max_retry_wait)

    async def _attempt(self, request: UpstreamRequest) -> Fetched:
        settings = self.settings
        headers = request.headers
        if request.auth is not None:
            try:
                # A token at hand costs nothing; getting one blocks, so not on the loop.
                extra = request.auth.at_hand()
                if extra is None:
                    extra = await asyncio.to_thread(request.auth.headers)
                headers = {**headers, **extra}
            except AuthUnavailable as exc:
                # Token services fail for passing reasons too (IMDS not ready): worth a retry.
                raise FetchError(ErrorReason.AUTH, str(exc), retryable=True) from None
        response = await self._send(request, headers)
        whole = False
        try:
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            if retry_after is None:
                retry_after = rate_limit_wait(response.headers)
            reason = classify_status(response.status)
            if reason is not None:
                if reason is ErrorReason.THROTTLED and retry_after is None:
                    text = await self._read(response, _ERROR_BODY_BYTES, truncate=True)
                    retry_after = wait_in_words(text.decode("utf-8", "replace"))
                raise FetchError(reason, f"HTTP {response.status}", retry_after)
            data = await self._read(response, settings.max_response_bytes)
            whole = True
        finally:
            # A body read whole has given its connection back already; one that was not is
            # closed, so that no leftover of it is read as the next answer.
            if not whole:
                response.close()
            response.release()
        try:
            return Fetched(json.loads(data), retry_after)
        except (ValueError, UnicodeDecodeError):
            # Masked before it is cut at ";", so no cut leaves part of a secret behind.
            kind = redactor.mask(response.headers.get("Content-Type", "no content type"))
            kind = kind.split(";")[0]
            raise FetchError(ErrorReason.BAD_RESPONSE, f"body is not JSON ({kind})") from None
        except RecursionError:
            raise FetchError(ErrorReason.BAD_RESPONSE, "body nested too deeply") from None

    async def _send(
        self, request: UpstreamRequest, headers: Mapping[str, str]
    ) -> aiohttp.ClientResponse:
        """Send the request; its answer's head has come. No retries here, nor redirects: a
        redirect would carry the key header to another host."""
        assert self._session is not None, "HttpClient used outside `async with`"
        body = None
        if request.json is not None:
            body = json.dumps(request.json, allow_nan=False).encode()
            headers = CIMultiDict(headers)  # names are case-insensitive
            headers.setdefault("Content-Type", "application/json")
        try:
            return await self._session.request(
                request.method, URL(requote_uri(request.url), encoded=True), headers=headers,
                data=body, allow_redirects=False, proxy=self._proxy(request.url),
            )  # fmt: skip
        except TimeoutError:
            raise FetchError(
                ErrorReason.TIMEOUT, f"no answer within {self.settings.timeout:g}s"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            # The exception text can be long and nested; its class name says what happened.
            raise FetchError(ErrorReason.CONNECTION, _name(exc)) from None

    async def _read(
        self, response: aiohttp.ClientResponse, cap: int, *, truncate: bool = False
    ) -> bytes:
        """The body, up to `cap` bytes (over it: an error, or with `truncate` the first `cap`)."""
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.content.iter_any():
                size += len(chunk)
                chunks.append(chunk)
                if size > cap:
                    if truncate:
                        break
                    raise FetchError(ErrorReason.BAD_RESPONSE, f"body larger than {cap} bytes")
        except TimeoutError:
            raise FetchError(
                ErrorReason.TIMEOUT, f"body not received within {self.settings.timeout:g}s"
            ) from None
        except aiohttp.ClientPayloadError as exc:
            if isinstance(exc.__cause__, ContentEncodingError):
                raise FetchError(ErrorReason.BAD_RESPONSE, "body cannot be decoded") from None
            raise FetchError(ErrorReason.CONNECTION, f"connection broken ({_name(exc)})") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise FetchError(ErrorReason.CONNECTION, f"connection broken ({_name(exc)})") from None
        return b"".join(chunks)[:cap] if truncate else b"".join(chunks)


def _name(exc: BaseException) -> str:
    return type(exc).__name__
