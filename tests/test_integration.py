"""Exporter and simulator over real HTTP on 127.0.0.1: exposed values, retries, faults, secrets.

The simulator's clock is held still (ManualClock), so each job is at a known point of its
timeline; the expected numbers below follow from the demo jobs (DEMO_JOBS) and renderers in each
provider's part of the simulator (exporter/providers/*/simulator.py), worked out by hand in the
comments.
"""

from __future__ import annotations

import platform
import threading
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest
import requests
from conftest import Harness, demo_raw_config, wait_until, with_source

from exporter.model import MAX_LABEL_LENGTH, ErrorReason, State
from exporter.providers import PROVIDERS
from exporter.simulator import DEMO_JOBS, Fault, Simulator, demo_config, render

if TYPE_CHECKING:
    from collections.abc import Callable

    MakeHarness = Callable[..., Harness]

# Every demo job's provider and the demo source that names it.
PROVIDER_OF = {demo.job_id: demo.api for demo in DEMO_JOBS}
SOURCE_OF = {
    job_id: source["name"]
    for source in demo_config("http://127.0.0.1:1")["sources"]
    for job_id in source.get("job_ids", [])
}


def job(job_id: str, **labels: str) -> dict[str, str]:
    return {
        "provider": PROVIDER_OF[job_id],
        "source": SOURCE_OF[job_id],
        "job_id": job_id,
        **labels,
    }


def source_labels(source: str, provider: str, **labels: str) -> dict[str, str]:
    return {"provider": provider, "source": source, **labels}


def statuses(sim: Simulator, job_id: str) -> list[int]:
    return [r.status for r in sim.seen(job_id)]


def test_every_provider_mid_flight(make_harness: MakeHarness) -> None:
    """At t=60 s every provider's job is exposed with the values its API gives."""
    assert set(PROVIDER_OF.values()) == set(PROVIDERS)  # every provider has a demo job
    assert set(SOURCE_OF) == set(PROVIDER_OF)  # which the demo config names
    h = make_harness(at=60.0)
    h.exporter.poll_once()
    m = h.scrape()
    for job_id in PROVIDER_OF:
        assert m.get("asyncjob_up", **job(job_id)) == 1.0, job_id

    # train-ok: 55 s into 180 s -> 30.6% done; training is the first 80% -> 38%, evaluation 0.
    assert m.get("asyncjob_progress_ratio", **job("train-ok", phase="training")) == 0.38
    assert m.get("asyncjob_progress_ratio", **job("train-ok", phase="evaluation")) == 0.0
    assert m.get("asyncjob_progress_ratio", **job("train-ok", phase="overall")) == 0.19
    assert m.get("asyncjob_state", **job("train-ok", state="running")) == 1.0
    started = h.sim.started_at
    assert m.get("asyncjob_created_timestamp_seconds", **job("train-ok")) == pytest.approx(
        started.timestamp()
    )
    assert m.get("asyncjob_started_timestamp_seconds", **job("train-ok")) == pytest.approx(
        started.timestamp() + 5
    )
    # The API's estimate covers training only: 5 s queued + 80% of 180 s.
    assert m.get(
        "asyncjob_estimated_completion_timestamp_seconds", **job("train-ok")
    ) == pytest.approx(started.timestamp() + 149)
    assert m.get("asyncjob_expiration_timestamp_seconds", **job("train-ok")) == pytest.approx(
        (started + timedelta(days=7)).timestamp()
    )
    assert m.get("asyncjob_last_update_timestamp_seconds", **job("train-ok")) == pytest.approx(
        started.timestamp() + 60
    )
    assert (
        m.get(
            "asyncjob_info",
            **job(
                "train-ok",
                vendor_status="running",
                display_name="loan-model-v2",
                project="LoanAgreements",
            ),
        )
        == 1.0
    )

    # train-fail stops at 40% of its work: training 50%, state failed, one error.
    assert m.get("asyncjob_state", **job("train-fail", state="failed")) == 1.0
    assert m.get("asyncjob_progress_ratio", **job("train-fail", phase="overall")) == 0.25
    assert m.get("asyncjob_errors", **job("train-fail")) == 1.0

    # analyze-ok: 55/120 of 4 tasks -> 1 completed, 3 in progress.
    assert m.get("asyncjob_tasks", **job("analyze-ok", state="completed")) == 1.0
    assert m.get("asyncjob_tasks", **job("analyze-ok", state="in_progress")) == 3.0
    assert m.get("asyncjob_tasks", **job("analyze-ok", state="failed")) == 0.0
    assert m.get("asyncjob_progress_ratio", **job("analyze-ok", phase="overall")) == 0.25

    # ta-ok: 55/90 of 2 tasks -> 1 completed.
    assert m.get("asyncjob_progress_ratio", **job("ta-ok", phase="overall")) == 0.5
    assert m.get("asyncjob_state", **job("ta-ok", state="running")) == 1.0

    # batch-partial: 55/100 of 10 documents -> 5 finished, the first 2 of them failed.
    expected_docs = {
        "succeeded": 3,
        "failed": 2,
        "in_progress": 1,
        "not_started": 4,
        "cancelled": 0,
    }
    for state, value in expected_docs.items():
        assert m.get("asyncjob_documents", **job("batch-partial", state=state)) == value, state
    assert m.get("asyncjob_translation_characters_charged_total", **job("batch-partial")) == 4500.0
    assert m.types["asyncjob_translation_characters_charged"] == "counter"
    assert m.get("asyncjob_progress_ratio", **job("batch-partial", phase="overall")) == 0.5

    # sd-ok: 55/200 of 6 steps -> step 1 done, 5 to go, ETA ceil(5 * 200/6/60) = 3 minutes.
    assert m.get("asyncjob_progress_ratio", **job("sd-ok", phase="overall")) == pytest.approx(1 / 6)
    assert (
        m.get(
            "asyncjob_info",
            **job("sd-ok", vendor_status="training_success", display_name="", project=""),
        )
        == 1.0
    )
    polled = m.get("asyncjob_last_poll_success_timestamp_seconds", **job("sd-ok"))
    eta = m.get("asyncjob_estimated_completion_timestamp_seconds", **job("sd-ok"))
    assert polled is not None
    assert eta == pytest.approx(polled + 180, abs=1)

    assert (
        m.get(
            "asyncjob_tracked_jobs", provider="azure_language_training", source="language-training"
        )
        == 2.0
    )
    translator = source_labels("translator", "azure_document_translation")
    assert m.get("asyncjob_requests_total", **translator) == 2.0
    assert m.get("asyncjob_request_duration_seconds_count", **translator) == 2.0
    assert m.get("asyncjob_request_duration_seconds_bucket", **translator, le="+Inf") == 2.0


def test_finished_jobs(make_harness: MakeHarness) -> None:
    """Long after the start: successes at 1, the stall stuck, counters and warnings final."""
    h = make_harness(at=1000.0)
    h.exporter.poll_once()
    m = h.scrape()
    for job_id in ("train-ok", "analyze-ok", "ta-ok", "batch-ok", "batch-partial", "sd-ok"):
        assert m.get("asyncjob_state", **job(job_id, state="succeeded")) == 1.0, job_id
        assert m.get("asyncjob_progress_ratio", **job(job_id, phase="overall")) == 1.0, job_id
        assert (
            sum(
                v
                for (n, _), v in m.samples.items()
                if n == "asyncjob_state" and ("job_id", job_id) in _
            )
            == 1
        )
    assert m.get("asyncjob_warnings", **job("train-ok")) == 1.0
    assert (
        m.get(
            "asyncjob_info",
            **job(
                "ta-ok", vendor_status="completed", display_name="Legacy entity pass", project=""
            ),
        )
        == 1.0
    )
    assert m.get("asyncjob_translation_characters_charged_total", **job("batch-ok")) == 30000.0
    assert m.get("asyncjob_documents", **job("batch-partial", state="failed")) == 2.0
    assert m.get("asyncjob_state", **job("sd-stalled", state="running")) == 1.0
    assert m.get("asyncjob_progress_ratio", **job("sd-stalled", phase="overall")) == pytest.approx(
        2 / 6
    )
    # A finished job has no estimate left.
    assert m.get("asyncjob_estimated_completion_timestamp_seconds", **job("train-ok")) is None


def test_never_polled_job_has_only_up_and_every_reason_starts_at_zero(
    make_harness: MakeHarness,
) -> None:
    h = make_harness()
    m = h.scrape()
    job_series = {n for (n, labels), _ in m.samples.items() if ("job_id", "train-ok") in labels}
    assert job_series == {"asyncjob_up"}
    assert m.get("asyncjob_up", **job("train-ok")) == 0.0
    for source, provider in {(SOURCE_OF[j], PROVIDER_OF[j]) for j in PROVIDER_OF}:
        for reason in ErrorReason:
            labels = source_labels(source, provider, reason=reason.value)
            assert m.get("asyncjob_request_errors_total", **labels) == 0.0, labels
        assert m.get("asyncjob_requests_total", **source_labels(source, provider)) == 0.0


def test_terminal_jobs_are_polled_no_more(make_harness: MakeHarness) -> None:
    """Background polling: the stalled job keeps being polled, the finished ones stop at one."""
    h = make_harness(at=1000.0, start_polling=True)
    wait_until(lambda: len(h.sim.seen("sd-stalled")) >= 4, what="four polls of the stalled job")
    assert len(h.sim.seen("train-ok")) == 1
    assert len(h.sim.seen("batch-partial")) == 1
    assert h.scrape().get("asyncjob_state", **job("train-ok", state="succeeded")) == 1.0


def test_5xx_is_retried(make_harness: MakeHarness) -> None:
    h = make_harness()
    h.sim.set_fault("batch-ok", Fault(status=500, times=2))
    h.exporter.poll_once()
    m = h.scrape()
    assert statuses(h.sim, "batch-ok") == [500, 500, 200]
    assert m.get("asyncjob_up", **job("batch-ok")) == 1.0
    translator = source_labels("translator", "azure_document_translation")
    assert (
        m.get("asyncjob_requests_total", **translator) == 4.0
    )  # 3 for batch-ok, 1 for batch-partial
    assert m.get("asyncjob_request_errors_total", **translator, reason="server_error") == 2.0


def test_failing_job_keeps_last_good_values_then_recovers(make_harness: MakeHarness) -> None:
    """Retries exhausted: up 0, the reason counted per attempt, the last values still exposed."""
    h = make_harness()
    h.exporter.poll_once()
    before = h.scrape()
    h.sim.set_fault("batch-partial", Fault(status=503))
    h.exporter.poll_once()
    m = h.scrape()
    assert statuses(h.sim, "batch-partial") == [200, 503, 503, 503, 503]  # retries: 3
    assert m.get("asyncjob_up", **job("batch-partial")) == 0.0
    for name in (
        "asyncjob_documents",
        "asyncjob_translation_characters_charged_total",
        "asyncjob_state",
    ):
        assert m.series(name, job_id="batch-partial") == before.series(name, job_id="batch-partial")
    assert m.get("asyncjob_documents", **job("batch-partial", state="failed")) == 2.0
    errors = m.get(
        "asyncjob_request_errors_total",
        **source_labels("translator", "azure_document_translation", reason="server_error"),
    )
    assert errors == 4.0
    assert m.get("asyncjob_up", **job("batch-ok")) == 1.0  # the other job of the source is fine
    assert m.series("asyncjob_last_poll_error_info", job_id="batch-partial") == [
        job("batch-partial", reason="server_error")
    ]
    assert (
        m.get("asyncjob_last_poll_error_info", **job("batch-partial", reason="server_error")) == 1
    )
    h.sim.clear_fault("batch-partial")
    h.exporter.poll_once()
    recovered = h.scrape()
    assert recovered.get("asyncjob_up", **job("batch-partial")) == 1.0
    assert recovered.series("asyncjob_last_poll_error_info", job_id="batch-partial") == []


def test_retry_after_is_honoured(make_harness: MakeHarness) -> None:
    """After a 429 with Retry-After: 1 the next attempt comes no sooner than a second later."""
    h = make_harness(lambda sim: demo_raw_config(sim, max_retry_wait="5s"))
    h.sim.set_fault("analyze-ok", Fault(status=429, retry_after="1", times=1))
    h.exporter.poll_once()
    first, second = h.sim.seen("analyze-ok")
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 1.0
    m = h.scrape()
    assert m.get("asyncjob_up", **job("analyze-ok")) == 1.0
    labels = source_labels("language-analyze", "azure_language_analyze_text", reason="throttled")
    assert m.get("asyncjob_request_errors_total", **labels) == 1.0


def test_absurd_retry_after_is_capped(make_harness: MakeHarness) -> None:
    """Retry-After: 86400 waits max_retry_wait (200ms here), not a day."""
    h = make_harness()
    h.sim.set_fault("analyze-ok", Fault(status=429, retry_after="86400", times=1))
    poll = threading.Thread(target=h.exporter.poll_once)
    poll.start()
    poll.join(timeout=30)
    assert not poll.is_alive(), "the poll waited out Retry-After instead of the cap"
    assert statuses(h.sim, "analyze-ok") == [429, 200]


def test_demo_429_burst_exhausts_retries(make_harness: MakeHarness) -> None:
    """batch-ok answers 429 from 30 s to 40 s: every attempt throttled, the job marked down."""
    h = make_harness(at=35.0)
    h.exporter.poll_once()
    m = h.scrape()
    assert statuses(h.sim, "batch-ok") == [429, 429, 429, 429]
    assert m.get("asyncjob_up", **job("batch-ok")) == 0.0
    labels = source_labels("translator", "azure_document_translation", reason="throttled")
    assert m.get("asyncjob_request_errors_total", **labels) == 4.0


def test_404_after_running_marks_not_found_and_keeps_values(make_harness: MakeHarness) -> None:
    h = make_harness()
    h.exporter.poll_once()
    h.sim.set_fault("train-ok", Fault(status=404))
    h.exporter.poll_once()
    m = h.scrape()
    assert statuses(h.sim, "train-ok") == [200, 404]  # a 404 is not retried
    assert m.get("asyncjob_up", **job("train-ok")) == 0.0
    assert m.get("asyncjob_progress_ratio", **job("train-ok", phase="overall")) == 0.19
    labels = source_labels("language-training", "azure_language_training", reason="not_found")
    assert m.get("asyncjob_request_errors_total", **labels) == 1.0


def test_unknown_job_id_is_not_found(make_harness: MakeHarness) -> None:
    h = make_harness(with_source(3, job_ids=["batch-ok", "no-such-batch"]))
    h.exporter.poll_once()
    m = h.scrape()
    labels = {
        "provider": "azure_document_translation",
        "source": "translator",
        "job_id": "no-such-batch",
    }
    assert m.get("asyncjob_up", **labels) == 0.0
    assert m.series("asyncjob_state", job_id="no-such-batch") == []
    reason = source_labels("translator", "azure_document_translation", reason="not_found")
    assert m.get("asyncjob_request_errors_total", **reason) == 1.0


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Fault(body=b'{"status": "running", '), "bad_response"),
        (
            Fault(body=b"<html><body>Service error</body></html>", content_type="text/html"),
            "bad_response",
        ),
        (Fault(body=b'{"unexpected": "shape"}'), "bad_response"),
        (Fault(body=b"x" * 5000), "bad_response"),
        (Fault(delay=1.5), "timeout"),
    ],
    ids=["malformed-json", "html-200", "wrong-shape", "over-size-cap", "slow-past-timeout"],
)
def test_bad_answers_are_counted_and_lose_nothing(
    make_harness: MakeHarness, fault: Fault, reason: str
) -> None:
    """A bad answer for one job: its reason counted, its last values kept, the others untouched."""
    h = make_harness(lambda sim: demo_raw_config(sim, timeout="1s", max_response_bytes=4096))
    h.exporter.poll_once()
    before = h.scrape()
    h.sim.set_fault("analyze-ok", fault)
    h.exporter.poll_once()
    m = h.scrape()
    assert m.get("asyncjob_up", **job("analyze-ok")) == 0.0
    assert m.series("asyncjob_tasks", job_id="analyze-ok") == before.series(
        "asyncjob_tasks", job_id="analyze-ok"
    )
    assert m.get("asyncjob_tasks", **job("analyze-ok", state="completed")) == 1.0
    labels = source_labels("language-analyze", "azure_language_analyze_text", reason=reason)
    # A timeout is retried like a connection error: 1 attempt + 3 retries, each counted.
    assert m.get("asyncjob_request_errors_total", **labels) == (4.0 if reason == "timeout" else 1.0)
    assert all(m.get("asyncjob_up", **job(j)) == 1.0 for j in PROVIDER_OF if j != "analyze-ok")


def test_stable_diffusion_error_with_http_200_is_a_failed_poll(make_harness: MakeHarness) -> None:
    """A wrong SD key gets HTTP 200 {"status": "error"}: reason auth, no job state invented."""
    h = make_harness(with_source(4, auth={"api_key": "wrong-sd-key"}))
    h.exporter.poll_once()
    m = h.scrape()
    assert m.get("asyncjob_up", **job("sd-ok")) == 0.0
    assert m.series("asyncjob_state", job_id="sd-ok") == []
    labels = source_labels("stable-diffusion", "stable_diffusion_finetune", reason="auth")
    assert m.get("asyncjob_request_errors_total", **labels) == 2.0


def test_wrong_azure_key_is_auth_and_not_retried(make_harness: MakeHarness) -> None:
    h = make_harness(with_source(1, auth={"subscription_key": "wrong-key"}))
    h.exporter.poll_once()
    assert statuses(h.sim, "analyze-ok") == [401]
    labels = source_labels("language-analyze", "azure_language_analyze_text", reason="auth")
    assert h.scrape().get("asyncjob_request_errors_total", **labels) == 1.0


def test_requests_carry_the_keys_the_apis_expect(make_harness: MakeHarness) -> None:
    """Azure: Ocp-Apim-Subscription-Key (+ Region); SD: the key in the JSON body, not the URL."""
    h = make_harness()
    h.exporter.poll_once()
    (batch,) = h.sim.seen("batch-ok")
    assert batch.headers["ocp-apim-subscription-key"] == "demo-key"
    assert batch.headers["ocp-apim-subscription-region"] == "westeurope"
    assert batch.path == "/translator/document/batches/batch-ok?api-version=2024-05-01"
    (sd,) = h.sim.seen("sd-ok")
    assert (sd.method, sd.path, sd.body) == (
        "POST",
        "/api/v3/fine_tune_status/sd-ok",
        b'{"key": "demo-key"}',
    )
    (ta,) = h.sim.seen("ta-ok")
    assert ta.path == "/text/analytics/v3.2-preview.2/analyze/jobs/ta-ok"


def test_translation_v1_route(make_harness: MakeHarness) -> None:
    """api_version v1.1 uses the older route."""
    h = make_harness(with_source(3, api_version="v1.1"))
    h.exporter.poll_once()
    assert h.sim.seen("batch-ok")[0].path == "/translator/text/batch/v1.1/batches/batch-ok"
    assert h.scrape().get("asyncjob_up", **job("batch-ok")) == 1.0


def test_last_progress_change_moves_only_when_progress_does(make_harness: MakeHarness) -> None:
    h = make_harness(at=60.0)
    h.exporter.poll_once()
    first = h.scrape()
    h.exporter.poll_once()
    second = h.scrape()
    change = "asyncjob_last_progress_change_timestamp_seconds"
    success = "asyncjob_last_poll_success_timestamp_seconds"
    assert second.get(change, **job("train-ok")) == first.get(change, **job("train-ok"))
    assert second.get(success, **job("train-ok")) >= first.get(success, **job("train-ok"))  # type: ignore[operator]
    h.clock.now = 100.0
    h.exporter.poll_once()
    third = h.scrape()
    assert third.get(change, **job("train-ok")) > first.get(change, **job("train-ok"))  # type: ignore[operator]


def test_endpoints(make_harness: MakeHarness) -> None:
    """Landing page links the metrics; health answers at once; ready once polling runs."""
    h = make_harness()
    landing = requests.get(f"{h.url}/", timeout=5)
    assert landing.status_code == 200
    assert "href='/metrics'" in landing.text
    assert requests.get(f"{h.url}/-/healthy", timeout=5).status_code == 200
    assert requests.get(f"{h.url}/-/ready", timeout=5).status_code == 503
    h.exporter.start()
    assert requests.get(f"{h.url}/-/ready", timeout=5).status_code == 200
    assert requests.get(f"{h.url}/nope", timeout=5).status_code == 404


def test_help_texts_say_values_are_polled(make_harness: MakeHarness) -> None:
    h = make_harness()
    h.exporter.poll_once()
    m = h.scrape()
    assert "Polled in the background every 200ms" in m.help["asyncjob_state"]
    assert "Polled in the background" in m.help["asyncjob_translation_characters_charged"]
    (build,) = m.series("asyncjob_build_info")
    assert build["version"]
    assert build["python_version"] == platform.python_version()
    assert m.get("asyncjob_build_info", **build) == 1.0


def test_states_cover_the_canonical_set(make_harness: MakeHarness) -> None:
    """One series per canonical state for every polled job, exactly one of them 1."""
    h = make_harness()
    h.exporter.poll_once()
    m = h.scrape()
    for job_id in PROVIDER_OF:
        series = m.series("asyncjob_state", job_id=job_id)
        assert {s["state"] for s in series} == {s.value for s in State}
        assert sum(m.get("asyncjob_state", **s) or 0 for s in series) == 1.0


def test_demo_fine_tune_progress_keeps_rising_past_a_long_log(make_harness: MakeHarness) -> None:
    """sd-ok (the worker's own wording) at 160 s: 4 of 6 steps done, the log well past 200
    characters. The old parser read only the first 200 and stayed at step 1 or 2."""
    h = make_harness(at=160.0)
    h.exporter.poll_once()
    assert h.sim.seen("sd-ok")[-1].status == 200
    m = h.scrape()
    # (160 - 5) / 200 of 6 steps -> floor(4.65) = 4 done, 2 more to go.
    assert m.get("asyncjob_progress_ratio", **job("sd-ok", phase="overall")) == pytest.approx(4 / 6)
    sd_ok = next(j for j in DEMO_JOBS if j.job_id == "sd-ok")
    log = render(sd_ok, 160.0, h.sim.started_at)["data"]
    assert len(log) > MAX_LABEL_LENGTH + 100  # step 4 starts well past the 200th character
    assert "Step:4 Stage 4 done, 2 More Steps to go" in log
