"""Azure Language analyze-text (and analyze-conversations) jobs, as the simulator serves them.

    GET /language/analyze-{workload}/jobs/{id}

A job's work is `units` tasks, done one after another; a failed job fails one task. The demo
also registers `analyze-api` through the exporter's jobs API, as a pipeline that started it would.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from exporter.providers import azure_simulator as azure
from exporter.simulator.kit import Bench, Demo, DemoCall, Moment, Route, SimJob, SimPart

if TYPE_CHECKING:
    from datetime import datetime

NAME = "azure_language_analyze_text"
SOURCE = "language-analyze"
ROUTE = re.compile(r"/language/analyze-(?P<variant>text|conversations)/jobs/(?P<job_id>[^/]+)")


def render(
    job: SimJob, now: Moment, created: datetime, clock: datetime, _workload: str
) -> dict[str, Any]:
    return azure.task_job(job, now, created, clock, vendor_status=azure.status(now.phase))


def demo_sources(demo: Demo) -> list[dict[str, Any]]:
    return [{"name": SOURCE, "provider": NAME, "endpoint": demo.url,
             "auth": {"subscription_key": demo.key}, "job_ids": ["analyze-ok"]}]  # fmt: skip


def bench_source(url: str, key: str) -> dict[str, Any]:
    return {"name": SOURCE, "provider": NAME, "endpoint": url, "auth": {"subscription_key": key}}


REGISTERED = SimJob("analyze-api", NAME, duration=150, display_name="Registered by API")

PART = SimPart(
    NAME,
    routes=(Route("GET", ROUTE),),
    render=render,
    check_key=azure.check_key,
    demo_jobs=(SimJob("analyze-ok", NAME, duration=120, display_name="Extract contract entities"),),
    demo_sources=demo_sources,
    demo_calls=(DemoCall("/api/v1/jobs", {"source": SOURCE, "job_id": REGISTERED.job_id}),),
    called_jobs=(REGISTERED,),
    bench=Bench(bench_source, registered=True),
)
