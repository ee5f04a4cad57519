"""What the Azure Language job APIs share: their status vocabulary and the task-count job shape.

Analyze-text jobs (Language, 2022+) and analyze jobs (Text Analytics v3.x) are one lineage: the
same top-level fields, `tasks.{completed,failed,inProgress,total}`, and a renamed
`lastUpdatedDateTime`/`lastUpdateDateTime`. One parser serves both.

Progress is the share of tasks that finished, succeeded or failed. Tasks of a cancelled (or
cancelling) job that are in none of the counts were cancelled: `tasks{state="cancelled"}`. The
task entries (`tasks.items` here, `tasks.<kind>Tasks` lists in v3.x) say `state` in the real
services and `status` in the examples; a failed job's only error details may be inside its
failed tasks, so `errors` is the larger of the job's own error list and the failed tasks' errors
(at least one per failed task). A display name of "NA" (v3.x previews) means none. A finished
job finished at its last update: nothing changes a job after it ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from exporter.model import JobSnapshot, State
from exporter.providers.base import (
    count,
    error_count,
    finish_time,
    finished_progress,
    map_status,
    obj,
    opt_obj,
    ratio,
    text,
    timestamp,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

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


NO_NAME = frozenset({"NA", "N/A"})


def _task_entries(tasks: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for key, value in tasks.items():
        if (key == "items" or key.endswith("Tasks")) and isinstance(value, list):
            yield from (entry for entry in value if isinstance(entry, dict))


def failed_task_errors(tasks: Mapping[str, Any], statuses: Mapping[str, State]) -> int:
    """Errors reported inside failed task entries; a failed task with none listed counts one."""
    errors = 0
    for entry in _task_entries(tasks):
        if map_status(text(entry, "state", "status"), statuses) is not State.FAILED:
            continue
        results = opt_obj(entry, "results") or {}
        errors += max(1, error_count(entry, "errors") + error_count(results, "errors"))
    return errors


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
    cancelled = 0
    if state in {State.CANCELLED, State.CANCELLING}:
        cancelled = max(0, total - completed - failed - in_progress)
    overall = finished_progress(state, ratio(completed + failed, total))
    name = text(job, "displayName")
    created = timestamp(job, "createdDateTime")
    last_update = timestamp(job, *LAST_UPDATE_KEYS)
    return JobSnapshot(
        state=state,
        vendor_status=vendor_status,
        display_name="" if name.strip() in NO_NAME else name,
        progress={"overall": overall},
        tasks={
            "completed": completed,
            "failed": failed,
            "in_progress": in_progress,
            "cancelled": cancelled,
        },
        errors=max(error_count(job, "errors"), failed_task_errors(tasks, statuses)),
        warnings=error_count(job, "warnings"),
        created=created,
        last_update=last_update,
        expiration=timestamp(job, "expirationDateTime"),
        finished=finish_time(state, created, last_update),
    )
