"""A source's polls in flight on its event loop: `max_concurrency` at most, and that many when
its upstream is slow; a source's slow upstream does not slow another's polls."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from conftest import Harness, demo_raw_config, wait_until

from exporter.simulator import Fault

if TYPE_CHECKING:
    from collections.abc import Callable

    from exporter.simulator import Simulator

JOBS = [f"batch-{n}" for n in range(12)]


def test_a_slow_upstream_has_max_concurrency_polls_in_flight_and_no_more(
    make_harness: Callable[..., Harness],
) -> None:
    def config(sim: Simulator) -> dict[str, Any]:
        raw = demo_raw_config(sim, max_concurrency=3, poll_interval="1h", timeout="10s")
        raw["sources"][3]["job_ids"] = JOBS  # the translator's
        return raw

    h = make_harness(config)
    for job_id in JOBS:
        h.sim.set_fault(job_id, Fault(delay=0.5))

    def in_flight() -> int:
        """Requests of the source that arrived and are not answered yet (arrivals are read
        first: a request answered meanwhile is not counted, so this never counts too many)."""
        arrived = sum("/translator/" in path for path in list(h.sim.arrivals))
        answered = sum(len(h.sim.seen(job_id)) for job_id in JOBS)
        return arrived - answered

    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(in_flight())
            done.wait(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        h.exporter.start()
        wait_until(lambda: all(h.sim.seen(job_id) for job_id in JOBS), what="every job polled")
    finally:
        done.set()
        watcher.join()
    assert max(seen) == 3  # as many as allowed at once, never more
    assert all(len(h.sim.seen(job_id)) == 1 for job_id in JOBS)  # each once: the interval is 1h


def test_a_hung_upstream_does_not_hold_up_another_source(
    make_harness: Callable[..., Harness],
) -> None:
    """The translator's upstream hangs on every job, more of them than its slots; the language
    source, on a loop of its own, is polled on as before."""

    def config(sim: Simulator) -> dict[str, Any]:
        raw = demo_raw_config(sim, max_concurrency=2, poll_interval="200ms", timeout="30s")
        raw["sources"][3]["job_ids"] = JOBS
        return raw

    h = make_harness(config)
    for job_id in JOBS:
        h.sim.set_fault(job_id, Fault(delay=30.0))
    h.exporter.start()
    wait_until(lambda: sum("/translator/" in p for p in list(h.sim.arrivals)) == 2,
               what="the translator's two slots taken by hung polls")  # fmt: skip
    polls = len(h.sim.seen("analyze-ok"))
    wait_until(lambda: len(h.sim.seen("analyze-ok")) >= polls + 5, what="analyze-ok polled on")
    assert sum("/translator/" in p for p in list(h.sim.arrivals)) == 2  # still hung, no more sent
