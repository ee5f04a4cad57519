"""Azure AI Translator document translation batches.

Request::

    GET {endpoint}/translator/document/batches/{id}?api-version=2024-05-01
    Ocp-Apim-Subscription-Key: ...
    Ocp-Apim-Subscription-Region: ...          (when auth.region is set)

An `api_version` starting `v1.` uses the older route
`{endpoint}/translator/text/batch/{api_version}/batches/{id}`.

Discovery lists `GET {endpoint}/translator/document/batches` (v1.x: `.../batches` under its
route) with `createdDateTimeUtcStart` and `statuses`, 100 a page (`maxpagesize`, `$maxpagesize`
in v1.x), following `nextLink` (`@nextLink` in v1.x). Each entry is a whole batch status, so the
listing is the poll of every batch on it. After the first listing only unfinished batches are
listed over the lookback, plus batches in any state created since the listing before.

Yields, for a finished batch with one failed document::

    asyncjob_info{...,vendor_status="Succeeded",display_name=""} 1
    asyncjob_state{...,state="succeeded"} 1
    asyncjob_progress_ratio{...,phase="overall"} 1
    asyncjob_documents{...,state="succeeded"} 9
    asyncjob_documents{...,state="failed"} 1
    asyncjob_documents{...,state="in_progress"} 0
    asyncjob_documents{...,state="not_started"} 0
    asyncjob_documents{...,state="cancelled"} 0
    asyncjob_translation_characters_charged_total{...} 1000
    asyncjob_errors{...} 0
    asyncjob_finished_timestamp_seconds{...} 1.5851844e+09

`lastActionDateTimeUtc` of a finished batch is when it finished. Each poll's increase of
`summary.totalCharacterCharged` also adds to the source's asyncjob_characters_charged_total.
"""

from __future__ import annotations

import re
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from exporter.model import JobSnapshot, State
from exporter.providers.base import (
    AzureSource,
    ListQuery,
    ListRequest,
    Located,
    Page,
    Provider,
    UpstreamRequest,
    count,
    finish_time,
    finished_progress,
    items,
    listed,
    map_status,
    next_link,
    obj,
    path,
    ratio,
    route,
    text,
    timestamp,
    utc_param,
)

if TYPE_CHECKING:
    from datetime import datetime

DEFAULT_API_VERSION = "2024-05-01"
STATUSES = {
    "notstarted": State.NOT_STARTED,
    "running": State.RUNNING,
    "succeeded": State.SUCCEEDED,
    "failed": State.FAILED,
    "validationfailed": State.FAILED,
    "cancelled": State.CANCELLED,
    "canceled": State.CANCELLED,
    "cancelling": State.CANCELLING,
    "canceling": State.CANCELLING,
}


class Source(AzureSource):
    pass


# Either route names a batch, whichever version the source polls with.
ROUTE = re.compile(r"/translator/(?:document|text/batch/v1\.[^/]+)/batches/(?P<job_id>[^/]+)")


ACTIVE = ("NotStarted", "Running", "Cancelling")
PAGE_SIZE = 100


def _batches(source: Source, *segments: str, **query: str | int) -> str:
    """The URL of the batches collection (or of one batch), in the source's API version."""
    version = source.api_version or DEFAULT_API_VERSION
    if version.startswith("v1."):
        route = path("translator", "text", "batch", version, "batches", *segments)
        query = {f"${key}" if key == "maxpagesize" else key: value for key, value in query.items()}
    else:
        route = path("translator", "document", "batches", *segments)
        query = {"api-version": version, **query}
    return f"{source.endpoint}/{route}" + (f"?{urlencode(query, safe='$,:')}" if query else "")


def request(source: Source, job_id: str, _project: str | None = None, /) -> UpstreamRequest:
    return source.get(_batches(source, job_id))


def parse(payload: Any, polled_at: datetime) -> JobSnapshot:  # noqa: ARG001 - same signature for all
    batch = obj(payload, "batch")
    text(batch, "id", "translationId", required=True)  # a batch without its ID is not a batch
    vendor_status = text(batch, "status", required=True)
    state = map_status(vendor_status, STATUSES)
    summary = obj(batch.get("summary"), "summary")  # every batch has one; a document has not
    documents = {
        "succeeded": count(summary, "success") or 0,
        "failed": count(summary, "failed") or 0,
        "in_progress": count(summary, "inProgress") or 0,
        "not_started": count(summary, "notYetStarted") or 0,
        "cancelled": count(summary, "cancelled") or 0,
    }
    # Progress is the work that finished, succeeded or failed; cancelled documents were not done.
    finished = documents["succeeded"] + documents["failed"]
    total = count(summary, "total") or sum(documents.values())
    created = timestamp(batch, "createdDateTimeUtc")
    last_action = timestamp(batch, "lastActionDateTimeUtc")
    return JobSnapshot(
        state=state,
        vendor_status=vendor_status,
        progress={"overall": finished_progress(state, ratio(finished, total))},
        documents=documents,
        characters_charged=count(summary, "totalCharacterCharged", default=None),
        errors=0 if batch.get("error") is None else 1,
        created=created,
        last_update=last_action,
        finished=finish_time(state, created, last_action),  # a finished batch's last action
    )


def _read(source: Source, payload: Any, at: datetime) -> Page:
    page = obj(payload, "batches")
    found = (listed(entry, parse, at, ("id", "translationId")) for entry in items(page, "batches"))
    link = next_link(source, page)
    follow = () if link is None else (ListRequest(source.get(link), partial(_read, source)),)
    return Page(tuple(job for job in found if job is not None), follow)


def lister(source: Source, query: ListQuery) -> tuple[ListRequest, ...]:
    def ask(since: datetime, statuses: tuple[str, ...] = ()) -> ListRequest:
        wanted: dict[str, str | int] = {"createdDateTimeUtcStart": utc_param(since)}
        if statuses:
            wanted["statuses"] = ",".join(statuses)
        url = _batches(source, maxpagesize=PAGE_SIZE, **wanted)
        return ListRequest(source.get(url), partial(_read, source))

    if query.any_state:
        return (ask(query.since),)
    return ask(query.since, ACTIVE), ask(query.any_state_since)


def locate(source: Source, url: str) -> Located | None:
    found = route(source, url, ROUTE)
    return None if found is None else Located(found["job_id"])


PROVIDER = Provider("azure_document_translation", Source, request, parse, locate, lister=lister)
