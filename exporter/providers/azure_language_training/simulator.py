"""Azure AI Language training jobs, as the simulator serves them.

    GET /language/authoring/analyze-{workload}/projects/{project}/train/jobs/{id}
    GET /language/authoring/analyze-{workload}/projects                  (paged, nextLink)
    GET /language/authoring/analyze-{workload}/projects/{project}/train/jobs   (paged)

Training is the first 80% of a job's work and evaluation the rest; conversations projects also
report a data generation phase, done before training starts. `estimatedEndDateTime` covers the
training phase only, as the API's does. A project's last training is its latest job's creation.
With `arrivals_every`, a new training job starts each period, in `LoanAgreements` and
`Contracts` by turns; one in five fails.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import TYPE_CHECKING, Any

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
)

if TYPE_CHECKING:
    from datetime import datetime

NAME = "azure_language_training"
_PROJECTS = r"/language/authoring/analyze-(?P<variant>text|conversations)/projects"


def render(
    job: SimJob, now: Moment, created: datetime, clock: datetime, workload: str
) -> dict[str, Any]:
    training = min(now.done / 0.8, 1.0)
    evaluation = max(0.0, (now.done - 0.8) / 0.2)
    status = azure.status(now.phase)
    train_start = created + timedelta(seconds=job.start_delay)

    def phase(ratio: float, begun: bool) -> dict[str, Any]:
        if not begun:
            return {"percentComplete": 0, "status": "notStarted"}
        finished = ratio >= 1.0
        return {
            "percentComplete": math.floor(ratio * 100),
            "startDateTime": iso(train_start),
            "status": "succeeded" if finished else status,
        }

    result = {
        "modelLabel": job.display_name or job.job_id,
        "trainingConfigVersion": "2022-05-01",
        # The API's estimate covers the training phase only (80% of the work here).
        "estimatedEndDateTime": iso(train_start + timedelta(seconds=0.8 * job.duration)),
        "trainingStatus": phase(training, now.phase != "not_started"),
        "evaluationStatus": phase(evaluation, now.done > 0.8),
    }
    if workload == "conversations":
        result["dataGenerationStatus"] = phase(1.0, now.phase != "not_started")
    return {
        "result": result,
        "jobId": job.job_id,
        "createdDateTime": iso(created),
        "lastUpdatedDateTime": iso(clock),
        "expirationDateTime": iso(created + timedelta(days=7)),
        "status": status,
        "warnings": [{"code": "LowData", "message": "Few examples."}] * job.warnings,
        "errors": azure.errors(now, "TrainingFailed"),
    }


def projects(listing: Listing) -> Answer:
    """The projects that have jobs, each last trained when its latest job was created."""
    latest: dict[str, SimJob] = {}
    for job in listing.jobs:
        latest[job.project] = job  # jobs are in creation order: the last is the latest
    return listing.page([
        {"projectName": name, "projectKind": "customNamedEntityRecognition", "language": "en",
         "createdDateTimeUtc": iso(listing.started_at),
         "lastModifiedDateTime": iso(created(job, listing.started_at)),
         "lastTrainedDateTime": iso(created(job, listing.started_at))}
        for name, job in sorted(latest.items())
    ])  # fmt: skip


def project_jobs(listing: Listing) -> Answer:
    project = listing.call.groups["project"]
    mine = [job for job in listing.jobs if job.project == project]
    return listing.page(mine, show=listing.rendered)


def demo_sources(demo: Demo) -> list[dict[str, Any]]:
    """Listed by job ID, or (with discovery) found in every project: the source has none."""
    found: dict[str, Any] = {"project": "LoanAgreements", "job_ids": ["train-ok", "train-fail"]}
    if demo.discovery:
        found = {"discovery": {"interval": demo.poll_interval}}
    return [{"name": "language-training", "provider": NAME, "endpoint": demo.url,
             "auth": {"subscription_key": demo.key}, **found}]  # fmt: skip


def bench_source(url: str, key: str) -> dict[str, Any]:
    """Without a project: discovery lists every project."""
    return {"name": "training", "provider": NAME, "endpoint": url,
            "auth": {"subscription_key": key}}  # fmt: skip


def arrival(n: int, every: float) -> SimJob:
    """The n-th training job (from 1) that starts by itself, every `every` seconds."""
    outcome: Outcome = "failed" if n % 5 == 0 else "succeeded"
    project = ("LoanAgreements", "Contracts")[n % 2]
    return SimJob(f"train-new-{n}", NAME, duration=120, outcome=outcome, start_delay=3.0,
                  created_at=n * every, project=project, display_name=f"model-v{n}")  # fmt: skip


PART = SimPart(
    NAME,
    routes=(Route("GET", re.compile(_PROJECTS + r"/[^/]+/train/jobs/(?P<job_id>[^/]+)")),),
    render=render,
    check_key=azure.check_key,
    listings=(
        ListRoute("GET", re.compile(_PROJECTS), projects),
        ListRoute("GET", re.compile(_PROJECTS + r"/(?P<project>[^/]+)/train/jobs"), project_jobs),
    ),
    demo_jobs=(
        SimJob("train-ok", NAME, duration=180, display_name="loan-model-v2", warnings=1),
        SimJob("train-fail", NAME, duration=120, outcome="failed", display_name="loan-model-v3"),
    ),
    demo_sources=demo_sources,
    arrival=arrival,
    bench=Bench(bench_source, listed=True),
)
