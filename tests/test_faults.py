"""Fault tolerance against the simulator, with background polling as in production.

For every fault: /metrics keeps answering 200 within a bound, the other sources' jobs keep
updating, the faulty job keeps its last good values with asyncjob_up 0 and the right reason,
and it recovers once the fault clears.
"""

from __future__ import annotations

import dataclasses
import json
import socket
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
import requests
from conftest import (
    FIXTURES,
    Harness,
    Metrics,
    demo_raw_config,
    free_port,
    poll_now,
    run_tool,
    wait_until,
    with_source,
)

from exporter import logging as exporter_logging
from exporter.model import ErrorReason
from exporter.providers import PROVIDERS
from exporter.simulator import Fault, SimJob, Simulator

if TYPE_CHECKING:
    from collections.abc import Callable

ANALYZE = {
    "provider": "azure_language_analyze_text",
    "source": "language-analyze",
    "job_id": "analyze-ok",
}
TRANSLATOR = {"provider": "azure_document_translation", "source": "translator"}
SCRAPE_BOUND = 2.0  # seconds a scrape may take, whatever the upstreams do


def fast(sim: Simulator) -> dict[str, Any]:
    return demo_raw_config(sim, poll_interval="200ms", timeout="1s", max_response_bytes=4096)


def scrape(h: Harness) -> Metrics:
    response = requests.get(f"{h.url}/metrics", timeout=SCRAPE_BOUND)
    assert response.status_code == 200
    return Metrics(response.text)


def other_source_keeps_updating(h: Harness) -> None:
    labels = {**TRANSLATOR, "job_id": "batch-partial"}
    before = scrape(h).get("asyncjob_last_poll_success_timestamp_seconds", **labels) or 0
    wait_until(
        lambda: (
            (scrape(h).get("asyncjob_last_poll_success_timestamp_seconds", **labels) or 0) > before
        ),
        what="the translator source to keep polling",
    )


def check_fault(
    h: Harness,
    labels: dict[str, str],
    reason: str,
    apply: Callable[[], None],
    clear: Callable[[], None],
) -> None:
    wait_until(lambda: scrape(h).get("asyncjob_up", **labels) == 1, what="a first good poll")
    good = scrape(h)
    apply()
    failing = wait_until(
        lambda: (
            (m := scrape(h)).get("asyncjob_last_poll_error_info", **labels, reason=reason) and m
        ),
        timeout=20,
        what=f"reason {reason}",
    )
    assert failing.get("asyncjob_up", **labels) == 0
    for name in (
        "asyncjob_state",
        "asyncjob_progress_ratio",
        "asyncjob_info",
        "asyncjob_tasks",
        "asyncjob_documents",
    ):
        kept = failing.series(name, job_id=labels["job_id"])
        assert kept == good.series(name, job_id=labels["job_id"]), name
        assert all(failing.get(name, **s) == good.get(name, **s) for s in kept), name
    other_source_keeps_updating(h)
    clear()
    wait_until(lambda: scrape(h).get("asyncjob_up", **labels) == 1, timeout=20, what="recovery")
    assert scrape(h).series("asyncjob_last_poll_error_info", job_id=labels["job_id"]) == []


FAULTS = [
    ("500", Fault(status=500), "server_error"),
    ("502", Fault(status=502), "server_error"),
    ("503", Fault(status=503), "server_error"),
    ("429-retry-after", Fault(status=429, retry_after="1"), "throttled"),
    ("429-no-retry-after", Fault(status=429), "throttled"),
    ("429-retry-after-a-day", Fault(status=429, retry_after="86400"), "throttled"),
    ("401", Fault(status=401), "auth"),
    ("403", Fault(status=403), "auth"),
    ("404-after-running", Fault(status=404), "not_found"),
    ("read-timeout", Fault(delay=1.5), "timeout"),
    ("never-answers", Fault(delay=30.0), "timeout"),
    ("trickles-a-byte-a-second", Fault(trickle=1.0), "timeout"),
    ("malformed-json", Fault(body=b'{"status": "running", '), "bad_response"),
    ("wrong-shape", Fault(body=b'[{"status": "running"}]'), "bad_response"),
    (
        "html-error-page-200",
        Fault(body=b"<html><h1>Gateway error</h1></html>", content_type="text/html"),
        "bad_response",
    ),
    ("larger-than-the-cap", Fault(body=b'{"pad": "' + b"x" * 10_000 + b'"}'), "bad_response"),
    ("reset-mid-body", Fault(cut_after=100), "connection"),
    ("stall-mid-body", Fault(cut_after=100, stall=1.5), "timeout"),
    ("hangs-up-before-answering", Fault(hang_up=True), "connection"),
]


@pytest.mark.parametrize(
    ("fault", "reason"), [(f, r) for _, f, r in FAULTS], ids=[n for n, _, _ in FAULTS]
)
def test_upstream_fault(make_harness: Callable[..., Harness], fault: Fault, reason: str) -> None:
    h = make_harness(fast, start_polling=True)
    check_fault(
        h,
        ANALYZE,
        reason,
        lambda: h.sim.set_fault("analyze-ok", fault),
        lambda: h.sim.clear_fault("analyze-ok"),
    )


def test_connection_refused(make_harness: Callable[..., Harness]) -> None:
    """The upstream's port closes, then a server comes back on it."""
    port = free_port()
    upstreams = [Simulator(port=port).start()]

    def config(sim: Simulator) -> dict[str, Any]:
        raw = fast(sim)
        raw["sources"][1]["endpoint"] = f"http://127.0.0.1:{port}"
        return raw

    h = make_harness(config, at=60.0, start_polling=True)
    try:
        check_fault(
            h,
            ANALYZE,
            "connection",
            upstreams[0].stop,
            lambda: upstreams.append(Simulator(port=port).start()),
        )
    finally:
        upstreams[-1].stop()


def test_dns_failure(make_harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch) -> None:
    """A name that stops resolving. This machine's resolver is off-box, so no real query may be
    sent: the failure is injected where the resolver is called, for this test's host only."""
    real = socket.getaddrinfo
    broken = {"now": False}

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "language.upstream.test":
            if broken["now"]:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    def config(sim: Simulator) -> dict[str, Any]:
        raw = fast(sim)
        raw["sources"][1]["endpoint"] = f"http://language.upstream.test:{sim.port}"
        return raw

    h = make_harness(config, start_polling=True)

    def break_dns() -> None:
        broken["now"] = True
        h.sim.drop_connections()  # kept-alive connections would not need the name again

    check_fault(h, ANALYZE, "connection", break_dns, lambda: broken.update(now=False))


def test_auth_failures_back_off_and_log_once(
    make_harness: Callable[..., Harness], capsys: pytest.CaptureFixture[str]
) -> None:
    """A revoked key: no retry storm (one request per 10 intervals) and one log line for it."""
    exporter_logging.configure("warn", "json")
    h = make_harness(fast, start_polling=True)
    h.sim.set_fault("analyze-ok", Fault(status=401))
    wait_until(
        lambda: scrape(h).get("asyncjob_last_poll_error_info", **ANALYZE, reason="auth"),
        what="auth failure",
    )
    failed_at = len(h.sim.seen("analyze-ok"))
    polls = len(h.sim.seen("batch-partial"))
    # Eight intervals of the healthy job pass; the failing one waits ten before it tries again.
    wait_until(
        lambda: len(h.sim.seen("batch-partial")) >= polls + 8, what="eight more healthy polls"
    )
    assert len(h.sim.seen("analyze-ok")) <= failed_at + 1
    assert [r.status for r in h.sim.seen("analyze-ok")][-1] == 401
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    assert [(e["source"], e["reason"]) for e in lines if e["event"] == "poll failing"] == [
        ("language-analyze", "auth")
    ]


def test_parser_exception_is_contained(
    make_harness: Callable[..., Harness],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A parser bug costs one poll per job: counted as bad_response, logged, the thread lives."""
    provider = PROVIDERS["azure_language_analyze_text"]

    def broken(payload: Any, polled_at: Any) -> Any:
        raise ZeroDivisionError("a bug in a parser")

    monkeypatch.setitem(PROVIDERS, provider.name, dataclasses.replace(provider, parse=broken))
    exporter_logging.configure("warn", "json")
    h = make_harness(fast, start_polling=True)
    m = wait_until(
        lambda: (
            (
                (m := scrape(h)).get(
                    "asyncjob_request_errors_total",
                    provider=provider.name,
                    source="language-analyze",
                    reason="bad_response",
                )
                or 0
            )
            >= 3
            and m
        ),
        what="three failed parses",
    )
    assert m.get("asyncjob_up", **ANALYZE) == 0
    assert requests.get(f"{h.url}/-/ready", timeout=5).status_code == 200
    other_source_keeps_updating(h)
    logged = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    failures = [e for e in logged if e["event"] == "bug in the exporter"]
    assert len(failures) == 1  # when the job starts failing, not once per poll
    failure = failures[0]
    assert (failure["source"], failure["job_id"]) == ("language-analyze", "analyze-ok")
    assert "ZeroDivisionError" in failure["exception"]


@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnhandledThreadExceptionWarning"
)  # killed on purpose
def test_dead_scheduler_is_restarted_and_ready_says_so(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(fast, start_polling=True)
    poller = h.exporter._pollers["language-analyze"]
    real_schedule = poller._schedule

    def die(_running: object) -> float | None:
        poller._schedule = real_schedule  # type: ignore[method-assign]  # the restart runs normally
        raise SystemExit  # ends the thread; `except Exception` in the loop does not catch it

    wait_until(lambda: h.sim.seen("analyze-ok"), what="a first poll")
    poller._schedule = die  # type: ignore[method-assign,assignment]
    poller._wake_up()
    wait_until(lambda: not poller.alive, what="the scheduler thread to die")
    ready = requests.get(f"{h.url}/-/ready", timeout=5)
    assert (ready.status_code, ready.text) == (
        503,
        "Service Unavailable: scheduler not running for source(s) language-analyze\n",
    )
    h.exporter.supervise()
    assert requests.get(f"{h.url}/-/ready", timeout=5).status_code == 200
    polls = len(h.sim.seen("analyze-ok"))
    wait_until(lambda: len(h.sim.seen("analyze-ok")) > polls, what="polling to resume")


def test_max_jobs_refuses_and_counts(make_harness: Callable[..., Harness], tmp_path: Any) -> None:
    h = make_harness(
        with_source(3, max_jobs=1, job_ids=["batch-ok", "batch-partial", "batch-extra"])
    )
    h.exporter.poll_once()
    m = scrape(h)
    assert m.series("asyncjob_up", source="translator") == [{**TRANSLATOR, "job_id": "batch-ok"}]
    assert m.get("asyncjob_jobs_rejected_total", **TRANSLATOR, reason="limit") == 2
    assert m.get("asyncjob_tracked_jobs", **TRANSLATOR) == 1
    assert (
        m.get(
            "asyncjob_jobs_rejected_total",
            provider="azure_language_training",
            source="language-training",
            reason="limit",
        )
        == 0
    )
    h.exporter.apply(h.exporter.config)  # a reload with the same file refuses them again
    assert scrape(h).get("asyncjob_jobs_rejected_total", **TRANSLATOR, reason="limit") == 4


NASTY = 'a "quoted" name\\ with a backslash\nand a newline\ta tab\x07bell ' + "é" * 300


def test_hostile_label_values_are_escaped_and_truncated(
    make_harness: Callable[..., Harness],
) -> None:
    """Quotes, backslashes, newlines and control characters from an API round-trip intact."""
    jobs = (SimJob("nasty", "azure_language_analyze_text", display_name=NASTY),)
    h = make_harness(with_source(1, job_ids=["nasty"]), jobs=jobs)
    h.exporter.poll_once()
    text = requests.get(f"{h.url}/metrics", timeout=5).text
    (info,) = Metrics(text).series("asyncjob_info", job_id="nasty")
    assert info["display_name"] == NASTY[:200]
    assert '\\"quoted\\"' in text
    assert "\\\\ with" in text
    assert "\\nand a newline" in text
    result = run_tool("promtool", "check", "metrics", stdin=text.encode())
    assert result.returncode == 0, result.stdout + result.stderr


DEEP = b"[" * 100_000 + b"]" * 100_000  # valid JSON, nested past any recursion limit
BODY_FAULTS = [
    # (fault, reason, attempts per poll: connection errors and timeouts are retried 3 times)
    ("reset-mid-body", Fault(cut_after=100), "connection", 4),
    ("stall-mid-body", Fault(cut_after=100, stall=1.5), "timeout", 4),
    ("hangs-up-before-answering", Fault(hang_up=True), "connection", 4),
    ("nested-100000-deep", Fault(body=DEEP), "bad_response", 1),
]


@pytest.mark.parametrize(
    ("fault", "reason", "attempts"),
    [(f, r, a) for _, f, r, a in BODY_FAULTS],
    ids=[n for n, *_ in BODY_FAULTS],
)
def test_body_faults_are_classified_retried_and_counted(
    make_harness: Callable[..., Harness], fault: Fault, reason: str, attempts: int
) -> None:
    """Faults inside the body get their own reason, are retried where a retry can help, and
    every attempt is a request: errors never outnumber requests, and the upstream received as
    many as were counted (no client library resends one behind the count)."""
    h = make_harness(lambda sim: demo_raw_config(sim, timeout="1s", max_response_bytes=1024 * 1024))
    h.exporter.poll_once()
    before = scrape(h)
    sent = len(h.sim.seen("analyze-ok"))
    h.sim.set_fault("analyze-ok", fault)
    h.exporter.poll_once()
    m = scrape(h)
    assert len(h.sim.seen("analyze-ok")) - sent == attempts
    source = {"provider": ANALYZE["provider"], "source": ANALYZE["source"]}

    def delta(name: str, **labels: str) -> float:
        return (m.get(name, **source, **labels) or 0) - (before.get(name, **source, **labels) or 0)

    assert delta("asyncjob_request_errors_total", reason=reason) == attempts
    assert delta("asyncjob_requests_total") == attempts
    assert m.get("asyncjob_last_poll_error_info", **ANALYZE, reason=reason) == 1
    assert m.get("asyncjob_tasks", **ANALYZE, state="completed") == before.get(
        "asyncjob_tasks", **ANALYZE, state="completed"
    )


def test_a_failing_job_logs_when_it_starts_and_when_it_recovers(
    make_harness: Callable[..., Harness], capsys: pytest.CaptureFixture[str]
) -> None:
    """One warning when polls start failing, one line on recovery, nothing per interval, and no
    traceback: an upstream fault is not a bug of ours."""
    exporter_logging.configure("info", "json")
    h = make_harness(fast, start_polling=True)
    wait_until(lambda: scrape(h).get("asyncjob_up", **ANALYZE) == 1, what="a first good poll")
    h.sim.set_fault("analyze-ok", Fault(cut_after=50))
    polls = len(h.sim.seen("analyze-ok"))
    wait_until(lambda: len(h.sim.seen("analyze-ok")) >= polls + 12, what="three failing polls")
    h.sim.clear_fault("analyze-ok")
    wait_until(lambda: scrape(h).get("asyncjob_up", **ANALYZE) == 1, what="recovery")
    h.exporter.stop()
    logged = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    about_job = [
        (e["event"], e.get("reason") or e.get("after"))
        for e in logged
        if e.get("job_id") == "analyze-ok"
    ]
    assert about_job == [("poll failing", "connection"), ("poll recovered", "connection")]
    assert [e for e in logged if e["level"] == "error" or "exception" in e] == []


def test_translator_429_without_header_waits_as_its_message_says(
    make_harness: Callable[..., Harness],
) -> None:
    """Translator's own 429: error.code "429", no Retry-After, "retry after 1 second" in the
    message. The wait is taken from the message, for the retries and for the next poll."""
    body = (FIXTURES["azure_document_translation"] / "real-429-no-retry-after.json").read_bytes()
    h = make_harness(lambda sim: demo_raw_config(sim, retries=0, max_retry_wait="30s"))
    h.sim.set_fault("batch-ok", Fault(status=429, body=body))
    poller = h.exporter.pollers["translator"]
    outcome = poll_now(poller, "batch-ok")
    assert (outcome.error, outcome.retry_after) == (ErrorReason.THROTTLED, 1.0)
    assert h.sim.seen("batch-ok")[-1].status == 429
    assert "retry-after" not in h.sim.seen("batch-ok")[-1].headers  # nothing to go by but words


def test_retry_after_on_a_200_sets_the_earliest_next_poll(
    make_harness: Callable[..., Harness],
) -> None:
    """A 200 with Retry-After: 20 is a good poll, and the job is not polled again before 20 s
    although its interval is 200 ms."""
    h = make_harness(lambda sim: demo_raw_config(sim, max_retry_wait="30s"))
    h.sim.set_fault("batch-ok", Fault(retry_after="20"))
    poller = h.exporter.pollers["translator"]
    outcome = poll_now(poller, "batch-ok")
    assert outcome.snapshot is not None
    assert outcome.retry_after == 20.0
    waits = [poller.next_wait(outcome) for _ in range(50)]
    assert min(waits) == 20.0
    no_ask = dataclasses.replace(outcome, retry_after=None)
    assert all(0.18 <= poller.next_wait(no_ask) <= 0.22 for _ in range(50))  # 200 ms +-10%


def test_server_wait_is_capped_by_max_retry_wait(make_harness: Callable[..., Harness]) -> None:
    """A Retry-After of a day does not freeze a job for a day: max_retry_wait caps it."""
    h = make_harness(lambda sim: demo_raw_config(sim, max_retry_wait="30s"))
    poller = h.exporter.pollers["translator"]
    h.sim.set_fault("batch-ok", Fault(retry_after="86400"))
    outcome = poll_now(poller, "batch-ok")
    assert poller.next_wait(outcome) == 30.0


def test_a_bug_applying_an_outcome_does_not_stop_the_jobs_polling(
    make_harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    """If applying a poll's outcome raises (a bug of ours), the job is polled again later."""
    h = make_harness(fast, start_polling=True)
    real_apply = h.exporter.store.update
    raised: list[str] = []

    def buggy_once(outcome: Any) -> Any:
        if outcome.job_id == "analyze-ok" and not raised:
            raised.append(outcome.job_id)
            raise RuntimeError("a bug while applying an outcome")
        return real_apply(outcome)

    monkeypatch.setattr(h.exporter.store, "update", buggy_once)
    wait_until(lambda: raised, what="the bug to strike")
    polls = len(h.sim.seen("analyze-ok"))
    wait_until(lambda: len(h.sim.seen("analyze-ok")) > polls, what="analyze-ok polled again")
    wait_until(lambda: scrape(h).get("asyncjob_up", **ANALYZE) == 1, what="analyze-ok up")


def test_an_exhausted_rate_limit_paces_the_next_poll(make_harness: Callable[..., Harness]) -> None:
    """A 200 that says the request limit is spent (x-ratelimit-remaining-requests: 0) is a good
    poll, and the job is not polled again before the limit's reset (a Go duration, as OpenAI
    writes it) although its interval is 200 ms."""
    h = make_harness(lambda sim: demo_raw_config(sim, max_retry_wait="30s"))
    spent = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "12s"}
    h.sim.set_fault("batch-ok", Fault(headers=spent))
    poller = h.exporter.pollers["translator"]
    outcome = poll_now(poller, "batch-ok")
    assert outcome.snapshot is not None
    assert outcome.retry_after == 12.0
    assert min(poller.next_wait(outcome) for _ in range(50)) == 12.0


def test_a_429_without_retry_after_waits_for_the_limit_reset(
    make_harness: Callable[..., Harness],
) -> None:
    """A 429 with no Retry-After but an exhausted limit whose reset is an RFC 3339 time (as
    Anthropic writes it) waits until then, for the retries and for the next poll."""
    h = make_harness(lambda sim: demo_raw_config(sim, retries=0, max_retry_wait="30s"))
    reset = (datetime.now(UTC) + timedelta(seconds=20)).isoformat(timespec="seconds")
    spent = {"anthropic-ratelimit-requests-remaining": "0",
             "anthropic-ratelimit-requests-reset": reset}  # fmt: skip
    h.sim.set_fault("batch-ok", Fault(status=429, headers=spent))
    poller = h.exporter.pollers["translator"]
    outcome = poll_now(poller, "batch-ok")
    assert outcome.error is ErrorReason.THROTTLED
    assert outcome.retry_after is not None
    assert 15.0 <= outcome.retry_after <= 20.0
