"""The official `anthropic` SDK as a client of the simulator: it lists (over several pages) and
retrieves batches, and every field its `MessageBatch` model declares is in what the simulator
sends. A simulator that drifted from the real API would fail here, where the SDK's own models
are the judge."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from anthropic import Anthropic, NotFoundError
from anthropic.types.messages import MessageBatch, MessageBatchRequestCounts

from exporter.providers.anthropic_message_batch.simulator import DEMO_JOBS, NAME
from exporter.simulator import DEMO_KEY, ManualClock, SimJob, Simulator

if TYPE_CHECKING:
    from collections.abc import Iterator

# Every phase a batch goes through, at t=100: running, ended (all succeeded, mixed, failed),
# canceling, ended after a cancel, expired.
JOBS = (
    *DEMO_JOBS,
    SimJob("msgbatch_sdk_running", NAME, duration=500, units=7, start_delay=0.0),
    SimJob("msgbatch_sdk_canceling", NAME, duration=1000, units=3, outcome="cancelled",
           stop_at=0.095, start_delay=0.0),
    *(SimJob(f"msgbatch_sdk_{n}", NAME, duration=10, units=2, start_delay=0.0, created_at=n)
      for n in range(7)),
)  # fmt: skip


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(jobs=JOBS, clock=ManualClock(100.0), key=DEMO_KEY, max_page_size=4) as sim:
        yield sim


def client(sim: Simulator) -> Anthropic:
    """The SDK as an application builds it, on the simulator (no /v1: the SDK adds it), every
    answer validated against its models."""
    return Anthropic(
        base_url=sim.url, api_key=DEMO_KEY, max_retries=0, _strict_response_validation=True
    )


def test_the_sdk_lists_every_batch_over_several_pages(sim: Simulator) -> None:
    """`batches.list()` auto-pages by after_id = last_id until has_more is false, newest first;
    the SDK's own key header (Authorization: Bearer, anthropic-version 2026-10-21) is taken."""
    with client(sim) as sdk:
        listed = list(sdk.messages.batches.list(limit=3))
    newest_first = sorted(JOBS, key=lambda job: (job.created_at, job.job_id), reverse=True)
    assert [batch.id for batch in listed] == [job.job_id for job in newest_first]
    pages = [r for r in sim.requests if r.path.startswith("/v1/messages/batches?")]
    assert len(pages) == len(JOBS) // 3 + 1
    assert all(r.status == 200 for r in pages)
    assert pages[0].headers["authorization"] == f"Bearer {DEMO_KEY}"


def test_the_sdk_retrieves_every_phase(sim: Simulator) -> None:
    """`batches.retrieve(id)` reads each batch, whatever its phase, into a valid MessageBatch."""
    with client(sim) as sdk:
        found = {job.job_id: sdk.messages.batches.retrieve(job.job_id) for job in JOBS}
    statuses = {batch.processing_status for batch in found.values()}
    assert statuses == {"in_progress", "canceling", "ended"}
    canceling = found["msgbatch_sdk_canceling"]
    assert canceling.cancel_initiated_at is not None
    assert canceling.ended_at is None
    ended = found["msgbatch_demo_canceled"]
    assert ended.processing_status == "ended"
    assert ended.request_counts.canceled == 10
    for batch in found.values():
        counts = batch.request_counts
        total = counts.processing + counts.succeeded + counts.errored + counts.canceled
        assert total + counts.expired == next(j.units for j in JOBS if j.job_id == batch.id)
        assert (batch.ended_at is None) == (batch.processing_status != "ended")


def test_every_field_the_sdk_declares_is_sent(sim: Simulator) -> None:
    """Not one field of MessageBatch or its request counts is left out, the optional ones
    included (sent as null until they apply, as the C# SDK's "required, nullable" says)."""
    with client(sim) as sdk:
        for job in JOBS:
            raw = sdk.messages.batches.with_raw_response.retrieve(job.job_id).http_response.json()
            assert set(MessageBatch.model_fields) <= set(raw), job.job_id
            assert set(MessageBatchRequestCounts.model_fields) <= set(raw["request_counts"])
        page = sdk.messages.batches.with_raw_response.list(limit=2).http_response.json()
    assert set(page) == {"data", "has_more", "first_id", "last_id"}
    for entry in page["data"]:
        assert set(MessageBatch.model_fields) <= set(entry)


def test_the_sdk_reads_the_not_found_answer(sim: Simulator) -> None:
    """An unknown batch is a 404 in Anthropic's error shape, which the SDK reads as its own."""
    with client(sim) as sdk, pytest.raises(NotFoundError) as raised:
        sdk.messages.batches.retrieve("msgbatch_nope")
    assert raised.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "The requested resource could not be found."},
    }  # fmt: skip


def test_the_documented_key_header_is_taken_too(sim: Simulator) -> None:
    """x-api-key with anthropic-version 2023-06-01, as the API reference's curl sends them (and
    the exporter does); a wrong key is an authentication_error."""
    with Anthropic(base_url=sim.url, api_key="wrong", max_retries=0) as sdk:
        documented = {"x-api-key": DEMO_KEY, "anthropic-version": "2023-06-01",
                      "Authorization": ""}  # fmt: skip
        batch = sdk.messages.batches.retrieve("msgbatch_demo_ok", extra_headers=documented)
        assert batch.id == "msgbatch_demo_ok"
        with pytest.raises(Exception, match="authentication_error"):
            sdk.messages.batches.retrieve("msgbatch_demo_ok")
