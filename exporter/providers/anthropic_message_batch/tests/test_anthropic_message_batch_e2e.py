"""The Anthropic source end to end over real HTTP against the simulator: what the demo's batches
export at each phase, discovery within max_jobs, the jobs API, the request budget and a 429."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from conftest import Harness, demo_raw_config, fetch_each, wait_until

from exporter.http import FetchError, HttpClient, HttpSettings, rate_limit_wait
from exporter.model import ErrorReason
from exporter.providers import PROVIDERS
from exporter.providers.anthropic_message_batch.simulator import DEMO_JOBS, NAME, PART, SOURCE
from exporter.simulator import DEMO_KEY, SimJob, Simulator, render

if TYPE_CHECKING:
    from exporter.model import Attempt

MakeHarness = Callable[..., Harness]
LABELS = {"provider": NAME, "source": SOURCE}


def mine(**keys: Any) -> Callable[[Simulator], dict[str, Any]]:
    """The demo config with the Anthropic source alone, with `keys` replaced."""

    def config_for(sim: Simulator) -> dict[str, Any]:
        raw = demo_raw_config(sim)
        raw["sources"] = [s for s in raw["sources"] if s["provider"] == NAME]
        raw["sources"][0].update(keys)
        return raw

    return config_for


def state_of(h: Harness, job_id: str) -> str | None:
    metrics = h.scrape()
    for labels in metrics.series("asyncjob_state", job_id=job_id, **LABELS):
        if metrics.get("asyncjob_state", **labels) == 1:
            return labels["state"]
    return None


def tasks_of(h: Harness, job_id: str) -> dict[str, float | None]:
    metrics = h.scrape()
    found = metrics.series("asyncjob_tasks", job_id=job_id, **LABELS)
    return {labels["state"]: metrics.get("asyncjob_tasks", **labels) for labels in found}


def test_running_batches_claim_no_progress(make_harness: MakeHarness) -> None:
    """At t=5 every demo batch runs: every request counted in_progress, all five task series
    there, no progress ratio and no last progress change (the API does not say how far a batch
    is, so no stall can be told), an expiry a day after creation and no finish."""
    h = make_harness(mine(), at=5.0, jobs=DEMO_JOBS)
    h.exporter.poll_once()
    metrics = h.scrape()
    for job in DEMO_JOBS:
        labels = {**LABELS, "job_id": job.job_id}
        assert state_of(h, job.job_id) == "running"
        assert tasks_of(h, job.job_id) == {"completed": 0, "failed": 0, "in_progress": job.units,
                                           "cancelled": 0, "expired": 0}  # fmt: skip
        assert metrics.get("asyncjob_progress_ratio", phase="overall", **labels) is None
        assert metrics.get("asyncjob_last_progress_change_timestamp_seconds", **labels) is None
        created = metrics.get("asyncjob_created_timestamp_seconds", **labels)
        expires = metrics.get("asyncjob_expiration_timestamp_seconds", **labels)
        assert created is not None
        assert expires == pytest.approx(created + 86400)
        assert metrics.get("asyncjob_finished_timestamp_seconds", **labels) is None


def test_ended_batches_end_as_their_counts_say(make_harness: MakeHarness) -> None:
    """At t=400 every demo batch has ended: its state, counts, progress and finish time."""
    h = make_harness(mine(), at=400.0, jobs=DEMO_JOBS)
    h.exporter.poll_once()
    expected = {
        "msgbatch_demo_ok": ("succeeded", {"completed": 100}, 1.0),
        "msgbatch_demo_mixed": ("partially_succeeded", {"completed": 34, "failed": 6}, 1.0),
        "msgbatch_demo_canceled": ("cancelled", {"cancelled": 10}, 0.0),
        "msgbatch_demo_expired": ("partially_succeeded", {"completed": 12, "expired": 18}, 0.4),
        "msgbatch_demo_failed": ("failed", {"failed": 8}, 1.0),
    }
    metrics = h.scrape()
    for job_id, (state, counts, progress) in expected.items():
        labels = {**LABELS, "job_id": job_id}
        assert state_of(h, job_id) == state, job_id
        zeros = dict.fromkeys(("completed", "failed", "in_progress", "cancelled", "expired"), 0)
        assert tasks_of(h, job_id) == {**zeros, **counts}, job_id
        assert metrics.get("asyncjob_progress_ratio", phase="overall", **labels) == progress
        finished = metrics.get("asyncjob_finished_timestamp_seconds", **labels)
        created = metrics.get("asyncjob_created_timestamp_seconds", **labels)
        assert finished is not None
        assert created is not None
        assert finished > created, job_id


def test_a_cancel_shows_cancelling_then_cancelled(make_harness: MakeHarness) -> None:
    """The cancelled demo batch: cancelling from its cancel (t=40) for a while, counts unchanged;
    then ended, every request canceled."""
    job = next(j for j in DEMO_JOBS if j.job_id == "msgbatch_demo_canceled")
    h = make_harness(mine(job_ids=[job.job_id]), at=45.0, jobs=(job,))
    h.exporter.poll_once()
    assert state_of(h, job.job_id) == "cancelling"
    assert tasks_of(h, job.job_id)["in_progress"] == job.units
    h.clock.now = 56.0
    h.exporter.poll_once()
    assert state_of(h, job.job_id) == "cancelled"


def test_discovery_pages_and_stays_within_max_jobs(make_harness: MakeHarness) -> None:
    """Discovery lists newest first by after_id, two a page here, and tracks max_jobs batches at
    most; the others are counted as rejected."""
    jobs = tuple(SimJob(f"msgbatch_{n:02d}", NAME, duration=600, units=3, start_delay=0.0,
                        created_at=float(n)) for n in range(7))  # fmt: skip
    config = mine(job_ids=[], discovery={"interval": "1h"}, max_jobs=4)
    h = make_harness(config, at=60.0, jobs=jobs, max_page_size=2)
    h.exporter.poll_once()
    pages = [r for r in h.sim.requests if urlsplit(r.path).path == "/v1/messages/batches"]
    queries = [{k: v[-1] for k, v in parse_qs(urlsplit(r.path).query).items()} for r in pages]
    assert queries == [
        {"limit": "100"},
        {"limit": "100", "after_id": "msgbatch_05"},
        {"limit": "100", "after_id": "msgbatch_03"},
        {"limit": "100", "after_id": "msgbatch_01"},
    ]
    assert all(r.headers["x-api-key"] == DEMO_KEY for r in pages)
    assert all(r.headers["anthropic-version"] == "2023-06-01" for r in pages)
    metrics = h.scrape()
    assert metrics.get("asyncjob_tracked_jobs", **LABELS) == 4
    assert metrics.get("asyncjob_jobs_rejected_total", reason="limit", **LABELS) == 3
    assert metrics.get("asyncjob_jobs_discovered_total", **LABELS) == 4
    assert h.sim.seen("msgbatch_06") == []  # the listing was their poll


def test_jobs_api_takes_the_batch_url(make_harness: MakeHarness) -> None:
    """POST {"operation_location": <the batch's URL>} finds the source and the batch, which is
    then polled at its own path."""
    h = make_harness(mine(job_ids=[]), jobs=DEMO_JOBS, jobs_api=True, start_polling=True)
    url = f"{h.sim.url}/v1/messages/batches/msgbatch_demo_mixed"
    response = requests.post(f"{h.url}/api/v1/jobs", timeout=10,
                             data=json.dumps({"operation_location": url}).encode())  # fmt: skip
    assert response.status_code == 201, response.text
    job = response.json()
    assert (job["source"], job["job_id"], job["provider"]) == (SOURCE, "msgbatch_demo_mixed", NAME)
    wait_until(lambda: h.sim.seen("msgbatch_demo_mixed"), what="the first poll of the batch")
    labels = {**LABELS, "job_id": "msgbatch_demo_mixed"}
    wait_until(lambda: h.scrape().get("asyncjob_up", **labels) == 1, what="the batch to be up")


def test_polls_beyond_the_budget_wait_and_are_sent(make_harness: MakeHarness) -> None:
    """20 requests a minute for 22 batches: two wait for the budget, counted, and are sent. A
    token takes 3 s to come back, longer than the 1 s over which the first polls are spread, so
    the count is the budget's, not the machine's (at 60 a minute a token came back within the
    spread on a loaded machine, and only one poll waited)."""
    config = mine(job_ids=[f"msgbatch_{n}" for n in range(22)], max_requests_per_minute=20,
                  poll_interval="1h")  # fmt: skip
    h = make_harness(config, start_polling=True, jobs=())
    wait_until(
        lambda: h.scrape().get("asyncjob_request_budget_delayed_total", **LABELS) == 2 or None,
        timeout=30.0,  # the second waits two tokens: 6 s
        what="two polls delayed by the budget",
    )
    sent = [r for r in h.sim.requests if r.path.startswith("/v1/messages/batches/")]
    assert len({r.path for r in sent}) == 22
    assert {r.status for r in sent} == {404}  # in Anthropic's error shape:
    assert json.loads(sent[0].body or b"null") is None
    errors = h.scrape().get("asyncjob_request_errors_total", reason="not_found", **LABELS)
    assert errors == 22


def test_a_429_names_its_wait_in_both_spellings(make_harness: MakeHarness) -> None:
    """In its throttle window (t=20..30) the batch answers 429 rate_limit_error with retry-after
    and an exhausted anthropic-ratelimit limit; the exporter waits what retry-after says, and
    the reset header alone would say the same."""
    h = make_harness(mine(), at=25.0, jobs=DEMO_JOBS)
    source = h.exporter.config.sources[0]
    provider = PROVIDERS[NAME]
    client = HttpClient(HttpSettings(5.0, 0, 1.0, 1 << 20))
    attempts: list[Attempt] = []
    with pytest.raises(FetchError) as raised:
        fetch_each(client, [provider.request(source, "msgbatch_demo_ok")], attempts)
    assert raised.value.reason is ErrorReason.THROTTLED
    assert raised.value.retry_after == 2
    status, headers, body = PART.throttled(
        next(j for j in DEMO_JOBS if j.job_id == "msgbatch_demo_ok"),
        datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert status == 429
    assert json.loads(body)["error"]["type"] == "rate_limit_error"
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert headers["anthropic-ratelimit-requests-reset"] == "2026-01-01T00:00:02.000000Z"
    without_retry_after = {k: v for k, v in headers.items() if k != "retry-after"}
    wait = rate_limit_wait(without_retry_after, datetime(2026, 1, 1, tzinfo=UTC))
    assert wait == pytest.approx(2.0)


def test_wrong_key_and_missing_version_are_refused(make_harness: MakeHarness) -> None:
    """The simulator refuses what the API refuses: a wrong key (401, authentication_error), a
    call without anthropic-version (400); the exporter counts the first as auth."""
    h = make_harness(mine(auth={"api_key": "wrong"}), jobs=DEMO_JOBS)
    h.exporter.poll_once()
    assert h.scrape().get("asyncjob_request_errors_total", reason="auth", **LABELS) == len(
        DEMO_JOBS
    )
    url = f"{h.sim.url}/v1/messages/batches/msgbatch_demo_ok"
    missing = requests.get(url, headers={"x-api-key": DEMO_KEY}, timeout=5)
    assert missing.status_code == 400
    assert missing.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("query", "ids", "more"),
    [
        ("limit=2", ["b4", "b3"], True),
        ("limit=2&after_id=b3", ["b2", "b1"], True),
        ("limit=2&after_id=b1", ["b0"], False),
        ("limit=2&before_id=b1", ["b3", "b2"], True),
        ("limit=3&before_id=b2", ["b4", "b3"], False),
        ("", ["b4", "b3", "b2", "b1", "b0"], False),
    ],
)
def test_the_list_pages_as_the_api_does(query: str, ids: list[str], more: bool) -> None:
    """after_id pages to older batches, before_id to newer ones; first_id and last_id name the
    page's ends; limit defaults to 20."""
    jobs = tuple(SimJob(f"b{n}", NAME, created_at=float(n)) for n in range(5))
    with Simulator(jobs=jobs, clock=lambda: 60.0) as sim:
        page = requests.get(f"{sim.url}/v1/messages/batches?{query}", timeout=5,
                            headers={"x-api-key": DEMO_KEY, "anthropic-version": "2023-06-01"})  # fmt: skip
    body = page.json()
    assert [entry["id"] for entry in body["data"]] == ids
    assert (body["has_more"], body["first_id"], body["last_id"]) == (more, ids[0], ids[-1])


@pytest.mark.parametrize("limit", ["0", "1001", "x"])
def test_a_limit_out_of_range_is_refused(limit: str) -> None:
    """limit is 1 to 1000."""
    with Simulator(jobs=(), clock=lambda: 60.0) as sim:
        page = requests.get(f"{sim.url}/v1/messages/batches?limit={limit}", timeout=5,
                            headers={"x-api-key": DEMO_KEY, "anthropic-version": "2023-06-01"})  # fmt: skip
    assert page.status_code == 400
    assert page.json()["error"]["type"] == "invalid_request_error"


def test_a_batch_runs_with_every_request_processing_then_ends() -> None:
    """The renderer as the API reference says: processing is the total until the end."""
    job = SimJob("msgbatch_x", NAME, duration=100, units=5, failed_units=1, start_delay=0.0)
    started = datetime(2026, 1, 1, tzinfo=UTC)
    for at in (0.0, 50.0, 99.0):
        running = render(job, at, started)
        assert running["processing_status"] == "in_progress"
        assert running["request_counts"] == {"processing": 5, "succeeded": 0, "errored": 0,
                                             "canceled": 0, "expired": 0}  # fmt: skip
        assert running["ended_at"] is None
        assert running["results_url"] is None
    ended = render(job, 100.0, started)
    assert ended["processing_status"] == "ended"
    assert ended["request_counts"]["succeeded"] == 4
    assert ended["request_counts"]["errored"] == 1
    assert ended["ended_at"] == "2026-01-01T00:01:40.000000Z"
    assert ended["expires_at"] == "2026-01-02T00:00:00.000000Z"
