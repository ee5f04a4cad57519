"""OpenAI and Azure OpenAI batches: the Batch API, and Azure OpenAI's v1 route of it.

Request::

    GET {endpoint}/batches/{id}
    Authorization: Bearer ...          (auth.api_key, or an Entra ID token with auth.azure_ad)
    OpenAI-Organization: ...           (when auth.organization is set)
    OpenAI-Project: ...                (when auth.project is set)

`endpoint` is the API base: `https://api.openai.com/v1` (the default) or
`https://RESOURCE.openai.azure.com/openai/v1`; an `api_version` is sent as `?api-version=`.

A finished batch's state comes from its request counts as well as its status, because
`completed` only says the batch ended (a real answer: `completed` with 0 of 9 requests
succeeded), and `expired` says it ran out of time, with part of the work done. For both:

- every request completed (or none to do): `succeeded`;
- some completed: `partially_succeeded`;
- none completed: `failed`.

`failed` (the input did not validate) is failed and `cancelled` is cancelled, whatever the
counts; `validating` is not started; `in_progress` and `finalizing` are running.

`request_counts` become asyncjob_tasks: `completed`, `failed`, and the rest (total - completed
- failed) as `in_progress` while the batch runs, `expired` once it expired and `cancelled` once
it was cancelled; all five states are exported from the start. Progress is completed plus
failed requests over the total. `usage.input_tokens`/`output_tokens` are the `input` and
`output` tokens (only batches created after September 2025 carry `usage`). The `*_at` unix
times: `created_at` the creation, `in_progress_at` the start (null on some completed Azure
batches), `expires_at` the expiry, the latest of them the last update, and the one of the final
state (`completed_at`, `failed_at`, `expired_at`, `cancelled_at`) the finish. `errors.data` (a
failed batch's validation errors) is the errors count.

Azure's answers differ and are read all the same: file IDs `""` until the end, `endpoint` as a
path or null, `in_progress_at` null on a completed batch, and `finalizing` with 0 of 2 requests
completed for minutes.

Yields, for the completed batch of OpenAI's reference (95 of 100 completed, 5 failed)::

    asyncjob_info{...,vendor_status="completed",display_name=""} 1
    asyncjob_state{...,state="partially_succeeded"} 1
    asyncjob_progress_ratio{...,phase="overall"} 1
    asyncjob_tasks{...,state="completed"} 95
    asyncjob_tasks{...,state="failed"} 5
    asyncjob_tasks{...,state="in_progress"} 0
    asyncjob_tasks{...,state="cancelled"} 0
    asyncjob_tasks{...,state="expired"} 0
    asyncjob_tokens_total{...,kind="input"} 1500
    asyncjob_tokens_total{...,kind="output"} 500
    asyncjob_started_timestamp_seconds{...} 1.711471538e+09
    asyncjob_expiration_timestamp_seconds{...} 1.711557933e+09
    asyncjob_finished_timestamp_seconds{...} 1.711493163e+09

Discovery lists `GET {endpoint}/batches?limit=100&after=...`, newest first: each entry is a
whole batch, so the listing is the poll of every batch on it. The list has no filter by status
or date, so every listing reads back to the lookback: it pages (`after` = the last batch's ID,
as the official SDK does) while `has_more`, and stops at the first page that reaches a batch
created before the lookback.

OpenAI's webhooks (`batch.completed`, `batch.failed`, `batch.expired`, `batch.cancelled`) are
signed with the source's `webhook_secret` (Standard Webhooks); `data.id` names the batch.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from pydantic import Field, SecretStr, field_validator, model_validator

from exporter import credentials
from exporter.model import TASK_STATES, JobSnapshot, State
from exporter.providers.base import (
    AzureAd,
    Listed,
    ListQuery,
    ListRequest,
    Located,
    Page,
    ParseError,
    Provider,
    SourceBase,
    StrictModel,
    UpstreamRequest,
    Webhook,
    count,
    finish_time,
    finished_progress,
    listed,
    map_status,
    obj,
    opt_obj,
    path,
    ratio,
    route,
    text,
)
from exporter.values import FileSecret, HttpUrl, is_path_safe_id
from exporter.webhooks import secret_problem

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from exporter.upstream import Authenticator

DEFAULT_ENDPOINT = "https://api.openai.com/v1"
PAGE_SIZE = 100  # the most a list page holds
STATUSES = {
    "validating": State.NOT_STARTED,
    "in_progress": State.RUNNING,
    "finalizing": State.RUNNING,
    "cancelling": State.CANCELLING,
    "cancelled": State.CANCELLED,
    "failed": State.FAILED,
}
BY_COUNTS = frozenset({"completed", "expired"})  # the state is the counts' (see by_counts)
# Where the requests neither completed nor failed are: still to do, expired or cancelled; an
# ended batch has none left.
LEFT = {"expired": "expired", "cancelled": "cancelled", "completed": None, "failed": None}
FINISH_KEYS = ("completed_at", "failed_at", "expired_at", "cancelled_at")
TIME_KEYS = ("created_at", "in_progress_at", "finalizing_at", "cancelling_at", *FINISH_KEYS)
_HEADER_VALUE = r"^[A-Za-z0-9_.:-]{1,128}$"
MAX_UNIX_TIME = 253402300799  # 9999-12-31T23:59:59Z: past it, a datetime cannot hold it


class OpenAIAuth(StrictModel):
    """An API key (Authorization: Bearer), which OpenAI and Azure OpenAI's v1 route both take,
    or an Entra ID token for Azure OpenAI; the organization and project OpenAI bills to."""

    api_key: SecretStr | None = None
    api_key_file: FileSecret | None = None
    azure_ad: AzureAd | None = None
    organization: str | None = Field(default=None, pattern=_HEADER_VALUE)
    project: str | None = Field(default=None, pattern=_HEADER_VALUE)

    @field_validator("azure_ad")
    @classmethod
    def _extra_installed(cls, value: AzureAd | None) -> AzureAd | None:
        if value is not None and not credentials.available():
            raise ValueError(
                "azure_ad needs azure-identity: pip install 'asyncjob-exporter[azure]'"
            )
        return value

    @model_validator(mode="after")
    def _one_key(self) -> OpenAIAuth:
        given = [k for k in ("api_key", "api_key_file", "azure_ad") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of api_key, api_key_file or azure_ad")
        return self

    def headers(self) -> dict[str, str]:
        """The headers known without I/O: the key, the organization, the project."""
        headers = {}
        key = self.api_key or self.api_key_file
        if key is not None:
            headers["Authorization"] = f"Bearer {key.get_secret_value()}"
        if self.organization:
            headers["OpenAI-Organization"] = self.organization
        if self.project:
            headers["OpenAI-Project"] = self.project
        return headers

    def token(self) -> Authenticator | None:
        """The Entra ID token source the HTTP layer asks on each attempt; None with a key."""
        return None if self.azure_ad is None else credentials.EntraToken(self.azure_ad.client_id)


class Source(SourceBase):
    """An OpenAI or Azure OpenAI API base; the fine-tuning provider's sources are the same."""

    endpoint: HttpUrl = DEFAULT_ENDPOINT
    auth: OpenAIAuth
    # `webhook_secret` in the config: the attribute is named apart from SourceBase's method.
    signing_secret: SecretStr | None = Field(default=None, alias="webhook_secret")
    signing_secret_file: FileSecret | None = Field(default=None, alias="webhook_secret_file")

    def problems(self) -> list[tuple[str, str]]:
        if self.signing_secret is not None and self.signing_secret_file is not None:
            return [("webhook_secret_file", "set webhook_secret or webhook_secret_file, not both")]
        secret = self.webhook_secret()
        problem = None if secret is None else secret_problem(secret)
        if secret is not None and not secret.startswith("whsec_"):  # OpenAI's always do
            problem = problem or "expected a Standard Webhooks secret: whsec_ and base64"
        if problem is not None:
            key = "webhook_secret" if self.signing_secret is not None else "webhook_secret_file"
            return [(key, problem)]
        return []

    def webhook_secret(self) -> str | None:
        secret = self.signing_secret or self.signing_secret_file
        return None if secret is None else secret.get_secret_value()

    def url(self, *segments: str, **query: str | int) -> str:
        """The URL of a resource below the API base, in the source's API version if it has one."""
        if self.api_version:
            query = {**query, "api-version": self.api_version}
        return f"{self.endpoint}/{path(*segments)}" + (f"?{urlencode(query)}" if query else "")

    def get(self, url: str) -> UpstreamRequest:
        """A GET to this source's API, authenticated as its `auth` says."""
        return UpstreamRequest("GET", url, self.auth.headers(), auth=self.auth.token())


# -- reading an answer: shared with the fine-tuning provider ----------------------------------


def unix_time(payload: Mapping[str, Any], key: str) -> datetime | None:
    """A unix time in seconds as an aware UTC datetime; None when absent, null or 0 (unset)."""
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ParseError(f"{key}: expected unix seconds, got {type(value).__name__}")
    if not 0 <= value <= MAX_UNIX_TIME:
        raise ParseError(f"{key}: {value} is not a unix time")
    return None if value == 0 else datetime.fromtimestamp(value, UTC)


def error_message(payload: Mapping[str, Any]) -> str:
    """What an error object says (`message`, else `code`); "" for none, `{}` or all nulls."""
    error = opt_obj(payload, "error")
    return "" if error is None else text(error, "message", "code")


# -- a batch ----------------------------------------------------------------------------------


def by_counts(status: str, completed: int, total: int) -> State:
    """The state of a batch that ended by itself: by how many of its requests completed. A
    completed batch with nothing to do succeeded; an expired one did nothing."""
    if completed >= total and (total or status == "completed"):
        return State.SUCCEEDED
    return State.PARTIALLY_SUCCEEDED if completed else State.FAILED


def parse(payload: Any, polled_at: datetime) -> JobSnapshot:  # noqa: ARG001 - same signature for all
    batch = obj(payload, "batch")
    vendor_status = text(batch, "status", required=True)
    status = vendor_status.casefold()
    counts = opt_obj(batch, "request_counts") or {}
    completed, failed = count(counts, "completed") or 0, count(counts, "failed") or 0
    total = max(count(counts, "total") or 0, completed + failed)
    state = (
        by_counts(status, completed, total) if status in BY_COUNTS else map_status(status, STATUSES)
    )
    tasks = dict.fromkeys(TASK_STATES, 0) | {"completed": completed, "failed": failed}
    left = LEFT.get(status, "in_progress")
    if left is not None:
        tasks[left] = total - completed - failed
    times = {key: unix_time(batch, key) for key in TIME_KEYS}
    created = times["created_at"]
    usage = opt_obj(batch, "usage")
    tokens: dict[str, int] = {}
    if usage is not None:
        tokens = {
            kind: number
            for kind, key in (("input", "input_tokens"), ("output", "output_tokens"))
            if (number := count(usage, key, default=None)) is not None
        }
    errors = opt_obj(batch, "errors")
    error_list = None if errors is None else errors.get("data")
    return JobSnapshot(
        state=state,
        vendor_status=vendor_status,
        progress={"overall": finished_progress(state, ratio(completed + failed, total))},
        tasks=tasks,
        errors=len(error_list) if isinstance(error_list, list) else 0,
        created=created,
        last_update=max((t for t in times.values() if t is not None), default=None),
        started=times["in_progress_at"],
        expiration=unix_time(batch, "expires_at"),
        finished=finish_time(state, created, *(times[key] for key in FINISH_KEYS)),
        tokens=tokens,
    )


# -- listing, locating, webhooks ----------------------------------------------------------------


def cursor_listing(
    source: Source,
    segments: tuple[str, ...],
    since: datetime,
    entry: Callable[[Mapping[str, Any], datetime], Listed | None],
    after: str | None = None,
) -> ListRequest:
    """One page of a newest-first list of `segments` (`limit`, `after`); its reading names the
    entries created since `since` and asks for the next page while the list goes on and has
    not yet reached `since`."""
    query: dict[str, str | int] = {"limit": PAGE_SIZE}
    if after is not None:
        query["after"] = after
    read = partial(_read_page, source, segments, since, entry)
    return ListRequest(source.get(source.url(*segments, **query)), read)


def _read_page(
    source: Source,
    segments: tuple[str, ...],
    since: datetime,
    entry: Callable[[Mapping[str, Any], datetime], Listed | None],
    payload: Any,
    at: datetime,
) -> Page:
    page = obj(payload, "list")
    data = page.get("data")
    if not isinstance(data, list):
        raise ParseError(f"data: expected a list, got {type(data).__name__}")
    entries = [item for item in data if isinstance(item, dict)]
    found, reached = [], False
    for item in entries:
        try:
            created = unix_time(item, "created_at")
        except ParseError:
            created = None  # listed all the same: its own poll says what is wrong
        if created is not None and created < since:
            reached = True  # newest first: the rest of the list is older still
            continue
        job = entry(item, at)
        if job is not None:
            found.append(job)
    follow: tuple[ListRequest, ...] = ()
    if entries and page.get("has_more") is not False and not reached:
        # The SDK pages with the last item's ID (Azure's `last_id` can name another batch).
        last = entries[-1].get("id")
        after = last if isinstance(last, str) else page.get("last_id")
        if isinstance(after, str) and is_path_safe_id(after):
            follow = (cursor_listing(source, segments, since, entry, after),)
    return Page(tuple(found), follow)


def _listed(item: Mapping[str, Any], at: datetime) -> Listed | None:
    return listed(item, parse, at, ("id",))


def lister(source: Source, query: ListQuery) -> tuple[ListRequest, ...]:
    return (cursor_listing(source, ("batches",), query.since, _listed),)


def request(source: Source, job_id: str, _project: str | None = None, /) -> UpstreamRequest:
    return source.get(source.url("batches", job_id))


ROUTE = re.compile(r"/batches/(?P<job_id>[^/]+)")


def locate(source: Source, url: str) -> Located | None:
    found = route(source, url, ROUTE)
    return None if found is None else Located(found["job_id"])


def event_job_id(payload: Any, prefix: str) -> str | None:
    """`data.id` of an OpenAI webhook event whose `type` starts with `prefix`; None otherwise
    (another product's event names no job of this provider)."""
    if not isinstance(payload, dict):
        return None
    kind, data = payload.get("type"), payload.get("data")
    if not isinstance(kind, str) or not kind.startswith(prefix) or not isinstance(data, dict):
        return None
    job_id = data.get("id")
    return job_id if isinstance(job_id, str) else None


def webhook_job_id(payload: Any) -> str | None:
    return event_job_id(payload, "batch.")


PROVIDER = Provider(
    "openai_batch",
    Source,
    request,
    parse,
    locate,
    Webhook("openai", webhook_job_id, signed=True),
    lister=lister,
)
