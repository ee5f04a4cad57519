"""Stable Diffusion webhooks over real HTTP: the token, the results, the poll they trigger."""

from __future__ import annotations

import socket
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import bcrypt
import pytest
import requests
from conftest import Harness, demo_raw_config, disk_full, fixture, wait_until

from exporter.api import Api
from exporter.config import ConfigError, parse_config
from exporter.server import HttpServer, make_app
from exporter.simulator import Fault
from exporter.storage import Storage
from exporter.webconfig import WebConfig, WebConfigFile

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from exporter.simulator import Simulator

TOKEN = "hook-secret-0123456789"
PAYLOAD = fixture(
    "stable_diffusion_finetune", "modelslab_docs-v2_training_webhook_payload.json"
)  # ModelsLab's own example: model_id F5jvdzGnYi, "deploying_gpu"
SD = {"provider": "stable_diffusion_finetune", "source": "stable-diffusion"}


def with_token(sim: Simulator) -> dict[str, Any]:
    """Polled every hour: a poll soon after a call is the webhook's doing."""
    raw = demo_raw_config(sim, poll_interval="1h")
    raw["sources"][4]["webhook_token"] = TOKEN
    return raw


def hook(h: Harness, source: str = "stable-diffusion") -> str:
    return f"{h.url}/api/v1/webhooks/stable-diffusion/{source}"


def results(h: Harness) -> dict[str, float | None]:
    m = h.scrape()
    names = ("registered", "known", "unauthorized", "invalid", "refused")
    return {r: m.get("asyncjob_webhooks_total", **SD, result=r) for r in names}


def test_a_call_registers_the_job_and_polls_it_at_once(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(with_token, start_polling=True)
    response = requests.post(hook(h), json=PAYLOAD, headers={"X-Webhook-Token": TOKEN}, timeout=10)
    assert (response.status_code, response.json()) == (200, {"result": "registered"})
    wait_until(lambda: h.sim.seen("F5jvdzGnYi"), what="the poll the call triggered")
    record = h.exporter.store.get("stable-diffusion", "F5jvdzGnYi")
    assert record is not None
    assert record.origin == "webhook"
    assert results(h) == {"registered": 1, "known": 0, "unauthorized": 0, "invalid": 0,
                          "refused": 0}  # fmt: skip


def test_a_call_the_storage_cannot_commit_is_503_and_counted(
    make_harness: Callable[..., Harness], tmp_path: Path
) -> None:
    """A 200 means committed: with the disk full the provider is told 503 (so it calls again),
    with the storage's reason, and the call counts as unsaved."""
    storage = Storage.open(tmp_path / "data")
    try:
        h = make_harness(with_token, storage=storage)
        disk_full(storage)
        storage.save(  # fill the last page, so that the job's row needs one more
            replace(r, job_id=f"filler-{n}") for n in range(30) for r in h.exporter.store.jobs()
        )
        response = requests.post(hook(h), json=PAYLOAD, headers={"X-Webhook-Token": TOKEN},
                                 timeout=10)  # fmt: skip
        assert response.status_code == 503
        assert "database or disk is full" in response.json()["error"]
        assert h.scrape().get("asyncjob_webhooks_total", **SD, result="unsaved") == 1
    finally:
        storage.close()


def test_a_known_job_is_polled_again_and_the_payload_is_not_believed(
    make_harness: Callable[..., Harness],
) -> None:
    """The call says model_ready; the job's state is what the API answers when polled."""
    h = make_harness(with_token, start_polling=True)
    wait_until(lambda: h.scrape().get("asyncjob_up", **SD, job_id="sd-ok") == 1, what="sd-ok up")
    polls = len(h.sim.seen("sd-ok"))
    claim = {**PAYLOAD, "model_id": "sd-ok", "training_status": "model_ready"}
    response = requests.post(f"{hook(h)}?token={TOKEN}", json=claim, timeout=10)
    assert (response.status_code, response.json()) == (200, {"result": "known"})
    wait_until(lambda: len(h.sim.seen("sd-ok")) > polls, what="the poll the call triggered")
    m = h.scrape()
    assert m.get("asyncjob_state", **SD, job_id="sd-ok", state="running") == 1
    assert m.get("asyncjob_webhooks_total", **SD, result="known") == 1


@pytest.mark.parametrize(
    ("headers", "query"),
    [({}, ""), ({"X-Webhook-Token": "wrong"}, ""), ({}, "?token=wrong"), ({}, f"?token={TOKEN}x")],
    ids=["no-token", "wrong-header", "wrong-query", "longer-token"],
)
def test_a_wrong_token_is_401_and_counted(
    make_harness: Callable[..., Harness], headers: dict[str, str], query: str
) -> None:
    h = make_harness(with_token)
    response = requests.post(f"{hook(h)}{query}", json=PAYLOAD, headers=headers, timeout=10)
    assert (response.status_code, response.json()) == (401, {"error": REFUSED})
    assert h.exporter.store.get("stable-diffusion", "F5jvdzGnYi") is None
    assert results(h)["unauthorized"] == 1


@pytest.mark.parametrize(
    "body",
    [b"{}", b'{"model_id": 7}', b'{"model_id": "../x"}', b"not json"],
    ids=["no-model-id", "model-id-not-a-string", "bad-model-id", "not-json"],
)
def test_a_call_without_a_usable_job_is_400(
    make_harness: Callable[..., Harness], body: bytes
) -> None:
    h = make_harness(with_token)
    response = requests.post(hook(h), data=body, headers={"X-Webhook-Token": TOKEN}, timeout=10)
    assert (response.status_code, response.json()) == (400, {"error": "webhook invalid"})
    assert results(h)["invalid"] == 1


REFUSED = "no such webhook, or a wrong token"


def test_an_unknown_source_and_a_wrong_token_get_the_same_answer(
    make_harness: Callable[..., Harness],
) -> None:
    """Source names cannot be probed without the token: an unknown source, a source that takes
    no webhooks and a wrong token are answered alike, before any body is read."""
    h = make_harness(with_token)
    answers = set()
    for url in (hook(h, "no-such-source"), hook(h, "translator"), hook(h)):
        response = requests.post(
            url, json=PAYLOAD, headers={"X-Webhook-Token": "wrong"}, timeout=10
        )
        answers.add((response.status_code, response.content, response.headers["Content-Type"]))
    assert answers == {(401, b'{"error": "%s"}\n' % REFUSED.encode(), "application/json")}


def test_sources_without_a_token_and_other_paths_are_refused(
    make_harness: Callable[..., Harness],
) -> None:
    def no_token(sim: Simulator) -> dict[str, Any]:
        raw = demo_raw_config(sim)
        del raw["sources"][4]["webhook_token"]
        return raw

    h = make_harness(no_token)  # no webhook_token anywhere
    for url in (hook(h), hook(h, "translator"), f"{h.url}/api/v1/webhooks/other/stable-diffusion"):
        response = requests.post(url, json=PAYLOAD, headers={"X-Webhook-Token": TOKEN}, timeout=10)
        assert (response.status_code, response.json()) == (401, {"error": REFUSED}), url
    assert h.scrape().series("asyncjob_webhooks_total") == []
    wrong_method = requests.get(hook(h), timeout=10)
    assert (wrong_method.status_code, wrong_method.json()) == (
        405, {"error": "GET is not allowed here; use POST"}
    )  # fmt: skip
    assert wrong_method.headers["Allow"] == "POST"


def test_webhooks_need_no_basic_auth_but_metrics_do(
    make_harness: Callable[..., Harness],
) -> None:
    """ModelsLab cannot send a password: the token is the webhook's authentication."""
    h = make_harness(with_token)
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    web = WebConfig(WebConfigFile(basic_auth_users={"prometheus": hashed}))
    app = make_app(h.exporter.exposition, "/metrics", h.exporter.not_ready, web=web,
                   api=Api(h.exporter))  # fmt: skip
    server = HttpServer(app, "127.0.0.1:0")
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert requests.get(f"{base}/metrics", timeout=10).status_code == 401
        url = f"{base}/api/v1/webhooks/stable-diffusion/stable-diffusion"
        response = requests.post(url, json=PAYLOAD, headers={"X-Webhook-Token": TOKEN}, timeout=10)
        assert (response.status_code, response.json()) == (200, {"result": "registered"})
    finally:
        server.stop()


def test_both_token_forms_at_once_is_a_config_error(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    config = {"sources": [{"name": "sd", "provider": "stable_diffusion_finetune",
                           "auth": {"api_key": "k"}, "webhook_token": TOKEN,
                           "webhook_token_file": str(token_file)}]}  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        parse_config(config, env={})
    assert caught.value.problems == [
        ("sources[0].webhook_token_file", "set webhook_token or webhook_token_file, not both")
    ]


def test_a_call_during_a_poll_does_not_start_a_second_one(
    make_harness: Callable[..., Harness],
) -> None:
    """Two calls for a job whose poll hangs upstream: no second poll runs beside it (an older
    answer could land after a newer one); the job is polled again as soon as it returns."""
    h = make_harness(with_token, start_polling=True)
    wait_until(lambda: h.scrape().get("asyncjob_up", **SD, job_id="sd-ok") == 1, what="sd-ok up")
    h.sim.set_fault("sd-ok", Fault(delay=1.5, times=1))
    claim = {**PAYLOAD, "model_id": "sd-ok"}
    headers = {"X-Webhook-Token": TOKEN}
    assert requests.post(hook(h), json=claim, headers=headers, timeout=10).json() == {
        "result": "known"
    }
    wait_until(lambda: len(h.sim.seen("sd-ok")) < sd_ok_arrivals(h.sim), what="a poll hanging")
    assert requests.post(hook(h), json=claim, headers=headers, timeout=10).json() == {
        "result": "known"
    }
    wait_until(lambda: sd_ok_arrivals(h.sim) == 3, what="the poll asked for during the hang")
    hung, answered = arrival_times(h.sim)[1], h.sim.seen("sd-ok")[1].at
    again = arrival_times(h.sim)[2]
    assert again >= answered  # it waited for the hanging poll to return...
    assert again - hung >= 1.5  # ...which took the fault's 1.5 s


def sd_ok_arrivals(sim: Simulator) -> int:
    return sum(path.endswith("/sd-ok") for path in list(sim.arrivals))


def arrival_times(sim: Simulator) -> list[float]:
    pairs = list(zip(sim.arrived_at, sim.arrivals, strict=False))
    return [at for at, path in pairs if path.endswith("/sd-ok")]


def test_a_wrong_token_is_refused_before_the_body_is_read(
    make_harness: Callable[..., Harness],
) -> None:
    """A call with a wrong token that announces a body it never sends is answered at once: the
    token is checked from the head, and the body is never waited for."""
    h = make_harness(with_token)
    with socket.create_connection(("127.0.0.1", h.server.port), timeout=5) as conn:
        conn.sendall(
            b"POST /api/v1/webhooks/stable-diffusion/stable-diffusion?token=wrong HTTP/1.1\r\n"
            b"Host: x\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n"
        )
        assert conn.recv(100).startswith(b"HTTP/1.1 401")
