"""What every provider module is made of: its source config model, its request, its parser.

A provider is a `Provider` record of four things. `source_model` is a pydantic model for one
`sources[]` entry (unknown keys forbidden). `request(source, job_id, project)` returns the one
HTTP request that fetches a job's status (`project` where the API has projects; the source's own
otherwise). `parse(payload, polled_at)` turns the decoded JSON into a `JobSnapshot` or raises
`ParseError`. `locate(source, url)` reads a job's ID and project from a status URL (the
`Operation-Location` header the API answered when the job started), or None if the URL is not
one of this source's. Parsers are pure: no I/O, no clock but the one they are given, so they are
tested by feeding them recorded payloads.

A provider whose API lists its jobs also has a `lister`: given a source and a `ListQuery` it
returns the first `ListRequest`s of a listing. Each names its request and how to read the answer
into a `Page`: the jobs it lists (with their status where the listing carries it) and the
requests that follow (the next page; a project's jobs). The poller walks them; the provider only
says what to ask and how to read it.

A provider whose status answer does not say everything may ask once more in the same poll: its
`follow_up(source, job_id, project, snapshot)` returns a `FollowUp` (a request, and how its
answer completes the snapshot) or None. A poll is then two requests, or one when the snapshot
needs nothing more (only while a job runs, say); it fails whole if either fails. A listing's
snapshot has no follow-up: a job that needs one is listed without its status while it does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar
from urllib.parse import quote, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from exporter import credentials
from exporter.logging import quoted
from exporter.model import ErrorReason, State

# Re-exported, in the form mypy --strict takes as one: provider modules import it from here.
from exporter.upstream import UpstreamRequest as UpstreamRequest  # noqa: PLC0414
from exporter.values import (
    Duration,
    FileSecret,
    HttpUrl,
    PathSafeId,
    SourceName,
    is_path_safe_id,
)

if TYPE_CHECKING:
    import re
    from collections.abc import Mapping

    from exporter.model import JobSnapshot
    from exporter.upstream import Authenticator

MAX_COUNT = 2**63 - 1


class StrictModel(BaseModel):
    """Frozen, and unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _exactly_one(model: BaseModel, *names: str) -> None:
    given = [name for name in names if getattr(model, name) is not None]
    if len(given) != 1:
        raise ValueError(f"set exactly one of {', '.join(names[:-1])} or {names[-1]}")


class AzureAd(StrictModel):
    """Microsoft Entra ID through azure-identity's DefaultAzureCredential."""

    client_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9-]{1,64}$")


class AzureKeyAuth(StrictModel):
    """A resource key (Ocp-Apim-Subscription-Key) or an Entra ID token (Authorization: Bearer)."""

    subscription_key: SecretStr | None = None
    subscription_key_file: FileSecret | None = None
    azure_ad: AzureAd | None = None
    region: str | None = Field(default=None, pattern=r"^[a-z0-9]{1,40}$")

    @field_validator("azure_ad")
    @classmethod
    def _extra_installed(cls, value: AzureAd | None) -> AzureAd | None:
        if value is not None and not credentials.available():
            raise ValueError(
                "azure_ad needs azure-identity: pip install 'asyncjob-exporter[azure]'"
            )
        return value

    @model_validator(mode="after")
    def _one_key(self) -> AzureKeyAuth:
        _exactly_one(self, "subscription_key", "subscription_key_file", "azure_ad")
        return self

    def headers(self) -> dict[str, str]:
        """The headers known without I/O: the key, the region. A token comes from `token()`."""
        headers = {}
        key = self.subscription_key or self.subscription_key_file
        if key is not None:
            headers["Ocp-Apim-Subscription-Key"] = key.get_secret_value()
        if self.region:
            headers["Ocp-Apim-Subscription-Region"] = self.region
        return headers

    def token(self) -> Authenticator | None:
        """The Entra ID token source the HTTP layer asks on each attempt; None with a key."""
        return None if self.azure_ad is None else credentials.EntraToken(self.azure_ad.client_id)


class ApiKeyAuth(StrictModel):
    """A plain API key; where it goes is the provider's to say (the Stable Diffusion API's in the
    request body, Anthropic's in the `x-api-key` header)."""

    api_key: SecretStr | None = None
    api_key_file: FileSecret | None = None

    @model_validator(mode="after")
    def _one_key(self) -> ApiKeyAuth:
        _exactly_one(self, "api_key", "api_key_file")
        return self

    def secret(self) -> str:
        key = self.api_key or self.api_key_file
        assert key is not None  # guaranteed by _one_key
        return key.get_secret_value()


class Retention(StrictModel):
    """How long a finished job that the config does not list stays exported after it finished:
    `succeeded`, and `unsuccessful` (failed, partially succeeded, cancelled: kept longer)."""

    succeeded: Duration = 24 * 3600.0
    unsuccessful: Duration = 7 * 24 * 3600.0


class RetentionOverride(StrictModel):
    """A source's own retention; what it leaves out comes from `global.retention`."""

    succeeded: Duration | None = None
    unsuccessful: Duration | None = None


class Discovery(StrictModel):
    """Find the source's jobs from its API's list endpoint: every `interval` (default: the
    source's poll interval), the jobs created within `lookback`."""

    interval: Duration | None = None
    lookback: Duration = 24 * 3600.0


class SourceBase(StrictModel):
    """The keys every source has; provider modules subclass it with their own."""

    name: SourceName
    provider: str
    endpoint: HttpUrl
    api_version: str | None = Field(default=None, pattern=r"^[A-Za-z0-9.-]{1,40}$")
    poll_interval: Duration | None = None
    job_ids: list[PathSafeId] = Field(default_factory=list)
    max_jobs: int = Field(default=10_000, ge=1)
    retention: RetentionOverride | None = None
    max_requests_per_minute: float | None = Field(default=None, gt=0)  # this source's budget
    discovery: Discovery | None = None

    def problems(self) -> list[tuple[str, str]]:
        """(key, message) of what is wrong across this source's keys; [] when nothing is."""
        return []

    def webhook_secret(self) -> str | None:
        """The token a webhook call must carry for this source; None: no webhook."""
        return None


class AzureSource(SourceBase):
    auth: AzureKeyAuth

    def get(self, url: str) -> UpstreamRequest:
        """A GET to this source's resource, authenticated as its `auth` says."""
        return UpstreamRequest("GET", url, self.auth.headers(), auth=self.auth.token())


S = TypeVar("S", bound=SourceBase)
S_contra = TypeVar("S_contra", bound=SourceBase, contravariant=True)


class RequestBuilder(Protocol[S_contra]):
    def __call__(
        self, source: S_contra, job_id: str, project: str | None = None, /
    ) -> UpstreamRequest: ...


@dataclass(frozen=True, slots=True)
class Located:
    """A job named by a status URL."""

    job_id: str
    project: str | None = None


@dataclass(frozen=True, slots=True)
class Webhook:
    """A provider that calls back: its path under /api/v1/webhooks/, and how to read the job's
    ID from what it posts (a hint only: the job is polled for its state). `signed`: the call
    proves itself with a Standard Webhooks signature made with the source's `webhook_secret()`
    rather than with it as a token (see exporter/webhooks.py)."""

    slug: str
    job_id: Callable[[Any], str | None]
    signed: bool = False


@dataclass(frozen=True, slots=True)
class ListQuery:
    """What one listing asks for: unfinished jobs created since `since` (now - lookback), and
    jobs in any state created since `any_state_since` (the previous listing, so that a job
    that started and finished between two listings is seen too; `since` on the first)."""

    since: datetime
    any_state_since: datetime

    @property
    def any_state(self) -> bool:
        """Whether the whole window is wanted whatever the state (the first listing)."""
        return self.any_state_since <= self.since


@dataclass(frozen=True, slots=True)
class Listed:
    """One job a listing named: with its status when the listing carries it (then the listing
    is its poll), else with none (it must be polled alone to be known)."""

    job_id: str
    project: str | None = None
    snapshot: JobSnapshot | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """What one listing request answered: jobs, and the requests that follow from it."""

    listed: tuple[Listed, ...] = ()
    follow: tuple[ListRequest, ...] = ()


@dataclass(frozen=True, slots=True)
class ListRequest:
    """One request of a listing and how to read its answer (ParseError if unreadable)."""

    request: UpstreamRequest
    read: Callable[[Any, datetime], Page]  # (decoded answer, when it was fetched)


Lister = Callable[[S, ListQuery], tuple[ListRequest, ...]]


@dataclass(frozen=True, slots=True)
class FollowUp:
    """A second request of a poll, and how its answer completes the status answer's snapshot
    (ParseError if unreadable): (decoded answer, that snapshot, when it was fetched)."""

    request: UpstreamRequest
    read: Callable[[Any, JobSnapshot, datetime], JobSnapshot]


FollowUpBuilder = Callable[[S, str, "str | None", "JobSnapshot"], FollowUp | None]


@dataclass(frozen=True, slots=True)
class Provider(Generic[S]):
    name: str
    source_model: type[S]
    request: RequestBuilder[S]
    parse: Callable[[Any, datetime], JobSnapshot]
    locate: Callable[[S, str], Located | None]
    webhook: Webhook | None = None
    lister: Lister[S] | None = None
    names_only: bool = False  # the listing names jobs only: no status, no dates (all, ever)
    follow_up: FollowUpBuilder[S] | None = None  # a second request in a poll, where needed


class ParseError(Exception):
    """The upstream answered, but not with a job status we can read (or with an error in a 200).

    `retry_after` is a wait the answer itself names (a throttling error's `retry_after`)."""

    def __init__(
        self,
        message: str,
        reason: ErrorReason = ErrorReason.BAD_RESPONSE,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


def route(source: SourceBase, url: str, pattern: re.Pattern[str]) -> dict[str, str] | None:
    """The named groups of `pattern` matched against `url`'s path below the source's endpoint;
    None if the URL is on another host or path, or names an ID that is not path-safe."""
    base, target = urlsplit(source.endpoint), urlsplit(url)
    same_place = (target.scheme, target.netloc.lower()) == (base.scheme, base.netloc.lower())
    prefix = base.path.rstrip("/")
    if not same_place or not target.path.startswith(prefix + "/"):
        return None
    match = pattern.fullmatch(target.path[len(prefix) :])
    if match is None:
        return None
    groups = {key: unquote(value) for key, value in match.groupdict().items() if value}
    ids = [groups[key] for key in ("job_id", "project") if key in groups]
    return groups if all(is_path_safe_id(value) for value in ids) else None


def next_link(source: SourceBase, page: Mapping[str, Any]) -> str | None:
    """The next page's URL (`nextLink`, or `@nextLink` in older APIs), on the source's own
    scheme and host whatever host the link names: credentials go nowhere else."""
    link = text(page, "nextLink", "@nextLink")
    if not link:
        return None
    target, base = urlsplit(link), urlsplit(source.endpoint)
    rest = target.path + (f"?{target.query}" if target.query else "")
    if not target.netloc:  # a relative link
        return f"{base.scheme}://{base.netloc}/{rest.lstrip('/')}"
    return f"{base.scheme}://{base.netloc}{rest}"


def items(page: Mapping[str, Any], where: str) -> list[Mapping[str, Any]]:
    """The objects of a list answer's `value`; entries that are not objects are skipped."""
    value = page.get("value")
    if value is None:
        return []
    if not isinstance(value, list):
        raise ParseError(f"{where}: expected a list in value, got {type(value).__name__}")
    return [entry for entry in value if isinstance(entry, dict)]


def listed(
    entry: Mapping[str, Any],
    parse: Callable[[Any, datetime], JobSnapshot],
    at: datetime,
    id_keys: tuple[str, ...],
    project: str | None = None,
) -> Listed | None:
    """One list entry as a Listed job with its status; an entry whose status cannot be read is
    listed without one (then it is polled alone, and that poll says what is wrong); one
    without a usable ID is skipped."""
    job_id = entry.get(next((k for k in id_keys if k in entry), id_keys[0]))
    if not isinstance(job_id, str) or not is_path_safe_id(job_id):
        return None
    try:
        return Listed(job_id, project, parse(entry, at))
    except (ParseError, ValueError):
        return Listed(job_id, project)


def utc_param(when: datetime) -> str:
    """A date-time as a query parameter: ISO 8601 in UTC, to the second."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def path(*segments: str) -> str:
    """Join URL path segments, each percent-encoded so none can add a segment or a query."""
    return "/".join(quote(s, safe="") for s in segments)


# -- reading payloads -------------------------------------------------------------------------


def obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ParseError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def opt_obj(payload: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = payload.get(key)
    return None if value is None else obj(value, key)


def _first_string(
    payload: Mapping[str, Any], keys: tuple[str, ...], what: str
) -> tuple[str, str] | None:
    """(key, value) of the first of `keys` present; its value must be a string."""
    for key in keys:
        value = payload.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ParseError(f"{key}: expected {what}, got {type(value).__name__}")
        return key, value
    return None


def text(payload: Mapping[str, Any], *keys: str, required: bool = False) -> str:
    """The first of `keys` present, whole (labels are cut in JobSnapshot); "" when absent."""
    found = _first_string(payload, keys, "a string")
    if found is None:
        if required:
            raise ParseError(f"missing {' or '.join(keys)}")
        return ""
    return found[1]


def count(payload: Mapping[str, Any], key: str, *, default: int | None = 0) -> int | None:
    """A non-negative integer count; a float with no fraction is accepted."""
    value = payload.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ParseError(f"{key}: expected a number, got {type(value).__name__}")
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise ParseError(f"{key}: expected a whole number, got {value!r}")
    number = int(value)
    if not 0 <= number <= MAX_COUNT:
        raise ParseError(f"{key}: {number} is outside 0..2^63-1")
    return number


def percent(payload: Mapping[str, Any], key: str) -> float:
    """A 0..100 percentage as a 0..1 ratio."""
    value = payload.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ParseError(f"{key}: expected a number, got {quoted(value, 40)}")
    if not 0 <= value <= 100:
        raise ParseError(f"{key}: {value} is outside 0..100")
    return float(value) / 100


def timestamp(payload: Mapping[str, Any], *keys: str) -> datetime | None:
    """The first of `keys` present as an aware UTC datetime (naive means UTC)."""
    found = _first_string(payload, keys, "a date-time string")
    return None if found is None else parse_time(found[1], found[0])


def parse_time(value: str, where: str) -> datetime:
    # Azure sends up to 7 fractional digits; Python keeps 6, which is all a float holds anyway.
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ParseError(f"{where}: {quoted(value, 40)} is not an ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def finish_time(state: State, created: datetime | None, *times: datetime | None) -> datetime | None:
    """When a job in `state` finished: the latest of `times`, for a terminal state only. An
    unfinished job has none, whatever end time its answer carries; and a time before the job was
    created, or before 1970, is a placeholder (.NET fills an unset time with 0001-01-01), not a
    finish. None when no time is left."""
    if not state.terminal:
        return None
    real = (t for t in times if t is not None and t > EPOCH and (created is None or t >= created))
    return max(real, default=None)


def ratio(done: int, total: int) -> float:
    """done/total in 0..1; an API that reports more done than total is clamped, not trusted."""
    if total <= 0:
        return 0.0
    return min(done / total, 1.0)


def map_status(raw: str, table: Mapping[str, State]) -> State:
    """Map a vendor status case-insensitively; anything unrecognised is UNKNOWN, never a crash."""
    return table.get(raw.casefold(), State.UNKNOWN)


def error_count(payload: Mapping[str, Any], key: str) -> int:
    """The length of an errors/warnings list; absent means none."""
    value = payload.get(key)
    if value is None:
        return 0
    if not isinstance(value, list):
        raise ParseError(f"{key}: expected a list, got {type(value).__name__}")
    return len(value)


def finished_progress(state: State, overall: float) -> float:
    """A succeeded job is complete whatever its counters say."""
    return 1.0 if state is State.SUCCEEDED else overall
