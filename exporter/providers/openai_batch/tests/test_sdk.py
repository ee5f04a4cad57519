"""The official `openai` SDK as the simulator's client: it lists (over several pages) and reads
the simulated batches in every status, validating each answer strictly against its own model
(`_strict_response_validation=True`: a missing required field or an unknown status raises), and
every field its `Batch` model declares, required or optional, is in the simulator's JSON.

Only OpenAI's route is read here. The Azure OpenAI variant (`/openai/v1`) is left out on
purpose: it sends Azure's quirks (no `usage`, `in_progress_at` null, counts 0 until the end),
which the SDK's model does not describe, and its fine-tuning answers fail strict validation as
the real Azure answers do (see the fine-tuning provider's SDK test). The parser's tests read
those quirks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from openai import OpenAI
from pydantic import BaseModel

from exporter.providers.openai_batch.simulator import NAME
from exporter.simulator import DEMO_KEY, ManualClock, SimJob, Simulator

if TYPE_CHECKING:
    from collections.abc import Iterator

# One batch per way a batch can go, at each moment below: validating (t=2), in progress (30),
# finalizing (146), completed, partially, failed validation, expired, cancelling (60) and
# cancelled (100).
JOBS = (
    SimJob("batch_ok", NAME, duration=150, units=20),
    SimJob("batch_partial", NAME, duration=100, units=10, failed_units=2),
    SimJob("batch_invalid", NAME, outcome="failed", stop_at=0.0),
    SimJob("batch_expired", NAME, duration=100, units=10, outcome="expired", stop_at=0.3),
    SimJob("batch_cancelled", NAME, duration=100, units=10, outcome="cancelled", stop_at=0.5),
    SimJob("batch_later", NAME, duration=100, units=10, created_at=20.0),
)
MOMENTS = (2.0, 30.0, 60.0, 100.0, 146.0, 400.0)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(jobs=JOBS, clock=ManualClock(0.0), max_page_size=2) as simulator:
        yield simulator


def client(sim: Simulator) -> OpenAI:
    return OpenAI(base_url=f"{sim.url}/v1", api_key=DEMO_KEY, max_retries=0,
                  _strict_response_validation=True)  # fmt: skip


def missing(model: BaseModel, raw: Any, where: str) -> list[str]:
    """The fields `model` declares that `raw` (the JSON it was read from) lacks, nested models
    (and lists of them) included."""
    absent = []
    for name in type(model).model_fields:
        if not isinstance(raw, dict) or name not in raw:
            absent.append(f"{where}.{name}")
            continue
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            absent += missing(value, raw[name], f"{where}.{name}")
        elif isinstance(value, list):
            absent += [gap for i, item in enumerate(value) if isinstance(item, BaseModel)
                       for gap in missing(item, raw[name][i], f"{where}.{name}[{i}]")]  # fmt: skip
    return absent


@pytest.mark.parametrize("at", MOMENTS)
def test_the_sdk_lists_and_reads_every_batch_with_every_field(sim: Simulator, at: float) -> None:
    assert isinstance(sim.clock, ManualClock)
    sim.clock.now = at
    openai = client(sim)
    listed = list(openai.batches.list(limit=2))  # auto-paging: `after` the last of each page
    present = [job.job_id for job in JOBS if job.created_at <= at]
    assert sorted(batch.id for batch in listed) == sorted(present)
    pages = [r for r in sim.requests if r.path.startswith("/v1/batches?")]
    assert len(pages) == (len(present) + 1) // 2
    for job_id in present:
        raw = openai.batches.with_raw_response.retrieve(job_id)
        batch = raw.parse()
        assert batch.id == job_id
        assert missing(batch, raw.http_response.json(), "batch") == []


def test_the_sdk_sees_every_status_the_simulator_sends(sim: Simulator) -> None:
    """Together the moments cover every status of the SDK's Literal."""
    assert isinstance(sim.clock, ManualClock)
    seen = set()
    for at in MOMENTS:
        sim.clock.now = at
        seen |= {batch.status for batch in client(sim).batches.list()}
    assert seen == {"validating", "in_progress", "finalizing", "completed", "failed", "expired",
                    "cancelling", "cancelled"}  # fmt: skip
