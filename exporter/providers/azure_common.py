"""What the Azure Language job APIs share: their status vocabulary and the task-count job shape.

Analyze-text jobs (Language, 2022+) and analyze jobs (Text Analytics v3.x) are one lineage: the
same top-level fields, `tasks.{completed,failed,inProgress,total}`, and a renamed
`lastUpdatedDateTime`/`lastUpdateDateTime`. One parser serves both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from exporter.model import JobSnapshot, State
from exporter.providers.base import (
    count,
    error_count,
    finished_progress,
    map_status,
    obj,
    opt_obj,
    ratio,
    text,
    timestamp,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

LANGUAGE_STATUSES: Mapping[str, State] = {
    "notstarted": State.NOT_STARTED,
    "running": State.RUNNING,
    "cancelling": State.CANCELLING,
    "succeeded": State.SUCCEEDED,
    "partiallycompleted": State.PARTIALLY_SUCCEEDED,
    "partiallysucceeded": State.PARTIALLY_SUCCEEDED,
    "failed": State.FAILED,
    "cancelled": State.CANCELLED,
}

LAST_UPDATE_KEYS = ("lastUpdatedDateTime", "lastUpdateDateTime")


def parse_task_job(payload: Any, statuses: Mapping[str, State]) -> JobSnapshot:
    """A job whose progress is its finished tasks over all tasks."""
    job = obj(payload, "job")
    vendor_status = text(job, "status", required=True)
    state = map_status(vendor_status, statuses)
    tasks = opt_obj(job, "tasks") or {}
    completed = count(tasks, "completed") or 0
    failed = count(tasks, "failed") or 0
    in_progress = count(tasks, "inProgress") or 0
    total = count(tasks, "total") or 0
    overall = finished_progress(state, ratio(completed + failed, total))
    return JobSnapshot(
        state=state,
        vendor_status=vendor_status,
        display_name=text(job, "displayName"),
        progress={"overall": overall},
        tasks={"completed": completed, "failed": failed, "in_progress": in_progress},
        errors=error_count(job, "errors"),
        warnings=error_count(job, "warnings"),
        created=timestamp(job, "createdDateTime"),
        last_update=timestamp(job, *LAST_UPDATE_KEYS),
        expiration=timestamp(job, "expirationDateTime"),
    )
