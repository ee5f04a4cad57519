"""The official `openai` SDK as the simulator's client: it lists (over several pages) and reads
the simulated fine-tuning jobs and their events in every status its model knows, validating
each answer strictly (`_strict_response_validation=True`: a missing required field or an
unknown status raises), and every field its `FineTuningJob` and `FineTuningJobEvent` models
declare, required or optional, is in the simulator's JSON.

Left out on purpose, because they fail strict validation as the real answers do: a paused job
(`paused` is not in the SDK's status Literal, though OpenAI's pause endpoint answers it), and
the Azure OpenAI variant (`/openai/v1`: `pending`, `organization_id` and `result_files` null).
The last test shows that they do fail, so that leaving them out hides nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import openai
import pytest
from openai import OpenAI

from exporter.providers.openai_batch.simulator import AZURE
from exporter.providers.openai_batch.tests.test_sdk import missing
from exporter.providers.openai_fine_tuning.simulator import NAME
from exporter.simulator import DEMO_KEY, ManualClock, SimJob, Simulator

if TYPE_CHECKING:
    from collections.abc import Iterator

# validating_files (t=1), queued (4), running (30), succeeded, failed and cancelled (200).
JOBS = (
    SimJob("ftjob-ok", NAME, duration=100, units=50, display_name="support-bot"),
    SimJob("ftjob-failed", NAME, duration=100, units=50, outcome="failed", stop_at=0.2),
    SimJob("ftjob-cancelled", NAME, duration=100, units=50, outcome="cancelled", stop_at=0.3),
    SimJob("ftjob-later", NAME, duration=100, units=50, created_at=3.0),
)
MOMENTS = (1.0, 4.0, 30.0, 200.0)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    paused = SimJob("ftjob-paused", NAME, units=50, outcome="stalled", stop_at=0.1)
    azure = SimJob("ftjob-azure", NAME, units=50, project=AZURE)
    with Simulator(jobs=(*JOBS, paused, azure), clock=ManualClock(0.0),
                   max_page_size=2) as simulator:  # fmt: skip
        yield simulator


def client(sim: Simulator, base: str = "/v1") -> OpenAI:
    return OpenAI(base_url=f"{sim.url}{base}", api_key=DEMO_KEY, max_retries=0,
                  _strict_response_validation=True)  # fmt: skip


@pytest.mark.parametrize("at", MOMENTS)
def test_the_sdk_lists_and_reads_every_job_and_its_events(sim: Simulator, at: float) -> None:
    assert isinstance(sim.clock, ManualClock)
    sim.clock.now = at
    sdk = client(sim)
    present = [job.job_id for job in JOBS if job.created_at <= at]
    for job_id in present:
        raw = sdk.fine_tuning.jobs.with_raw_response.retrieve(job_id)
        job = raw.parse()
        assert job.id == job_id
        assert missing(job, raw.http_response.json(), "job") == []
        events = list(sdk.fine_tuning.jobs.list_events(job_id, limit=3))  # auto-paging
        assert len({event.id for event in events}) == len(events) >= 2
        page = sdk.fine_tuning.jobs.with_raw_response.list_events(job_id, limit=100)
        for event, raw_event in zip(page.parse().data, page.http_response.json()["data"],
                                    strict=True):  # fmt: skip
            assert missing(event, raw_event, "event") == []
        assert [event.created_at for event in events] == sorted(
            (event.created_at for event in events), reverse=True
        )  # newest first


def test_the_sdk_pages_the_job_list_and_sees_every_status(sim: Simulator) -> None:
    """Paged with `after` the last job (the list has no last_id), over pages of two; the
    moments cover every status of the SDK's Literal."""
    assert isinstance(sim.clock, ManualClock)
    sim.clock.now = 4.0
    sim.remove_jobs(["ftjob-paused"])  # not in the SDK's Literal: see the module's docstring
    sim.requests.clear()
    listed = list(client(sim).fine_tuning.jobs.list(limit=2))
    assert sorted(job.id for job in listed) == sorted(job.job_id for job in JOBS)
    assert len([r for r in sim.requests if r.path.startswith("/v1/fine_tuning/jobs?")]) == 2
    seen = set()
    for at in MOMENTS:
        sim.clock.now = at
        seen |= {job.status for job in client(sim).fine_tuning.jobs.list()}
    assert seen == {"validating_files", "queued", "running", "succeeded", "failed", "cancelled"}


def test_a_paused_job_and_azures_answers_fail_strict_validation(sim: Simulator) -> None:
    """As the real ones do: why they are left out above."""
    assert isinstance(sim.clock, ManualClock)
    sim.clock.now = 60.0
    with pytest.raises(openai.APIResponseValidationError):
        client(sim).fine_tuning.jobs.retrieve("ftjob-paused")
    with pytest.raises(openai.APIResponseValidationError):
        client(sim, "/openai/v1").fine_tuning.jobs.retrieve("ftjob-azure")
