"""Azure AI Language custom-model training jobs (authoring API).

Request::

    GET {endpoint}/language/authoring/analyze-{workload}/projects/{project}/train/jobs/{id}
        ?api-version=2023-04-01
    Ocp-Apim-Subscription-Key: ...

Yields, for a job half-way through training::

    asyncjob_info{...,vendor_status="running",display_name="model1"} 1
    asyncjob_state{...,state="running"} 1
    asyncjob_progress_ratio{...,phase="training"} 0.5
    asyncjob_progress_ratio{...,phase="evaluation"} 0
    asyncjob_progress_ratio{...,phase="overall"} 0.25
    asyncjob_started_timestamp_seconds{...} 1.6502967068e+09
    asyncjob_estimated_completion_timestamp_seconds{...} 1.6502968788e+09
    asyncjob_errors{...} 0
    asyncjob_warnings{...} 0

`display_name` is the model label. Conversations projects also report
`result.dataGenerationStatus`, exported as `phase="data_generation"`; overall progress is the mean
of the phases the job reports (training and evaluation always, data generation when present).
`result.estimatedEndDateTime` estimates the end of the *training* phase only: once training has
ended it is not exported, since evaluation can run long after it and nothing estimates that.
A finished job finished at the latest `endDateTime` among its phases, or at its
`lastUpdatedDateTime` when no phase has one.

Discovery lists `GET .../projects/{project}/train/jobs` (100 a page, `maxpagesize`, following
`nextLink`); each entry is a whole job status, so the listing is the poll of every job on it.
Jobs created before the lookback are left out. A source without a `project` first lists the
resource's projects (`GET .../projects`), skipping those neither trained nor modified within the
lookback, and each job keeps the project it was listed under.
"""

from __future__ import annotations

import re
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from exporter.model import JobSnapshot
from exporter.providers.azure_common import LANGUAGE_STATUSES, LAST_UPDATE_KEYS
from exporter.providers.base import (
    AzureSource,
    ListQuery,
    ListRequest,
    Located,
    Page,
    ParseError,
    Provider,
    UpstreamRequest,
    error_count,
    finish_time,
    finished_progress,
    items,
    listed,
    map_status,
    next_link,
    obj,
    opt_obj,
    path,
    percent,
    route,
    text,
    timestamp,
)
from exporter.values import PathSafeId, is_path_safe_id

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

DEFAULT_API_VERSION = "2023-04-01"


ROUTE = re.compile(
    r"/language/authoring/analyze-(?P<workload>text|conversations)"
    r"/projects/(?P<project>[^/]+)/train/jobs/(?P<job_id>[^/]+)"
)


class Source(AzureSource):
    project: PathSafeId | None = None  # the jobs' project; jobs can also bring their own
    workload: Literal["text", "conversations"] = "text"

    def problems(self) -> list[tuple[str, str]]:
        if self.job_ids and self.project is None:
            return [("project", "required key is missing (the job_ids' training project)")]
        return []


PAGE_SIZE = 100
PROJECT_ACTIVITY = ("lastTrainedDateTime", "lastModifiedDateTime")


def _authoring(source: Source, *segments: str, page: bool = False) -> UpstreamRequest:
    """A GET of the source's authoring API: `segments` below .../analyze-{workload}/."""
    route = path("language", "authoring", f"analyze-{source.workload}", *segments)
    version = source.api_version or DEFAULT_API_VERSION
    size = f"&maxpagesize={PAGE_SIZE}" if page else ""
    return source.get(f"{source.endpoint}/{route}?api-version={version}{size}")


def request(source: Source, job_id: str, project: str | None = None, /) -> UpstreamRequest:
    project = project or source.project
    if project is None:  # registration refuses such a job; reaching here is a bug
        raise ValueError(f"training job {job_id!r} has no project")
    return _authoring(source, "projects", project, "train", "jobs", job_id)


# (phase label, result key, reported by every job)
PHASES = (
    ("data_generation", "dataGenerationStatus", False),
    ("training", "trainingStatus", True),
    ("evaluation", "evaluationStatus", True),
)


def _ended(phase: Mapping[str, Any], ratio: float) -> bool:
    status = text(phase, "status")
    return ratio >= 1.0 or map_status(status, LANGUAGE_STATUSES).terminal


def parse(payload: Any, polled_at: datetime) -> JobSnapshot:  # noqa: ARG001 - same signature for all
    job = obj(payload, "job")
    vendor_status = text(job, "status", required=True)
    state = map_status(vendor_status, LANGUAGE_STATUSES)
    result = opt_obj(job, "result") or {}
    phases: dict[str, float] = {}
    ends: list[datetime | None] = []
    for phase, key, always in PHASES:
        status = opt_obj(result, key)
        if status is not None or always:
            phases[phase] = percent(status or {}, "percentComplete")
            ends.append(timestamp(status or {}, "endDateTime"))
    training = opt_obj(result, "trainingStatus") or {}
    overall = finished_progress(state, sum(phases.values()) / len(phases))
    training_ended = state.terminal or _ended(training, phases["training"])
    created = timestamp(job, "createdDateTime")
    last_update = timestamp(job, *LAST_UPDATE_KEYS)
    return JobSnapshot(
        state=state,
        vendor_status=vendor_status,
        display_name=text(result, "modelLabel"),
        progress={**phases, "overall": overall},
        errors=error_count(job, "errors"),
        warnings=error_count(job, "warnings"),
        created=created,
        last_update=last_update,
        started=timestamp(training, "startDateTime"),
        estimated_completion=(
            None if training_ended else timestamp(result, "estimatedEndDateTime")
        ),
        expiration=timestamp(job, "expirationDateTime"),
        # The last phase's end; the job's own last update where no phase says when it ended.
        finished=finish_time(state, created, *ends) or finish_time(state, created, last_update),
    )


def _read_jobs(source: Source, project: str, query: ListQuery, payload: Any, at: datetime) -> Page:
    page = obj(payload, "training jobs")
    found = []
    for entry in items(page, "training jobs"):
        try:
            created = timestamp(entry, "createdDateTime")
        except ParseError:
            created = None  # listed all the same: its own poll will say what is wrong
        if created is None or created >= query.since:
            found.append(listed(entry, parse, at, ("jobId",), project))
    link = next_link(source, page)
    read = partial(_read_jobs, source, project, query)
    follow = () if link is None else (ListRequest(source.get(link), read),)
    return Page(tuple(job for job in found if job is not None), follow)


def _jobs_of(source: Source, project: str, query: ListQuery) -> ListRequest:
    request = _authoring(source, "projects", project, "train", "jobs", page=True)
    return ListRequest(request, partial(_read_jobs, source, project, query))


def _read_projects(source: Source, query: ListQuery, payload: Any, _at: datetime) -> Page:
    page = obj(payload, "projects")
    follow = []
    for entry in items(page, "projects"):
        name = entry.get("projectName")
        if not isinstance(name, str) or not is_path_safe_id(name):
            continue
        try:
            times = [timestamp(entry, key) for key in PROJECT_ACTIVITY]
        except ParseError:
            times = []
        known = [when for when in times if when is not None]
        if not known or max(known) >= query.since:  # no dates given: list it to be sure
            follow.append(_jobs_of(source, name, query))
    link = next_link(source, page)
    if link is not None:
        follow.append(ListRequest(source.get(link), partial(_read_projects, source, query)))
    return Page((), tuple(follow))


def lister(source: Source, query: ListQuery) -> tuple[ListRequest, ...]:
    if source.project is not None:
        return (_jobs_of(source, source.project, query),)
    return (ListRequest(_authoring(source, "projects", page=True),
                        partial(_read_projects, source, query)),)  # fmt: skip


def locate(source: Source, url: str) -> Located | None:
    found = route(source, url, ROUTE)
    if found is None or found["workload"] != source.workload:
        return None
    return Located(found["job_id"], found["project"])


PROVIDER = Provider("azure_language_training", Source, request, parse, locate, lister=lister)
