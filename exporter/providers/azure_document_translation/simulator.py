"""Azure AI Translator document batches, as the simulator serves them.

    GET /translator/document/batches/{id}                  (2024-05-01)
    GET /translator/text/batch/{v1.x}/batches/{id}
    GET /translator/document/batches                       (paged: maxpagesize, skip, nextLink)
    GET /translator/text/batch/{v1.x}/batches              ($maxpagesize, $skip, @nextLink)

A batch's work is `units` documents, one in progress at a time; `failed_units` of the finished
ones fail in a batch that still succeeds, and a failed batch fails every document it had not
finished. Each succeeded document is charged `characters_per_unit`. Lists take the
`createdDateTimeUtcStart` and `statuses` filters. With `arrivals_every`, a new batch starts each
period; one in five fails.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

from exporter.providers import azure_simulator as azure
from exporter.simulator.kit import (
    Answer,
    Bench,
    Demo,
    Listing,
    ListRoute,
    Moment,
    Outcome,
    Route,
    SimJob,
    SimPart,
    created,
    iso,
    moment,
)

NAME = "azure_document_translation"
_BATCHES = r"/translator/(?:document|text/batch/(?P<variant>v1\.[^/]+))/batches"
_STATUS = {"not_started": "NotStarted", "running": "Running"}


def status(job: SimJob, elapsed: float) -> str:
    """A batch's status as the Translator spells it, without rendering the batch."""
    phase = moment(job, elapsed - job.created_at).phase
    return _STATUS.get(phase, phase.title())


def render(
    job: SimJob, now: Moment, created: datetime, clock: datetime, _version: str
) -> dict[str, Any]:
    finished = math.floor(now.done * job.units)
    if now.phase == "failed":  # a failed batch fails every document it had not finished
        success, failed, in_progress, waiting = finished, job.units - finished, 0, 0
    else:
        failed = min(job.failed_units, finished)
        success = finished - failed
        in_progress = 1 if now.phase == "running" and finished < job.units else 0
        waiting = job.units - finished - in_progress
    body: dict[str, Any] = {
        # "id" in every version, as the live service sends it (the Azure SDK's recorded tests
        # show it); the REST spec's 2024-05-01 examples say "translationId" instead.
        "id": job.job_id,
        "createdDateTimeUtc": iso(created),
        "lastActionDateTimeUtc": iso(clock),
        "status": _STATUS.get(now.phase, now.phase.title()),
        "summary": {
            "total": job.units,
            "failed": failed,
            "success": success,
            "inProgress": in_progress,
            "notYetStarted": waiting,
            "cancelled": 0,
            "totalCharacterCharged": success * job.characters_per_unit,
        },
    }
    if now.phase == "failed":
        body["error"] = {"code": "InternalServerError", "message": "Batch failed (simulated)."}
    return body


def batches(listing: Listing) -> Answer:
    """The batches created since `createdDateTimeUtcStart` in one of `statuses`, paged."""
    found = list(listing.jobs)
    start = listing.call.query.get("createdDateTimeUtcStart")
    if start:
        since = datetime.fromisoformat(start)
        found = [job for job in found if created(job, listing.started_at) >= since]
    statuses = listing.call.query.get("statuses")
    if statuses:
        wanted = {name.strip().casefold() for name in statuses.split(",")}
        found = [job for job in found if status(job, listing.elapsed).casefold() in wanted]
    link = "@nextLink" if listing.call.variant.startswith("v1.") else "nextLink"
    return listing.page(found, link, listing.rendered)


def demo_sources(demo: Demo) -> list[dict[str, Any]]:
    """Listed by job ID, or (with discovery) found by listing the batches."""
    found: dict[str, Any] = {"job_ids": ["batch-ok", "batch-partial"]}
    if demo.discovery:
        found = {"discovery": {"interval": demo.poll_interval}}
    return [{"name": "translator", "provider": NAME, "endpoint": demo.url,
             "auth": {"subscription_key": demo.key, "region": "westeurope"}, **found}]  # fmt: skip


def bench_source(url: str, key: str) -> dict[str, Any]:
    return {"name": "translator", "provider": NAME, "endpoint": url,
            "auth": {"subscription_key": key}}  # fmt: skip


def arrival(n: int, every: float) -> SimJob:
    """The n-th batch (from 1) that starts by itself, every `every` seconds."""
    outcome: Outcome = "failed" if n % 5 == 0 else "succeeded"
    return SimJob(f"batch-new-{n}", NAME, duration=90, units=8, outcome=outcome,
                  start_delay=3.0, created_at=n * every)  # fmt: skip


PART = SimPart(
    NAME,
    routes=(Route("GET", re.compile(_BATCHES + r"/(?P<job_id>[^/]+)")),),
    render=render,
    check_key=azure.check_key,
    listings=(ListRoute("GET", re.compile(_BATCHES), batches),),
    demo_jobs=(
        SimJob("batch-ok", NAME, duration=150, units=20, throttle=(30.0, 40.0), retry_after=2),
        SimJob("batch-partial", NAME, duration=100, units=10, failed_units=2),
    ),
    demo_sources=demo_sources,
    arrival=arrival,
    bench=Bench(bench_source, listed=True, polled=True),
)
