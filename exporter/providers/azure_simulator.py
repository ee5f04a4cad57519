"""What the Azure providers' parts of the simulator share: the key check, the status spelling,
the error list, and the task-count job of the Language and Text Analytics job APIs.

Beside `azure_common.py` (what their API modules share), and like every part, it imports only
the simulator kit: never an API module, so that the simulator stays an independent oracle.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from exporter.simulator.kit import Answer, Call, Keys, Moment, SimJob, error_answer, iso

if TYPE_CHECKING:
    from datetime import datetime


def check_key(call: Call, keys: Keys) -> Answer | None:
    """A resource key in Ocp-Apim-Subscription-Key, or an Entra ID token as a bearer."""
    bearer = call.headers.get("authorization", "").removeprefix("Bearer ")
    if call.headers.get("ocp-apim-subscription-key") in keys.keys or bearer in keys.bearer_tokens:
        return None
    return error_answer(401, "Unauthorized", "User is not authorized")


def status(phase: str) -> str:
    """A job's status in the Language APIs' spelling."""
    return {"not_started": "notStarted"}.get(phase, phase)


def errors(now: Moment, code: str) -> list[dict[str, str]]:
    return (
        [{"code": code, "message": "The job failed (simulated)."}] if now.phase == "failed" else []
    )


def task_counts(job: SimJob, now: Moment) -> dict[str, int]:
    completed = math.floor(now.done * job.units)
    failed = 1 if now.phase == "failed" else 0
    in_progress = 0 if now.phase in {"failed", "succeeded"} else job.units - completed
    return {"completed": completed, "failed": failed, "inProgress": in_progress, "total": job.units}


def task_job(
    job: SimJob,
    now: Moment,
    created: datetime,
    clock: datetime,
    *,
    vendor_status: str,
    updated_key: str = "lastUpdatedDateTime",
) -> dict[str, Any]:
    """An analyze job whose work is tasks, with its last update under `updated_key`."""
    return {
        "createdDateTime": iso(created),
        "displayName": job.display_name,
        "expirationDateTime": iso(created + timedelta(days=1)),
        "jobId": job.job_id,
        updated_key: iso(clock),
        "status": vendor_status,
        "errors": errors(now, "TaskFailed"),
        "tasks": {**task_counts(job, now), "items": []},
    }
