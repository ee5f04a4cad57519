"""Azure Language analyze-text (and analyze-conversations) jobs.

Request::

    GET {endpoint}/language/analyze-{workload}/jobs/{id}?api-version=2023-04-01
    Ocp-Apim-Subscription-Key: ...

Yields, for a job with one of two tasks done::

    asyncjob_info{...,vendor_status="running",display_name="Extracting Location"} 1
    asyncjob_state{...,state="running"} 1
    asyncjob_progress_ratio{...,phase="overall"} 0.5
    asyncjob_tasks{...,state="completed"} 1
    asyncjob_tasks{...,state="failed"} 0
    asyncjob_tasks{...,state="in_progress"} 1
    asyncjob_created_timestamp_seconds{...} 1.601564445e+09
    asyncjob_expiration_timestamp_seconds{...} 1.601737263e+09
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from exporter.providers.azure_common import LANGUAGE_STATUSES, parse_task_job
from exporter.providers.base import AzureSource, Located, Provider, UpstreamRequest, path, route

if TYPE_CHECKING:
    from datetime import datetime

    from exporter.model import JobSnapshot

DEFAULT_API_VERSION = "2023-04-01"


ROUTE = re.compile(r"/language/analyze-(?P<workload>text|conversations)/jobs/(?P<job_id>[^/]+)")


class Source(AzureSource):
    workload: Literal["text", "conversations"] = "text"


def request(source: Source, job_id: str, _project: str | None = None, /) -> UpstreamRequest:
    route = path("language", f"analyze-{source.workload}", "jobs", job_id)
    version = source.api_version or DEFAULT_API_VERSION
    return source.get(f"{source.endpoint}/{route}?api-version={version}")


def parse(payload: Any, polled_at: datetime) -> JobSnapshot:  # noqa: ARG001 - same signature for all
    return parse_task_job(payload, LANGUAGE_STATUSES)


def locate(source: Source, url: str) -> Located | None:
    found = route(source, url, ROUTE)
    return Located(found["job_id"]) if found and found["workload"] == source.workload else None


PROVIDER = Provider("azure_language_analyze_text", Source, request, parse, locate)
