"""max_requests_per_minute: one token bucket per source (and one for all) that delays, never
drops, every upstream request, listing or polling."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import pytest
from conftest import Harness, demo_raw_config, wait_until

from exporter.http import HttpClient, HttpSettings, TokenBucket
from exporter.providers import PROVIDERS

if TYPE_CHECKING:
    from collections.abc import Callable

    from exporter.model import Attempt
    from exporter.simulator import Simulator


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_minute_of_requests_at_once_then_the_rate() -> None:
    """100 a minute: 100 go at once, the 101st waits 0.6 s, the 102nd 1.2 s (they queue)."""
    clock = FakeClock()
    bucket = TokenBucket(100, clock=clock)
    assert [bucket.reserve() for _ in range(100)] == [0.0] * 100
    assert bucket.reserve() == pytest.approx(0.6)
    assert bucket.reserve() == pytest.approx(1.2)
    clock.now += 60  # a quiet minute refills the bucket, never past its capacity
    assert [bucket.reserve() for _ in range(98)] == [0.0] * 98
    assert bucket.reserve() > 0


def test_fractions_of_a_request_per_minute() -> None:
    """0.5 a minute: one request, then one every two minutes."""
    clock = FakeClock()
    bucket = TokenBucket(0.5, clock=clock)
    assert bucket.reserve() == 0.0
    assert bucket.reserve() == pytest.approx(120.0)
    clock.now += 240
    assert bucket.reserve() == 0.0


def test_a_request_over_budget_waits_and_is_sent(make_harness: Callable[..., Harness]) -> None:
    """Over real HTTP, with room for one request and 120 a minute: three requests are all sent,
    the last two after waiting for the budget."""
    h = make_harness()
    source = h.exporter.config.sources[3]  # the translator
    provider = PROVIDERS[source.provider]
    client = HttpClient(HttpSettings(5.0, 0, 1.0, 1 << 20), 1, threading.Event(),
                        [TokenBucket(120, capacity=1)])  # fmt: skip
    attempts: list[Attempt] = []
    for _ in range(3):
        client.fetch_json(provider.request(source, "batch-ok"), attempts)
    assert [a.delayed for a in attempts] == [False, True, True]
    assert [r.status for r in h.sim.seen("batch-ok")] == [200, 200, 200]
    client.close()


def test_polls_beyond_the_budget_are_delayed_counted_and_sent(
    make_harness: Callable[..., Harness],
) -> None:
    """60 requests a minute for a source of 62 jobs: 60 go at once, the other two wait their
    turn, are counted in asyncjob_request_budget_delayed_total, and are sent, not dropped."""

    def budgeted(sim: Simulator) -> dict[str, Any]:
        raw = demo_raw_config(sim, poll_interval="1h")
        raw["sources"][3]["max_requests_per_minute"] = 60
        raw["sources"][3]["job_ids"] = [f"batch-{n}" for n in range(62)]
        return raw

    h = make_harness(budgeted, start_polling=True)
    labels = {"provider": "azure_document_translation", "source": "translator"}
    wait_until(
        lambda: h.scrape().get("asyncjob_request_budget_delayed_total", **labels) == 2 or None,
        what="two polls delayed by the budget",
    )
    sent = [r for r in h.sim.requests if "/translator/" in r.path]
    assert len({r.path for r in sent}) == 62  # every job polled: delayed, not dropped
    # The budget, not the machine, spaced them: the last waited for two tokens, 1 s each.
    assert sent[-1].at - sent[0].at >= 1.5
    other = {"provider": "azure_language_analyze_text", "source": "language-analyze"}
    assert h.scrape().get("asyncjob_request_budget_delayed_total", **other) == 0


def test_the_global_budget_is_shared_by_every_source(make_harness: Callable[..., Harness]) -> None:
    """global.max_requests_per_minute 60 for the demo's jobs plus enough batches to make 64
    jobs across every demo source: all requests but 60 are delayed (a poll may be two requests,
    where a provider asks a follow-up)."""

    def crowded(sim: Simulator) -> dict[str, Any]:
        raw = demo_raw_config(sim, poll_interval="1h", max_requests_per_minute=60)
        others = sum(len(s.get("job_ids", ())) for i, s in enumerate(raw["sources"]) if i != 3)
        raw["sources"][3]["job_ids"] = [f"batch-{n}" for n in range(64 - others)]
        return raw

    h = make_harness(crowded, start_polling=True)

    def delayed() -> float:
        m = h.scrape()
        return sum(
            v for (n, _), v in m.samples.items() if n == "asyncjob_request_budget_delayed_total"
        )

    jobs = [job_id for source in h.exporter.config.sources for job_id in source.job_ids]
    assert len(jobs) == 64
    wait_until(
        lambda: all(r.snapshot or r.last_error for r in h.exporter.store.jobs()),
        what="every job polled once",
    )
    wait_until(
        lambda: delayed() == len(h.sim.requests) - 60 or None,
        what="all but 60 requests delayed by the global budget",
    )
    assert all(h.sim.seen(job_id) for job_id in jobs)
