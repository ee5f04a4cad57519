"""The scheduler with a fake clock, following a real store: when each job and each listing is
due, from the store's changes and the outcomes they carry. No thread, no HTTP, no sleeping."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from exporter.model import Attempt, ErrorReason, JobSnapshot, ListOutcome, PollOutcome, State
from exporter.scheduler import AUTH_BACKOFF_FACTOR, LISTING, Scheduler
from exporter.store import KNOWN, SourceJobs, Store, WebhookOutcome

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
SOURCE = "translator"
PROVIDER = "azure_document_translation"
INTERVAL = 30.0
RUNNING = JobSnapshot(state=State.RUNNING, vendor_status="Running", progress={"overall": 0.5})
DONE = JobSnapshot(state=State.SUCCEEDED, vendor_status="Succeeded", progress={"overall": 1.0})


class Rig:
    """A store with one source, and a scheduler that follows it on a clock the test moves."""

    def __init__(
        self,
        *job_ids: str,
        list_every: float | None = None,
        covering: bool = False,
        max_retry_wait: float = 60.0,
    ) -> None:
        self.now = 1000.0
        self.store = Store(clock=lambda: T0)
        self.store.replace([SourceJobs(PROVIDER, SOURCE, job_ids, None, 100, retention=(60, 60),
                                       webhook=True, discovery=list_every is not None)])  # fmt: skip
        self.scheduler = Scheduler(
            INTERVAL,
            max_retry_wait,
            clock=lambda: self.now,
            rng=random.Random(16),
            list_every=list_every,
            covering=covering,
        )
        self.woken: list[bool] = []  # what the scheduler said to each write: wake the poller?

    def start(self) -> None:
        self.store.subscribe(
            SOURCE, lambda changes: self.woken.append(self.scheduler.follow(changes))
        )

    def due(self) -> list[str]:
        """The keys due now, handed out (in flight) in the order they fell due."""
        due, _ = self.scheduler.take_due()
        return [key for key, _ in due]

    def add(self, job_id: str, origin: str = "api") -> None:
        assert self.store.add(PROVIDER, SOURCE, job_id, None, origin) is not None

    def answer(self, job_id: str, snapshot: JobSnapshot | None = RUNNING, *,
               error: ErrorReason | None = None, retry_after: float | None = None) -> None:  # fmt: skip
        """A poll of `job_id`'s outcome reaches the store (the poll is in flight until
        `returned`)."""
        if error is not None:
            snapshot = None
        self.store.update(PollOutcome(SOURCE, job_id, T0, (Attempt(0.1, error),),
                                      snapshot=snapshot, error=error, retry_after=retry_after))  # fmt: skip

    def poll(self, job_id: str, snapshot: JobSnapshot | None = RUNNING, *,
             error: ErrorReason | None = None, retry_after: float | None = None) -> None:  # fmt: skip
        """A whole poll: its outcome applied, then the poll returns to the scheduler."""
        self.answer(job_id, snapshot, error=error, retry_after=retry_after)
        self.scheduler.returned(job_id)

    def listing(self, *jobs: tuple[str, JobSnapshot | None],
                error: ErrorReason | None = None) -> None:  # fmt: skip
        """A whole listing: applied, then returned."""
        listed = () if error else tuple((job_id, None, snap) for job_id, snap in jobs)
        attempts = (Attempt(0.1, error),)
        covers = self.scheduler.covers()
        self.store.update(ListOutcome(SOURCE, T0, attempts, listed, covers, error=error))
        self.scheduler.returned(LISTING)

    def wait(self, key: str) -> float | None:
        """How long from now until `key` is due; None if it is not scheduled."""
        at = self.scheduler.due_at(key)
        return None if at is None else at - self.now


# -- start and arrival --------------------------------------------------------------------------


def test_the_first_polls_are_spread_over_a_tenth_of_the_interval_at_most_a_second() -> None:
    """At start every unfinished job is due within min(interval / 10, 1 s), not in one burst;
    a job that finished before (restored) is not polled at all."""
    rig = Rig(*(f"b-{i}" for i in range(50)), "done")
    rig.poll("done", DONE)  # finished before the scheduler began following
    rig.start()
    waits = [rig.wait(f"b-{i}") for i in range(50)]
    assert all(w is not None and 0.0 <= w <= 1.0 for w in waits)
    assert len(set(waits)) > 40  # spread, not in lockstep
    assert rig.wait("done") is None
    assert rig.due() == []  # none is due at the very start...
    rig.now += 1.0
    assert sorted(rig.due()) == sorted(f"b-{i}" for i in range(50))  # ...all within a second


def test_a_job_added_by_the_api_or_a_webhook_is_polled_at_once() -> None:
    rig = Rig("b-0")
    rig.start()
    rig.now += 5.0
    rig.add("registered")
    rig.add("hooked", origin="webhook")
    assert rig.wait("registered") == 0.0
    assert rig.wait("hooked") == 0.0
    assert set(rig.due()) == {"b-0", "registered", "hooked"}


def test_take_due_says_when_the_next_key_falls_due() -> None:
    rig = Rig()
    rig.start()
    assert rig.scheduler.take_due() == ([], None)  # nothing to poll: sleep until told
    rig.add("b-1")
    assert rig.due() == ["b-1"]
    rig.poll("b-1")
    due, soonest = rig.scheduler.take_due()
    assert due == []
    assert soonest == rig.scheduler.due_at("b-1")


# -- after a poll -------------------------------------------------------------------------------


def test_the_next_poll_comes_an_interval_later_with_ten_percent_jitter() -> None:
    rig = Rig(*(f"b-{i}" for i in range(40)))
    rig.start()
    rig.now += 1.0
    for job_id in rig.due():
        rig.poll(job_id)
    waits = [rig.wait(f"b-{i}") for i in range(40)]
    assert all(w is not None and 0.9 * INTERVAL <= w <= 1.1 * INTERVAL for w in waits)
    assert len(set(waits)) > 30  # jobs added together do not poll in lockstep


def test_retry_after_sets_the_earliest_next_poll_capped_by_max_retry_wait() -> None:
    rig = Rig("asked", "throttled", "absurd", max_retry_wait=120.0)
    rig.start()
    rig.now += 1.0
    assert len(rig.due()) == 3
    rig.poll("asked", retry_after=100.0)  # on a good answer too
    rig.poll("throttled", error=ErrorReason.THROTTLED, retry_after=45.0)
    rig.poll("absurd", error=ErrorReason.THROTTLED, retry_after=86400.0)
    assert rig.wait("asked") == 100.0
    assert rig.wait("throttled") == 45.0
    assert rig.wait("absurd") == 120.0
    short = PollOutcome(SOURCE, "x", T0, (), snapshot=RUNNING, retry_after=1.0)
    assert 0.9 * INTERVAL <= rig.scheduler.next_wait(short) <= 1.1 * INTERVAL  # not sooner


def test_an_auth_failure_backs_off_ten_intervals() -> None:
    rig = Rig("b-1")
    rig.start()
    rig.now += 1.0
    assert rig.due() == ["b-1"]
    rig.poll("b-1", error=ErrorReason.AUTH)
    wait = rig.wait("b-1")
    backoff = AUTH_BACKOFF_FACTOR * INTERVAL
    assert wait is not None
    assert 0.9 * backoff <= wait <= 1.1 * backoff


def test_a_finished_job_is_not_polled_again() -> None:
    rig = Rig("b-1")
    rig.start()
    rig.now += 1.0
    assert rig.due() == ["b-1"]
    rig.poll("b-1", DONE)
    assert rig.wait("b-1") is None
    rig.store.update(WebhookOutcome(SOURCE, KNOWN, "b-1"))  # a call about it changes nothing
    rig.now += 1000 * INTERVAL
    assert rig.scheduler.take_due() == ([], None)


def test_a_poll_that_died_without_an_outcome_is_tried_again_an_interval_later() -> None:
    """A bug while polling or applying (no change came from the store): the job is not lost."""
    rig = Rig("b-1")
    rig.start()
    rig.now += 1.0
    assert rig.due() == ["b-1"]
    rig.scheduler.returned("b-1")
    assert rig.wait("b-1") == INTERVAL


# -- removal, and never two polls at once -------------------------------------------------------


def test_a_removed_job_is_never_polled_again_even_with_its_poll_in_flight() -> None:
    rig = Rig()
    rig.start()
    for job_id in ("idle", "busy"):
        rig.add(job_id)
    assert set(rig.due()) == {"idle", "busy"}
    rig.poll("idle")
    assert rig.store.delete(SOURCE, "idle") is not None
    assert rig.store.delete(SOURCE, "busy") is not None  # its poll in flight
    rig.poll("busy")  # the answer of the poll in flight finds no job: not applied
    assert rig.wait("idle") is None
    assert rig.wait("busy") is None
    rig.now += 1000 * INTERVAL
    assert rig.scheduler.take_due() == ([], None)


def test_a_job_expired_by_404s_is_polled_no_more() -> None:
    rig = Rig()
    rig.start()
    rig.add("gone")
    for _ in range(3):
        assert rig.due() == ["gone"]
        rig.poll("gone", error=ErrorReason.NOT_FOUND)
        rig.now += 2 * INTERVAL
    assert rig.store.get(SOURCE, "gone") is None
    assert rig.scheduler.take_due() == ([], None)


def test_asked_for_while_in_flight_the_next_poll_follows_as_soon_as_it_returns() -> None:
    """A webhook call, or a removal and a new registration, while the job's poll is in flight:
    not a second poll at once, but one right after it returns."""
    rig = Rig("hooked", "back")
    rig.start()
    rig.now += 1.0
    assert set(rig.due()) == {"hooked", "back"}
    rig.store.update(WebhookOutcome(SOURCE, KNOWN, "hooked"))
    rig.store.delete(SOURCE, "back")  # config-listed, but delete is what the API does
    rig.add("back")
    assert rig.due() == []  # both still in flight
    rig.poll("hooked")
    rig.poll("back")
    assert rig.wait("hooked") == 0.0
    assert rig.wait("back") == 0.0


def test_a_webhook_call_about_a_known_job_polls_it_at_once() -> None:
    rig = Rig("b-1")
    rig.start()
    rig.now += 1.0
    rig.due()
    rig.poll("b-1")
    rig.now += 5.0
    rig.store.update(WebhookOutcome(SOURCE, KNOWN, "b-1"))
    assert rig.due() == ["b-1"]


# -- listings -----------------------------------------------------------------------------------


def test_the_listing_is_due_at_start_then_every_list_every_with_jitter_and_auth_backoff() -> None:
    rig = Rig(list_every=300.0)
    rig.start()
    assert rig.due() == [LISTING]
    rig.listing()
    wait = rig.wait(LISTING)
    assert wait is not None
    assert 270.0 <= wait <= 330.0
    rig.now += 330.0
    assert rig.due() == [LISTING]
    rig.listing(error=ErrorReason.AUTH)
    wait = rig.wait(LISTING)
    assert wait is not None
    assert 2700.0 <= wait <= 3300.0
    rig.now += 3300.0
    assert rig.due() == [LISTING]
    rig.scheduler.returned(LISTING)  # died of a bug: no outcome applied
    assert rig.wait(LISTING) == 300.0


def test_jobs_a_listing_carries_wait_for_it_and_are_polled_alone_only_off_it() -> None:
    """With a listing that carries statuses: until the first one, the jobs wait for it; a job
    whose status it carried is polled by it, not alone; one it names without a status, and one
    that drops off it unfinished, is polled alone at once; a finished one not at all."""
    rig = Rig("known", "drops", list_every=300.0, covering=True)
    rig.start()
    assert rig.due() == [LISTING]  # and not the jobs: the listing polls them
    rig.listing(("known", RUNNING), ("drops", RUNNING), ("new", RUNNING), ("bare", None),
                ("old", DONE))  # fmt: skip
    assert rig.scheduler.covers() == {"known", "drops", "new"}
    assert rig.due() == ["bare"]  # named with no status: polled alone
    rig.poll("bare")
    rig.now += 301.0
    assert set(rig.due()) == {LISTING, "bare"}  # "bare" is polled alone, every interval
    rig.poll("bare")
    rig.listing(("known", RUNNING), ("new", DONE))  # "drops" is gone from it; "new" finished
    assert rig.scheduler.covers() == {"known"}
    assert rig.due() == ["drops"]
    rig.poll("drops", error=ErrorReason.NOT_FOUND)
    wait = rig.wait("drops")
    assert wait is not None
    assert wait <= 1.1 * INTERVAL  # polled alone from now on
    for job_id in ("known", "new", "old"):
        assert rig.wait(job_id) is None


def test_a_failed_listing_keeps_the_jobs_waiting_for_the_next_one() -> None:
    rig = Rig("known", list_every=300.0, covering=True)
    rig.start()
    assert rig.due() == [LISTING]
    rig.listing(error=ErrorReason.TIMEOUT)
    assert rig.scheduler.covers() == {"known"}
    assert rig.wait("known") is None
    record = rig.store.get(SOURCE, "known")
    assert record is not None
    assert record.last_error is ErrorReason.TIMEOUT  # the store marked it: covers said so


def test_a_covered_job_a_webhook_calls_about_is_polled_once_then_left_to_the_listing() -> None:
    rig = Rig(list_every=300.0, covering=True)
    rig.start()
    rig.due()
    rig.listing(("b-1", RUNNING))
    rig.store.update(WebhookOutcome(SOURCE, KNOWN, "b-1"))
    assert rig.due() == ["b-1"]
    rig.poll("b-1")
    assert rig.wait("b-1") is None


def test_ids_only_listings_poll_every_job_alone() -> None:
    """A listing without statuses (covering=False): jobs are polled alone from the start, and
    each new one it names at once."""
    rig = Rig("b-1", list_every=300.0)
    rig.start()
    rig.now += 1.0
    assert set(rig.due()) == {LISTING, "b-1"}
    rig.listing(("b-1", None), ("b-2", None))
    assert rig.due() == ["b-2"]
    assert rig.scheduler.covers() == frozenset()


@pytest.mark.parametrize("covering", [False, True])
def test_a_scheduler_without_a_listing_never_hands_one_out(covering: bool) -> None:
    rig = Rig("b-1", covering=covering)
    rig.start()
    rig.now += 1.0
    assert rig.due() == ["b-1"]  # covering means nothing without a listing
    assert rig.wait(LISTING) is None


def test_the_poller_is_woken_only_when_a_key_falls_due_before_it_meant_to_look() -> None:
    """A poll's return that schedules the job after the poller's next look wakes nobody (it
    looks then anyway); one that schedules the only job, or a job that arrives due now, does."""
    rig = Rig("b-1", "b-2")
    rig.start()
    assert rig.woken == [True]  # the first polls: the poller had nothing to look for
    rig.now += 1.0
    assert set(rig.due()) == {"b-1", "b-2"}  # nothing else scheduled: it will sleep until told
    rig.answer("b-1")
    assert rig.woken == [True, False]  # its outcome is in; it is still in flight
    assert rig.scheduler.returned("b-1")  # now scheduled, and the only one: wake
    _, soonest = rig.scheduler.take_due()  # the poller looks, and sleeps until b-1 is due
    assert soonest == rig.scheduler.due_at("b-1")
    rig.answer("b-2", retry_after=50.0)
    assert not rig.scheduler.returned("b-2")  # due after b-1: no need to wake
    rig.add("new")
    assert rig.woken[-1] is True  # due now, before b-1
