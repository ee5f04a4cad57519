"""Legacy Text Analytics v3.x analyze jobs.

Request (the API version is a path segment here, not a query parameter)::

    GET {endpoint}/text/analytics/v3.1/analyze/jobs/{id}
    Ocp-Apim-Subscription-Key: ...

Yields the same series as analyze-text jobs::

    asyncjob_info{...,vendor_status="completed",display_name="MyJobName"} 1
    asyncjob_state{...,state="succeeded"} 1
    asyncjob_progress_ratio{...,phase="overall"} 1
    asyncjob_tasks{...,state="completed"} 1
    asyncjob_finished_timestamp_seconds{...} 1.601564463e+09

The v3.2 previews spell success `completed`; a task-level `rejected` means failed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import Field

from exporter.model import State
from exporter.providers.azure_common import LANGUAGE_STATUSES, parse_task_job
from exporter.providers.base import AzureSource, Located, Provider, UpstreamRequest, path, route

if TYPE_CHECKING:
    from datetime import datetime

    from exporter.model import JobSnapshot

DEFAULT_API_VERSION = "v3.1"
STATUSES = {**LANGUAGE_STATUSES, "completed": State.SUCCEEDED, "rejected": State.FAILED}


class Source(AzureSource):
    api_version: str | None = Field(default=None, pattern=r"^v3\.[0-9]+(-preview\.[0-9]+)?$")


ROUTE = re.compile(r"/text/analytics/(?P<version>v3\.[^/]+)/analyze/jobs/(?P<job_id>[^/]+)")


def request(source: Source, job_id: str, _project: str | None = None, /) -> UpstreamRequest:
    route = path(
        "text", "analytics", source.api_version or DEFAULT_API_VERSION, "analyze", "jobs", job_id
    )
    return source.get(f"{source.endpoint}/{route}")


def parse(payload: Any, polled_at: datetime) -> JobSnapshot:  # noqa: ARG001 - same signature for all
    return parse_task_job(payload, STATUSES)


def locate(source: Source, url: str) -> Located | None:
    found = route(source, url, ROUTE)
    version = source.api_version or DEFAULT_API_VERSION
    return Located(found["job_id"]) if found and found["version"] == version else None


PROVIDER = Provider("azure_text_analytics_analyze", Source, request, parse, locate)
