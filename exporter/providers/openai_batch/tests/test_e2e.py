"""OpenAI batches end to end, over real HTTP against the simulator: every way a batch ends as
the exporter exports it, Azure OpenAI's route, discovery with the real paging within the
lookback and `max_jobs`, the jobs API with the batch's URL, request budgets, a 429 that names
its wait only in OpenAI's rate-limit headers, bearer keys and Entra ID tokens, and OpenAI's
signed webhooks (signed by hand, as the Standard Webhooks recipe says, and with the
openai-python test vector through the library)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
import standardwebhooks.webhooks
from conftest import Harness, fetch_each, poll_now, wait_until

from exporter import credentials, webhooks
from exporter.http import HttpClient, HttpSettings, TokenBucket
from exporter.model import Attempt, ErrorReason, State
from exporter.providers.openai_batch import PROVIDER
from exporter.providers.openai_batch.api import Source
from exporter.providers.openai_batch.simulator import AZURE, NAME
from exporter.simulator import DEMO_KEY, SimJob

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from exporter.simulator import Simulator

KEY = b"thirty-two bytes of webhook key!"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
VECTOR = json.loads(
    (
        Path(__file__).parents[1] / "fixtures" / "openai-python-tests_signed_webhook_vector.json"
    ).read_text(encoding="utf-8")
)
JOBS = (
    SimJob("batch_ok", NAME, duration=100, units=20, throttle=(30.0, 40.0), retry_after=3),
    SimJob("batch_partial", NAME, duration=100, units=10, failed_units=2),
    SimJob("batch_all_failed", NAME, duration=100, units=4, failed_units=4),
    SimJob("batch_expired", NAME, duration=100, units=10, outcome="expired", stop_at=0.3),
    SimJob("batch_cancelled", NAME, duration=100, units=10, outcome="cancelled", stop_at=0.5),
    SimJob("batch_invalid", NAME, outcome="failed", stop_at=0.0),
    SimJob("batch_azure", NAME, duration=100, units=2, project=AZURE),
)
ENDED = {  # at t=300: state, tasks (completed, failed, in_progress, cancelled, expired)
    "batch_ok": (State.SUCCEEDED, (20, 0, 0, 0, 0)),
    "batch_partial": (State.PARTIALLY_SUCCEEDED, (8, 2, 0, 0, 0)),
    "batch_all_failed": (State.FAILED, (0, 4, 0, 0, 0)),
    "batch_expired": (State.PARTIALLY_SUCCEEDED, (3, 0, 0, 0, 7)),
    "batch_cancelled": (State.CANCELLED, (5, 0, 0, 5, 0)),
    "batch_invalid": (State.FAILED, (0, 0, 0, 0, 0)),
}


def config(
    *openai_jobs: str, secret: str | None = SECRET, **keys: Any
) -> Callable[[Simulator], dict[str, Any]]:
    """An OpenAI source (polled hourly: a poll soon after a call is the call's doing) with
    `openai_jobs` and `keys`, and an Azure OpenAI source with batch_azure."""

    def config_for(sim: Simulator) -> dict[str, Any]:
        openai: dict[str, Any] = {"name": "openai", "provider": NAME, "endpoint": f"{sim.url}/v1",
                                  "auth": {"api_key": DEMO_KEY}, "job_ids": list(openai_jobs),
                                  **keys}  # fmt: skip
        if secret is not None:
            openai["webhook_secret"] = secret
        azure = {"name": "azure", "provider": NAME, "endpoint": f"{sim.url}/openai/v1",
                 "auth": {"api_key": DEMO_KEY}, "job_ids": ["batch_azure"]}  # fmt: skip
        return {"global": {"poll_interval": "1h", "timeout": "5s", "max_retry_wait": "5s",
                           "retries": 0}, "sources": [openai, azure]}  # fmt: skip

    return config_for


def labels(job_id: str, source: str = "openai") -> dict[str, str]:
    return {"provider": NAME, "source": source, "job_id": job_id}


def test_every_way_a_batch_ends_as_exported(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(config(*ENDED), at=300.0, jobs=JOBS)
    h.exporter.poll_once()
    m = h.scrape()
    for job_id, (state, counts) in ENDED.items():
        assert m.get("asyncjob_state", **labels(job_id), state=state.value) == 1, job_id
        tasks = [m.get("asyncjob_tasks", **labels(job_id), state=s)
                 for s in ("completed", "failed", "in_progress", "cancelled", "expired")]  # fmt: skip
        assert tuple(tasks) == counts, job_id
        assert m.get("asyncjob_finished_timestamp_seconds", **labels(job_id)) is not None, job_id
    record = h.exporter.store.get("openai", "batch_partial")
    assert record is not None
    assert record.snapshot is not None
    assert record.snapshot.tokens == {"input": 8 * 120, "output": 8 * 80}
    # Azure's completed batch: counts at the end, no start time, no usage.
    azure = labels("batch_azure", "azure")
    assert m.get("asyncjob_state", **azure, state="succeeded") == 1
    assert m.get("asyncjob_tasks", **azure, state="completed") == 2
    assert m.get("asyncjob_started_timestamp_seconds", **azure) is None
    assert m.get("asyncjob_started_timestamp_seconds", **labels("batch_ok")) is not None


def test_a_running_batch_and_azures_finalizing_one(make_harness: Callable[..., Harness]) -> None:
    """At t=97 both are finalizing: OpenAI's with its requests done, Azure's with 0 of 2."""
    h = make_harness(config("batch_ok"), at=97.0, jobs=JOBS)
    h.exporter.poll_once()
    m = h.scrape()
    assert m.get("asyncjob_info", **labels("batch_ok"), vendor_status="finalizing",
                 display_name="", project="") == 1  # fmt: skip
    assert m.get("asyncjob_progress_ratio", **labels("batch_ok"), phase="overall") == 1.0
    azure = labels("batch_azure", "azure")
    assert m.get("asyncjob_state", **azure, state="running") == 1
    assert m.get("asyncjob_tasks", **azure, state="in_progress") == 2
    assert m.get("asyncjob_progress_ratio", **azure, phase="overall") == 0.0


def test_discovery_pages_after_the_last_batch_and_stops_at_the_lookback(
    make_harness: Callable[..., Harness],
) -> None:
    """Seven of OpenAI's batches in pages of two, two of them older than the lookback: the
    listing reads pages until it reaches one and asks no further; Azure's batch is another
    account's. max_jobs 4 keeps four, and counts the rest."""
    old = tuple(SimJob(f"batch_old_{n}", NAME, created_at=-3 * 86400.0 - n) for n in range(2))
    jobs = (*JOBS[:-1], *old, JOBS[-1])
    h = make_harness(config(discovery={"lookback": "1d"}, max_jobs=4), at=300.0, jobs=jobs,
                     max_page_size=2)  # fmt: skip
    assert PROVIDER.lister is not None
    listing = h.exporter.pollers["openai"].list_now()
    assert listing is not None
    assert listing.error is None
    asked = [r.path for r in h.sim.requests if r.path.startswith("/v1/batches?")]
    # Newest first (created together, then by ID): pages after the last batch of each page.
    assert asked == [
        "/v1/batches?limit=100",
        "/v1/batches?limit=100&after=batch_cancelled",
        "/v1/batches?limit=100&after=batch_invalid",
        "/v1/batches?limit=100&after=batch_partial",
    ]  # the fourth page holds batch_old_0: older than the lookback, so no fifth
    tracked = {record.job_id for record in h.exporter.store.jobs_of("openai")}
    assert len(tracked) == 4
    assert not any(job_id.startswith("batch_old") for job_id in tracked)
    m = h.scrape()
    assert m.get("asyncjob_jobs_rejected_total", provider=NAME, source="openai",
                 reason="limit") == 2  # fmt: skip


def test_the_jobs_api_takes_a_batch_url(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(config(), at=300.0, jobs=JOBS, jobs_api=True, start_polling=True)
    for path, source in (("/v1/batches/batch_partial", "openai"),
                         ("/openai/v1/batches/batch_expired", "azure")):  # fmt: skip
        job_id = path.rsplit("/", 1)[-1]
        response = requests.post(f"{h.url}/api/v1/jobs", timeout=10,
                                 json={"operation_location": f"{h.sim.url}{path}"})  # fmt: skip
        assert response.status_code == 201, response.text
        job = response.json()
        assert (job["source"], job["job_id"], job["provider"]) == (source, job_id, NAME)
        polled = labels(job_id, source)
        wait_until(lambda: h.scrape().get("asyncjob_up", **polled) == 1,  # noqa: B023
                   what="the registered batch polled")  # fmt: skip


def test_a_429_names_its_wait_in_the_rate_limit_headers(
    make_harness: Callable[..., Harness],
) -> None:
    """In batch_ok's throttle window the simulator answers 429 with the requests limit
    exhausted and no Retry-After: the wait comes from x-ratelimit-reset-requests (3s)."""
    h = make_harness(config("batch_ok"), at=35.0, jobs=JOBS)
    poller = h.exporter.pollers["openai"]
    outcome = poll_now(poller, "batch_ok")
    assert (outcome.error, outcome.retry_after) == (ErrorReason.THROTTLED, 3.0)
    answered = h.sim.seen("batch_ok")[-1]
    assert answered.status == 429
    h.clock.now = 45.0
    ok = poll_now(poller, "batch_ok")
    assert ok.snapshot is not None
    assert ok.retry_after is None  # requests remain: the headers name no wait
    assert poller.next_wait(outcome) >= 3.0


def test_requests_over_budget_wait_and_are_sent(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(config("batch_ok"), at=60.0, jobs=JOBS)
    source = h.exporter.config.sources[0]
    assert isinstance(source, Source)
    client = HttpClient(HttpSettings(5.0, 0, 1.0, 1 << 20), [TokenBucket(120, capacity=1)])
    attempts: list[Attempt] = []
    fetch_each(client, [PROVIDER.request(source, "batch_ok")] * 3, attempts)
    assert [a.delayed for a in attempts] == [False, True, True]
    assert [r.status for r in h.sim.seen("batch_ok")] == [200, 200, 200]


def test_a_wrong_key_is_an_auth_failure(make_harness: Callable[..., Harness]) -> None:
    def wrong_key(sim: Simulator) -> dict[str, Any]:
        raw = config("batch_ok")(sim)
        raw["sources"][0]["auth"] = {"api_key": "sk-wrong", "organization": "org-1"}
        return raw

    h = make_harness(wrong_key, at=60.0, jobs=JOBS)
    h.exporter.poll_once()
    m = h.scrape()
    assert m.get("asyncjob_up", **labels("batch_ok")) == 0
    assert m.get("asyncjob_last_poll_error_info", **labels("batch_ok"), reason="auth") == 1
    sent = h.sim.seen("batch_ok")[-1].headers
    assert (sent["authorization"], sent["openai-organization"]) == ("Bearer sk-wrong", "org-1")


class Token:
    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str) -> Any:
        self.scopes.append(scopes)
        return type("AccessToken", (), {"token": "entra-token", "expires_on": time.time() + 3600})


@pytest.fixture
def entra() -> Iterator[Token]:
    token = Token()
    credentials.credential_factory = lambda _client_id: token
    credentials.reset()
    yield token
    credentials.credential_factory = None
    credentials.reset()


def test_azure_openai_with_an_entra_id_token(
    make_harness: Callable[..., Harness], entra: Token
) -> None:
    def with_entra(sim: Simulator) -> dict[str, Any]:
        raw = config()(sim)
        raw["sources"][1]["auth"] = {"azure_ad": {}}
        return raw

    h = make_harness(with_entra, at=300.0, jobs=JOBS, bearer_tokens=frozenset({"entra-token"}))
    h.exporter.poll_once()
    assert h.scrape().get("asyncjob_up", **labels("batch_azure", "azure")) == 1
    assert h.sim.seen("batch_azure")[-1].headers["authorization"] == "Bearer entra-token"
    assert entra.scopes == [("https://cognitiveservices.azure.com/.default",)]


# -- signed webhooks --------------------------------------------------------------------------


def signed(body: bytes, at: float, key: bytes = KEY, msg_id: str = "msg_1") -> dict[str, str]:
    """The Standard Webhooks headers, by the recipe: HMAC-SHA256 of "id.timestamp.body"."""
    mac = hmac.new(key, f"{msg_id}.{int(at)}.".encode() + body, hashlib.sha256).digest()
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at)),
            "webhook-signature": "v1," + base64.b64encode(mac).decode(),
            "Content-Type": "application/json"}  # fmt: skip


def event(kind: str, job_id: str) -> bytes:
    return json.dumps({"id": "evt_1", "object": "event", "type": kind,
                       "created_at": int(time.time()), "data": {"id": job_id}}).encode()  # fmt: skip


def results(h: Harness) -> dict[str, float | None]:
    m = h.scrape()
    return {result: m.get("asyncjob_webhooks_total", provider=NAME, source="openai",
                          result=result)
            for result in ("registered", "known", "unauthorized", "invalid")}  # fmt: skip


def test_a_signed_call_registers_the_batch_and_a_bad_one_is_refused(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(config(), at=300.0, jobs=JOBS, start_polling=True)
    hook = f"{h.url}/api/v1/webhooks/openai/openai"
    body = event("batch.completed", "batch_partial")
    answer = requests.post(hook, data=body, headers=signed(body, time.time()), timeout=10)
    assert (answer.status_code, answer.json()) == (200, {"result": "registered"})
    wait_until(lambda: h.scrape().get("asyncjob_state", **labels("batch_partial"),
               state="partially_succeeded") == 1, what="the batch polled")  # fmt: skip
    record = h.exporter.store.get("openai", "batch_partial")
    assert record is not None
    assert record.origin == "webhook"
    refused = {
        "stale": signed(body, time.time() - 301),
        "post-dated": signed(body, time.time() + 301),
        "another key": signed(body, time.time(), key=b"not the source's key"),
        "another body": signed(event("batch.completed", "batch_ok"), time.time()),
        "unsigned": {"Content-Type": "application/json"},
    }
    for what, headers in refused.items():
        answer = requests.post(hook, data=body, headers=headers, timeout=10)
        assert answer.status_code == 401, what
    assert results(h) == {"registered": 1, "known": 0, "unauthorized": 5, "invalid": 0}
    other = event("fine_tuning.job.succeeded", "ftjob-1")
    answer = requests.post(hook, data=other, headers=signed(other, time.time()), timeout=10)
    assert answer.status_code == 400  # signed, but names no batch
    assert results(h)["invalid"] == 1


def test_the_openai_python_signed_vector_verifies_through_the_library(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """openai-python's own test vector (a response.completed event), at its timestamp: the
    library finds the signature good, and the event names no batch."""
    at = datetime.fromtimestamp(VECTOR["timestamp"], UTC)
    frozen = type("Frozen", (datetime,), {"now": staticmethod(lambda tz=None: at)})  # noqa: ARG005
    monkeypatch.setattr(standardwebhooks.webhooks, "datetime", frozen)
    assert PROVIDER.webhook is not None
    call = webhooks.WebhookCall("openai", "openai", signature=VECTOR["headers"])
    body = VECTOR["payload"].encode()
    assert webhooks.proven(PROVIDER.webhook, VECTOR["secret"], call, body, VECTOR["timestamp"])
    assert PROVIDER.webhook.job_id(json.loads(body)) is None  # a response event, not a batch
    tampered = body.replace(b"resp_123", b"resp_124")
    assert not webhooks.proven(PROVIDER.webhook, VECTOR["secret"], call, tampered,
                               VECTOR["timestamp"])  # fmt: skip


def test_the_vector_sent_now_is_refused_as_stale(make_harness: Callable[..., Harness]) -> None:
    """Its signature was made in 2025: sent today it is a replay, refused from its head."""

    def vector_secret(sim: Simulator) -> dict[str, Any]:
        return config(secret=VECTOR["secret"])(sim)

    h = make_harness(vector_secret, at=300.0, jobs=JOBS)
    answer = requests.post(f"{h.url}/api/v1/webhooks/openai/openai", data=VECTOR["payload"],
                           headers=VECTOR["headers"], timeout=10)  # fmt: skip
    assert answer.status_code == 401
    assert results(h)["unauthorized"] == 1
