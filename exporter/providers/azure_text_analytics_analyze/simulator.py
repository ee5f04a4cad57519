"""Legacy Text Analytics v3.x analyze jobs, as the simulator serves them.

    GET /text/analytics/{version}/analyze/jobs/{id}

The same task-count job as analyze-text, in the v3.x spelling: `lastUpdateDateTime`, and in the
v3.2 previews `completed` for a job that succeeded.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from exporter.providers import azure_simulator as azure
from exporter.simulator.kit import Demo, Moment, Route, SimJob, SimPart

if TYPE_CHECKING:
    from datetime import datetime

NAME = "azure_text_analytics_analyze"
ROUTE = re.compile(r"/text/analytics/(?P<variant>v3\.[^/]+)/analyze/jobs/(?P<job_id>[^/]+)")


def render(
    job: SimJob, now: Moment, created: datetime, clock: datetime, version: str
) -> dict[str, Any]:
    status = azure.status(now.phase)
    if "preview" in version and status == "succeeded":
        status = "completed"  # the v3.2 previews' spelling
    return azure.task_job(
        job, now, created, clock, vendor_status=status, updated_key="lastUpdateDateTime"
    )


def demo_sources(demo: Demo) -> list[dict[str, Any]]:
    return [{"name": "text-analytics", "provider": NAME, "endpoint": demo.url,
             "api_version": "v3.2-preview.2", "auth": {"subscription_key": demo.key},
             "job_ids": ["ta-ok"]}]  # fmt: skip


PART = SimPart(
    NAME,
    routes=(Route("GET", ROUTE),),
    render=render,
    check_key=azure.check_key,
    demo_jobs=(SimJob("ta-ok", NAME, duration=90, units=2, display_name="Legacy entity pass"),),
    demo_sources=demo_sources,
)
