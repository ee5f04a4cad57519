"""Fine-tuning jobs end to end, over real HTTP against the simulator: a running job's poll is
two requests (its status, then its newest events) and gives its step, losses and progress; a
finished one's is one; Azure's steps have no total; a paused job stays running; discovery
carries finished jobs and leaves running ones to be polled with their events; the jobs API
with the job's URL; and OpenAI's signed webhooks for fine-tuning events."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import TYPE_CHECKING, Any

import pytest
import requests
from conftest import Harness, wait_until

from exporter.providers.openai_batch.simulator import AZURE
from exporter.providers.openai_fine_tuning.simulator import NAME
from exporter.simulator import DEMO_KEY, SimJob

if TYPE_CHECKING:
    from collections.abc import Callable

    from exporter.model import JobSnapshot
    from exporter.simulator import Simulator

KEY = b"thirty-two bytes of webhook key!"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
JOBS = (
    SimJob("ftjob-ok", NAME, duration=100, units=50),  # step 1 of 50 every 2 s from t=5
    SimJob("ftjob-paused", NAME, duration=100, units=50, outcome="stalled", stop_at=0.2),
    SimJob("ftjob-failed", NAME, duration=100, units=50, outcome="failed", stop_at=0.1),
    SimJob("ftjob-azure", NAME, duration=100, units=50, project=AZURE),
)


def config(*openai_jobs: str, **keys: Any) -> Callable[[Simulator], dict[str, Any]]:
    """An OpenAI source with `openai_jobs` and `keys`, an Azure OpenAI one with ftjob-azure;
    polled hourly, so that a poll soon after a call is the call's doing."""

    def config_for(sim: Simulator) -> dict[str, Any]:
        openai = {"name": "openai", "provider": NAME, "endpoint": f"{sim.url}/v1",
                  "auth": {"api_key": DEMO_KEY}, "job_ids": list(openai_jobs),
                  "webhook_secret": SECRET, **keys}  # fmt: skip
        azure = {"name": "azure", "provider": NAME, "endpoint": f"{sim.url}/openai/v1",
                 "auth": {"api_key": DEMO_KEY}, "job_ids": ["ftjob-azure"]}  # fmt: skip
        return {"global": {"poll_interval": "1h", "timeout": "5s", "max_retry_wait": "5s",
                           "retries": 0}, "sources": [openai, azure]}  # fmt: skip

    return config_for


def labels(job_id: str, source: str = "openai") -> dict[str, str]:
    return {"provider": NAME, "source": source, "job_id": job_id}


def snapshot(h: Harness, job_id: str, source: str = "openai") -> JobSnapshot:
    record = h.exporter.store.get(source, job_id)
    assert record is not None
    assert record.snapshot is not None
    return record.snapshot


def asked(h: Harness, job_id: str) -> list[str]:
    """What the exporter asked about the job: its status, its events."""
    return [r.path.split("?")[0].rsplit(f"{job_id}", 1)[-1] or "status"
            for r in h.sim.requests if f"/fine_tuning/jobs/{job_id}" in r.path]  # fmt: skip


def test_a_running_job_is_polled_with_its_newest_events(
    make_harness: Callable[..., Harness],
) -> None:
    """At t=45, ftjob-ok is at step 20 of 50: its metrics events say Step 20/50, so progress
    is 0.4; the poll was two requests."""
    h = make_harness(config("ftjob-ok"), at=45.0, jobs=JOBS)
    h.exporter.poll_once()
    assert asked(h, "ftjob-ok") == ["status", "/events"]
    snap = snapshot(h, "ftjob-ok")
    assert (snap.training_step, snap.progress["overall"]) == (20, 0.4)
    assert set(snap.training_loss) == {"train", "valid"}
    m = h.scrape()
    assert m.get("asyncjob_state", **labels("ftjob-ok"), state="running") == 1
    assert m.get("asyncjob_progress_ratio", **labels("ftjob-ok"), phase="overall") == 0.4
    assert m.get("asyncjob_estimated_completion_timestamp_seconds", **labels("ftjob-ok"))
    attempts = m.get("asyncjob_requests_total", provider=NAME, source="openai")
    assert attempts == 2  # both requests of the poll are counted


def test_a_finished_job_is_one_request_with_its_trained_tokens(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(config("ftjob-ok", "ftjob-failed"), at=200.0, jobs=JOBS)
    h.exporter.poll_once()
    assert asked(h, "ftjob-ok") == ["status"]
    assert asked(h, "ftjob-failed") == ["status"]
    ok, failed = snapshot(h, "ftjob-ok"), snapshot(h, "ftjob-failed")
    assert (ok.progress["overall"], ok.tokens) == (1.0, {"trained": 50 * 480})
    assert (failed.errors, failed.progress["overall"]) == (1, 0.0)
    m = h.scrape()
    assert m.get("asyncjob_state", **labels("ftjob-failed"), state="failed") == 1
    assert m.get("asyncjob_finished_timestamp_seconds", **labels("ftjob-ok")) is not None
    assert m.get("asyncjob_estimated_completion_timestamp_seconds", **labels("ftjob-ok")) is None


def test_azure_steps_have_no_total_so_no_progress_is_made_up(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(config(), at=45.0, jobs=JOBS)
    h.exporter.poll_once()
    snap = snapshot(h, "ftjob-azure", "azure")
    assert snap.training_step == 20
    assert snap.progress == {}  # no ratio made up; the step is progress for the stall alert
    assert snap.shows_progress
    assert h.scrape().get("asyncjob_state", **labels("ftjob-azure", "azure"), state="running") == 1


def test_a_paused_job_is_running_and_keeps_its_step(make_harness: Callable[..., Harness]) -> None:
    """Paused at step 10 (t=25): still running, its events still read; the step holds."""
    h = make_harness(config("ftjob-paused"), at=60.0, jobs=JOBS)
    h.exporter.poll_once()
    m = h.scrape()
    assert m.get("asyncjob_info", **labels("ftjob-paused"), vendor_status="paused",
                 display_name="", project="") == 1  # fmt: skip
    assert m.get("asyncjob_state", **labels("ftjob-paused"), state="running") == 1
    assert snapshot(h, "ftjob-paused").training_step == 10
    before = h.exporter.store.get("openai", "ftjob-paused")
    h.clock.now = 600.0
    h.exporter.poll_once()
    after = h.exporter.store.get("openai", "ftjob-paused")
    assert before is not None
    assert after is not None
    # No progress while paused: the stall clock keeps running (AsyncJobStalled will fire).
    assert after.last_progress_change == before.last_progress_change


def test_discovery_polls_running_jobs_alone_with_their_events(
    make_harness: Callable[..., Harness],
) -> None:
    """At t=45 ftjob-failed has ended (the listing carries it), the others run: each is polled
    alone, status and events, once the listing names it."""
    h = make_harness(config(discovery={}), at=45.0, jobs=JOBS, max_page_size=2)
    h.exporter.poll_once()
    assert asked(h, "ftjob-failed") == []  # the listing was its poll
    assert asked(h, "ftjob-ok") == ["status", "/events"]
    assert asked(h, "ftjob-paused") == ["status", "/events"]
    pages = [r.path for r in h.sim.requests if r.path.startswith("/v1/fine_tuning/jobs?")]
    assert pages == ["/v1/fine_tuning/jobs?limit=100",
                     "/v1/fine_tuning/jobs?limit=100&after=ftjob-ok"]  # fmt: skip
    assert {r.job_id for r in h.exporter.store.jobs_of("openai")} == {
        "ftjob-ok", "ftjob-paused", "ftjob-failed"
    }  # fmt: skip
    assert h.scrape().get("asyncjob_state", **labels("ftjob-failed"), state="failed") == 1


def test_the_jobs_api_takes_a_job_url(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(config(), at=45.0, jobs=JOBS, jobs_api=True, start_polling=True)
    url = f"{h.sim.url}/v1/fine_tuning/jobs/ftjob-ok"
    response = requests.post(f"{h.url}/api/v1/jobs", json={"operation_location": url}, timeout=10)
    assert response.status_code == 201, response.text
    assert (response.json()["source"], response.json()["provider"]) == ("openai", NAME)
    wait_until(lambda: h.scrape().get("asyncjob_up", **labels("ftjob-ok")) == 1,
               what="the registered job polled")  # fmt: skip


def signed(body: bytes, at: float) -> dict[str, str]:
    """The Standard Webhooks headers, by the recipe: HMAC-SHA256 of "id.timestamp.body"."""
    mac = hmac.new(KEY, f"msg_1.{int(at)}.".encode() + body, hashlib.sha256).digest()
    return {"webhook-id": "msg_1", "webhook-timestamp": str(int(at)),
            "webhook-signature": "v1," + base64.b64encode(mac).decode()}  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "result", "status"),
    [("fine_tuning.job.succeeded", "registered", 200), ("batch.completed", "invalid", 400)],
)
def test_a_signed_fine_tuning_event_registers_the_job(
    make_harness: Callable[..., Harness], kind: str, result: str, status: int
) -> None:
    """A fine-tuning event names its job; a batch event names none of this source's."""
    h = make_harness(config(), at=200.0, jobs=JOBS, start_polling=True)
    body = json.dumps({"id": "evt_1", "object": "event", "type": kind,
                       "created_at": int(time.time()), "data": {"id": "ftjob-ok"}}).encode()  # fmt: skip
    answer = requests.post(f"{h.url}/api/v1/webhooks/openai/openai", data=body,
                           headers=signed(body, time.time()), timeout=10)  # fmt: skip
    assert (answer.status_code, answer.json().get("result")) == (status, result if status == 200
                                                                  else None)  # fmt: skip
    m = h.scrape()
    assert m.get("asyncjob_webhooks_total", provider=NAME, source="openai", result=result) == 1
    if status == 200:
        wait_until(lambda: h.scrape().get("asyncjob_state", **labels("ftjob-ok"),
                   state="succeeded") == 1, what="the job polled")  # fmt: skip
    stale = requests.post(f"{h.url}/api/v1/webhooks/openai/openai", data=body,
                          headers=signed(body, time.time() - 400), timeout=10)  # fmt: skip
    assert stale.status_code == 401
    assert h.scrape().get("asyncjob_webhooks_total", provider=NAME, source="openai",
                          result="unauthorized") == 1  # fmt: skip
