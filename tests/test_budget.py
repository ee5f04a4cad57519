"""max_requests_per_minute: one token bucket per source (and one for all) that delays, never
drops, every upstream request, listing or polling."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from conftest import Harness, demo_raw_config, fetch_each, wait_until

from exporter.http import HttpClient, HttpSettings, TokenBucket
from exporter.providers import PROVIDERS

if TYPE_CHECKING:
    from collections.abc import Callable

    from exporter.model import Attempt
    from exporter.simulator import Seen, Simulator


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
    client = HttpClient(HttpSettings(5.0, 0, 1.0, 1 << 20), [TokenBucket(120, capacity=1)])
    attempts: list[Attempt] = []
    fetch_each(client, [provider.request(source, "batch-ok")] * 3, attempts)
    assert [a.delayed for a in attempts] == [False, True, True]
    assert [r.status for r in h.sim.seen("batch-ok")] == [200, 200, 200]


def test_polls_beyond_the_budget_are_delayed_counted_and_sent(
    make_harness: Callable[..., Harness],
) -> None:
    """20 requests a minute for a source of 22 jobs: 20 go at once, the other two wait their
    turn (a token every 3 s), are counted in asyncjob_request_budget_delayed_total, and are
    sent, not dropped. A token takes 3 s to come back so that even a slow machine sends the
    first 20 before one does: the count of delayed polls is the budget's, not the machine's."""

    def budgeted(sim: Simulator) -> dict[str, Any]:
        raw = demo_raw_config(sim, poll_interval="1h")
        raw["sources"][3]["max_requests_per_minute"] = 20
        raw["sources"][3]["job_ids"] = [f"batch-{n}" for n in range(22)]
        return raw

    h = make_harness(budgeted, start_polling=True)
    labels = {"provider": "azure_document_translation", "source": "translator"}
    wait_until(
        lambda: h.scrape().get("asyncjob_request_budget_delayed_total", **labels) == 2 or None,
        timeout=30.0,  # the second waits two tokens: 6 s
        what="two polls delayed by the budget",
    )

    def translator_polls() -> list[Seen]:
        return [r for r in list(h.sim.requests) if "/translator/" in r.path]

    # A delayed poll is counted with its attempt's outcome, once sent; the polls not delayed
    # may still be in flight then: wait for every job's request, bounded.
    wait_until(lambda: len({r.path for r in translator_polls()}) == 22 or None,
               what="every job polled: delayed, not dropped")  # fmt: skip
    sent = translator_polls()
    assert len(sent) == 22  # each once
    # The budget, not the machine, spaced them: the last waited for two tokens, 3 s each.
    assert sent[-1].at - sent[0].at >= 4.5
    other = {"provider": "azure_language_analyze_text", "source": "language-analyze"}
    assert h.scrape().get("asyncjob_request_budget_delayed_total", **other) == 0


def test_the_global_budget_is_shared_by_every_source(make_harness: Callable[..., Harness]) -> None:
    """global.max_requests_per_minute 20 for two sources of 22 jobs together (21 batches and an
    analyze job): all but 20 are delayed, whichever source they belong to. A token takes 3 s to
    come back, so even a slow machine sends the first 20 before one does."""

    def crowded(sim: Simulator) -> dict[str, Any]:
        raw = demo_raw_config(sim, poll_interval="1h", max_requests_per_minute=20)
        translator, analyze = raw["sources"][3], raw["sources"][1]
        translator["job_ids"] = [f"batch-{n}" for n in range(21)]
        raw["sources"] = [analyze, translator]
        return raw

    h = make_harness(crowded, start_polling=True)

    def delayed() -> float:
        m = h.scrape()
        return sum(
            v for (n, _), v in m.samples.items() if n == "asyncjob_request_budget_delayed_total"
        )

    jobs = sum(len(source.job_ids) for source in h.exporter.config.sources)
    assert jobs == 22
    wait_until(lambda: delayed() == jobs - 20 or None, timeout=30.0,  # two tokens: 6 s
               what="all but 20 polls delayed by the global budget")  # fmt: skip
    wait_until(lambda: len({r.path for r in list(h.sim.requests)}) == jobs or None,
               what="every job polled: delayed, not dropped")  # fmt: skip
