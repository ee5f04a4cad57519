"""The store's lifecycle of a job, with an injected clock: the finished tally, durations,
retention, expiry, and what they export (read with client_python's get_sample_value)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from conftest import Metrics
from prometheus_client import CollectorRegistry

from exporter.collector import SourceCollector
from exporter.exposition import Exposition
from exporter.model import Attempt, ErrorReason, JobSnapshot, ListOutcome, PollOutcome, State
from exporter.storage import Storage
from exporter.store import (
    Added,
    Change,
    Listed,
    Removed,
    SourceJobs,
    Store,
    Tracked,
    Updated,
    WebhookOutcome,
)

if TYPE_CHECKING:
    from pathlib import Path

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
SOURCE = "translator"
LABELS = {"provider": "azure_document_translation", "source": SOURCE}
HOUR = 3600.0


def store_with(retention: tuple[float, float] = (HOUR, 4 * HOUR), storage: Storage | None = None
               ) -> Store:  # fmt: skip
    store = Store(storage, clock=lambda: T0)
    store.replace([SourceJobs("azure_document_translation", SOURCE, ("listed",), None, 100,
                                retention=retention)])  # fmt: skip
    return store


def snapshot(state: State, created_minutes_ago: float, at: datetime) -> JobSnapshot:
    return JobSnapshot(state=state, vendor_status=state.value, progress={"overall": 1.0},
                       created=at - timedelta(minutes=created_minutes_ago), last_update=at,
                       finished=at if state.terminal else None)  # fmt: skip


def poll(store: Store, job_id: str, at: datetime, snap: JobSnapshot | None = None,
         error: ErrorReason | None = None) -> tuple[Change, ...]:  # fmt: skip
    outcome = PollOutcome(SOURCE, job_id, at, (Attempt(0.1, error),), snapshot=snap, error=error)
    return store.update(outcome)


def sample(store: Store, name: str, **labels: str) -> float | None:
    registry = CollectorRegistry()
    registry.register(SourceCollector(store))
    return registry.get_sample_value(name, {**LABELS, **labels})


def finished_time(store: Store, source: str, job_id: str) -> float | None:
    """asyncjob_finished_timestamp_seconds of one job, as /metrics renders it."""
    body = b"".join(Exposition(CollectorRegistry(), store).render(openmetrics=False, gzipped=False))
    record = store.get(source, job_id)
    assert record is not None
    labels = {"provider": record.provider, "source": source, "job_id": job_id}
    return Metrics(body.decode()).get("asyncjob_finished_timestamp_seconds", **labels)


def test_a_job_is_counted_once_when_first_seen_finished() -> None:
    store = store_with()
    store.add("azure_document_translation", SOURCE, "b1", None, "api")
    running = JobSnapshot(state=State.RUNNING, vendor_status="Running", progress={"overall": 0.5})
    poll(store, "b1", T0, running)
    poll(store, "b1", T0 + timedelta(minutes=5), snapshot(State.FAILED, 35, T0))
    poll(store, "b1", T0 + timedelta(minutes=6), snapshot(State.FAILED, 35, T0))  # seen again
    assert sample(store, "asyncjob_jobs_finished_total", state="failed") == 1
    assert sample(store, "asyncjob_jobs_finished_total", state="succeeded") == 0
    # Created 35 min before it finished: in the 30m..1h bucket.
    assert sample(store, "asyncjob_job_duration_seconds_bucket", state="failed", le="1800.0") == 0
    assert sample(store, "asyncjob_job_duration_seconds_bucket", state="failed", le="3600.0") == 1
    assert sample(store, "asyncjob_job_duration_seconds_sum", state="failed") == 35 * 60
    assert sample(store, "asyncjob_job_duration_seconds_count", state="failed") == 1


def test_retention_drops_finished_jobs_not_listed_in_the_config() -> None:
    """Succeeded: 1 h; unsuccessful: 4 h; the config-listed job stays whatever its age."""
    store = store_with()
    for job_id in ("ok", "bad"):
        store.add("azure_document_translation", SOURCE, job_id, None, "api")
    poll(store, "ok", T0, snapshot(State.SUCCEEDED, 10, T0))
    poll(store, "bad", T0, snapshot(State.FAILED, 10, T0))
    poll(store, "listed", T0, snapshot(State.SUCCEEDED, 10, T0))
    assert store.retire(T0 + timedelta(minutes=59)) == []
    assert [r.job_id for r in store.retire(T0 + timedelta(minutes=61))] == ["ok"]
    assert store.retire(T0 + timedelta(hours=3, minutes=59)) == []
    assert [r.job_id for r in store.retire(T0 + timedelta(hours=4, minutes=1))] == ["bad"]
    assert store.retire(T0 + timedelta(days=30)) == []
    assert [r.job_id for r in store.jobs()] == ["listed"]
    assert sample(store, "asyncjob_jobs_dropped_total", reason="retention") == 2
    assert sample(store, "asyncjob_jobs_finished_total", state="succeeded") == 2  # outlives them


def test_three_404s_in_a_row_expire_a_job_but_not_a_listed_one() -> None:
    store = store_with()
    store.add("azure_document_translation", SOURCE, "gone", None, "api")
    running = JobSnapshot(state=State.RUNNING, vendor_status="Running", progress={"overall": 0.5})
    for job_id in ("gone", "listed"):
        poll(store, job_id, T0, error=ErrorReason.NOT_FOUND)
        poll(store, job_id, T0, error=ErrorReason.NOT_FOUND)
        poll(store, job_id, T0, running)  # a good answer resets the count
        poll(store, job_id, T0, error=ErrorReason.NOT_FOUND)
        poll(store, job_id, T0, error=ErrorReason.NOT_FOUND)
    assert store.get(SOURCE, "gone") is not None
    applied = poll(store, "gone", T0, error=ErrorReason.NOT_FOUND)
    assert isinstance(applied, tuple)
    assert [type(c) for c in applied] == [Updated, Removed]  # expired with this poll
    assert store.get(SOURCE, "gone") is None
    poll(store, "listed", T0, error=ErrorReason.NOT_FOUND)
    assert store.get(SOURCE, "listed") is not None
    assert sample(store, "asyncjob_jobs_dropped_total", reason="expired") == 1


def test_the_tally_is_kept_in_storage(tmp_path: Path) -> None:
    """A new store on the same storage exports the same finished counts and durations."""
    storage = Storage.open(tmp_path / "data")
    store = store_with(storage=storage)
    poll(store, "listed", T0, snapshot(State.SUCCEEDED, 90, T0))
    assert storage.flush()
    storage.close()
    storage = Storage.open(tmp_path / "data")
    try:
        again = store_with(storage=storage)
        assert sample(again, "asyncjob_jobs_finished_total", state="succeeded") == 1
        assert sample(again, "asyncjob_job_duration_seconds_sum", state="succeeded") == 90 * 60
        poll(again, "listed", T0, snapshot(State.SUCCEEDED, 90, T0))  # restored: finished already
        assert sample(again, "asyncjob_jobs_finished_total", state="succeeded") == 1
    finally:
        storage.close()


def discovering_store(storage: Storage | None, now: list[datetime]) -> Store:
    store = Store(storage, clock=lambda: now[0])
    store.replace([SourceJobs("azure_document_translation", SOURCE, (), None, 100,
                                retention=(HOUR, HOUR), discovery=True,
                                remember_retired=24 * HOUR)])  # fmt: skip
    return store


def listing(at: datetime, *jobs: tuple[str, JobSnapshot | None]) -> ListOutcome:
    return ListOutcome(SOURCE, at, (Attempt(0.1),), tuple((j, None, s) for j, s in jobs))


def added(changes: tuple[Change, ...]) -> list[str]:
    """The jobs a write added."""
    return [c.record.job_id for c in changes if isinstance(c, Added)]


def test_a_retired_job_is_not_discovered_again_nor_counted_twice_across_a_restart(
    tmp_path: Path,
) -> None:
    """A listing names a finished batch for as long as the lookback: once retention lets it
    go, later listings (in this process and the next, on the same storage) must not bring it
    back, or it would be exported and counted again. After the lookback it is forgotten."""
    now = [T0]
    done = snapshot(State.SUCCEEDED, 10, T0)
    storage = Storage.open(tmp_path / "data")
    store = discovering_store(storage, now)
    applied = store.update(listing(T0, ("b1", done)))
    assert added(applied) == ["b1"]
    assert sample(store, "asyncjob_jobs_finished_total", state="succeeded") == 1
    now[0] = T0 + timedelta(hours=2)
    assert [r.job_id for r in store.retire(now[0])] == ["b1"]  # retention: an hour
    assert not added(store.update(listing(now[0], ("b1", done))))
    storage.flush()
    storage.close()

    storage = Storage.open(tmp_path / "data")
    store = discovering_store(storage, now)
    assert not added(store.update(listing(now[0], ("b1", done))))
    assert store.get(SOURCE, "b1") is None
    assert sample(store, "asyncjob_jobs_finished_total", state="succeeded") == 1
    assert sample(store, "asyncjob_jobs_discovered_total") == 0  # this process found none
    now[0] = T0 + timedelta(hours=30)  # past the lookback: no listing names it any more
    store.retire(now[0])
    storage.flush()
    storage.close()
    reopened = Storage.open(tmp_path / "data")
    try:
        assert reopened.load_retired() == {}
    finally:
        reopened.close()


def test_a_listing_respects_max_jobs_and_counts_the_refused() -> None:
    store = Store(clock=lambda: T0)
    store.replace([SourceJobs("azure_document_translation", SOURCE, (), None, 2,
                                retention=(HOUR, HOUR), discovery=True)])  # fmt: skip
    running = JobSnapshot(state=State.RUNNING, vendor_status="Running", progress={"overall": 0.1})
    applied = store.update(listing(T0, *((f"b{i}", running) for i in range(5))))
    assert added(applied) == ["b0", "b1"]
    assert {c.record.job_id for c in applied if isinstance(c, Updated)} == {"b0", "b1"}
    assert sample(store, "asyncjob_jobs_rejected_total", reason="limit") == 3
    assert sample(store, "asyncjob_jobs_discovered_total") == 2
    assert sample(store, "asyncjob_requests_total") == 1  # the listing, counted once


def test_tracked_counts_follow_every_route_in_and_out() -> None:
    """asyncjob_tracked_jobs is kept as jobs come and go (no scan): after adds, a listing,
    a removal, expiry, retention and a reload, it equals the jobs actually tracked."""
    now = [T0]
    store = discovering_store(None, now)
    running = JobSnapshot(state=State.RUNNING, vendor_status="Running", progress={"overall": 0.1})
    for job_id in ("a1", "a2", "a3"):
        store.add("azure_document_translation", SOURCE, job_id, None, "api")
    store.update(listing(T0, ("l1", running), ("l2", snapshot(State.SUCCEEDED, 5, T0))))
    store.delete(SOURCE, "a1")
    for _ in range(3):
        poll(store, "a2", T0, error=ErrorReason.NOT_FOUND)  # expires
    now[0] = T0 + timedelta(hours=2)
    store.retire(now[0])  # l2's retention (an hour) has ended
    expected = {"a3", "l1"}
    assert {r.job_id for r in store.jobs_of(SOURCE)} == expected
    assert sample(store, "asyncjob_tracked_jobs") == len(expected)
    store.replace([SourceJobs("azure_document_translation", SOURCE, ("listed",), None, 100,
                                retention=(HOUR, HOUR), discovery=True)])  # fmt: skip
    assert sample(store, "asyncjob_tracked_jobs") == len(store.jobs_of(SOURCE)) == 3


SD = "sd"
SD_PROVIDER = "stable_diffusion_finetune"


def sd_store(storage: Storage | None, now: list[datetime]) -> Store:
    store = Store(storage, clock=lambda: now[0])
    store.replace([SourceJobs(SD_PROVIDER, SD, (), None, 100, retention=(HOUR, HOUR),
                                discovery=True)])  # fmt: skip
    return store


def sd_poll(store: Store, job_id: str, at: datetime, state: State) -> None:
    """A fine-tune's status as the API answers it: a stage, no times at all."""
    snap = JobSnapshot(state=state, vendor_status=state.value, progress={"overall": 0.5})
    store.update(PollOutcome(SD, job_id, at, (Attempt(0.1),), snapshot=snap))


def test_a_fine_tune_seen_finishing_finishes_then_and_one_first_seen_finished_has_no_time(
    tmp_path: Path,
) -> None:
    """The API gives no finish time. A fine-tune the exporter saw unfinished (running, or not
    started) finishes at the poll that saw it finished, across a restart too; one first seen
    finished (a first listing names every fine-tune ever made) has no finish time at all, in
    this process and the next, and still leaves when its retention ends."""
    now = [T0]
    storage = Storage.open(tmp_path / "data")
    store = sd_store(storage, now)
    names = tuple((job_id, None, None) for job_id in ("old", "new", "queued"))
    store.update(ListOutcome(SD, T0, (Attempt(0.1),), names))
    sd_poll(store, "old", T0, State.SUCCEEDED)
    sd_poll(store, "new", T0, State.RUNNING)
    sd_poll(store, "queued", T0, State.NOT_STARTED)
    done_at = T0 + timedelta(minutes=20)
    sd_poll(store, "new", done_at, State.FAILED)
    assert finished_time(store, SD, "new") == done_at.timestamp()
    assert finished_time(store, SD, "old") is None
    assert finished_time(store, SD, "queued") is None  # not finished yet
    storage.flush()
    storage.close()

    storage = Storage.open(tmp_path / "data")
    try:
        store = sd_store(storage, now)
        assert finished_time(store, SD, "new") == done_at.timestamp()
        assert finished_time(store, SD, "old") is None
        ready_at = T0 + timedelta(minutes=40)
        sd_poll(store, "queued", ready_at, State.SUCCEEDED)  # seen not started before the restart
        assert finished_time(store, SD, "queued") == ready_at.timestamp()
        assert sample(store, "asyncjob_jobs_finished_total", provider=SD_PROVIDER, source=SD,
                      state="succeeded") == 2  # fmt: skip
        # Retention (an hour) runs from the poll that found "old" finished, having no finish time.
        assert {r.job_id for r in store.retire(T0 + timedelta(minutes=61))} == {"old"}
    finally:
        storage.close()


def test_the_duration_ends_at_the_finish_time_not_the_last_update() -> None:
    """asyncjob_job_duration_seconds and asyncjob_finished_timestamp_seconds use one time: the
    API's finish time where it differs from its last update (a training job's last phase end)."""
    store = store_with()
    ended = T0 - timedelta(minutes=10)
    snap = JobSnapshot(state=State.SUCCEEDED, vendor_status="succeeded", progress={"overall": 1.0},
                       created=T0 - timedelta(minutes=40), last_update=T0,
                       finished=ended)  # fmt: skip
    poll(store, "listed", T0, snap)
    assert finished_time(store, SOURCE, "listed") == ended.timestamp()
    assert sample(store, "asyncjob_job_duration_seconds_sum", state="succeeded") == 30 * 60


def test_a_finish_time_ahead_of_the_poll_is_the_poll() -> None:
    """An upstream clock ahead of ours must not put a finish in the future."""
    store = store_with()
    ahead = JobSnapshot(state=State.FAILED, vendor_status="failed", progress={"overall": 1.0},
                        finished=T0 + timedelta(hours=1))  # fmt: skip
    poll(store, "listed", T0, ahead)
    assert finished_time(store, SOURCE, "listed") == T0.timestamp()


def charged(state: State, characters: int | None) -> JobSnapshot:
    return JobSnapshot(state=state, vendor_status=state.value, progress={"overall": 0.5},
                       characters_charged=characters,
                       finished=T0 if state.terminal else None)  # fmt: skip


def test_characters_charged_count_each_increase_once_across_restarts_and_retirement(
    tmp_path: Path,
) -> None:
    """The source's counter grows by each batch's increase as polls and listings report it,
    never twice (a repeated total, a restart on the same storage, a total that dips and comes
    back), and keeps what a batch charged after the batch is dropped."""
    now = [T0]
    storage = Storage.open(tmp_path / "data")
    store = discovering_store(storage, now)
    assert sample(store, "asyncjob_characters_charged_total") == 0  # there before any charge
    store.update(listing(T0, ("b1", charged(State.RUNNING, 100)), ("b2", None)))
    poll(store, "b2", T0, charged(State.RUNNING, None))  # nothing charged yet
    poll(store, "b1", T0, charged(State.RUNNING, 250))
    poll(store, "b1", T0, charged(State.RUNNING, 250))  # the same total: nothing new
    assert sample(store, "asyncjob_characters_charged_total") == 250
    storage.flush()
    storage.close()

    storage = Storage.open(tmp_path / "data")
    store = discovering_store(storage, now)
    assert sample(store, "asyncjob_characters_charged_total") == 250
    store.update(listing(T0, ("b1", charged(State.RUNNING, 250)), ("b2", None)))
    poll(store, "b1", T0, charged(State.RUNNING, 200))  # a dip is not a refund...
    poll(store, "b1", T0, charged(State.SUCCEEDED, 300))  # ...nor is its recovery charged twice
    poll(store, "b2", T0, charged(State.FAILED, 40))
    assert sample(store, "asyncjob_characters_charged_total") == 340
    now[0] = T0 + timedelta(hours=2)
    assert {r.job_id for r in store.retire(now[0])} == {"b1", "b2"}  # retired
    assert sample(store, "asyncjob_characters_charged_total") == 340
    storage.flush()
    storage.close()

    storage = Storage.open(tmp_path / "data")
    try:
        store = discovering_store(storage, now)
        assert store.jobs() == ()
        assert sample(store, "asyncjob_characters_charged_total") == 340
    finally:
        storage.close()


def used(state: State, **tokens: int) -> JobSnapshot:
    return JobSnapshot(state=state, vendor_status=state.value, progress={"overall": 0.5},
                       tokens=tokens, finished=T0 if state.terminal else None)  # fmt: skip


def test_tokens_count_each_increase_once_by_kind_across_restarts_and_retirement(
    tmp_path: Path,
) -> None:
    """The source's token counter grows by each job's increase of each kind, never twice (a
    repeated total, a restart, a dip and its recovery), and keeps them after the job leaves."""
    now = [T0]
    storage = Storage.open(tmp_path / "data")
    store = discovering_store(storage, now)

    def tokens(kind: str) -> float | None:
        return sample(store, "asyncjob_source_tokens_total", kind=kind)

    assert (tokens("input"), tokens("output"), tokens("trained")) == (0, 0, 0)
    store.update(listing(T0, ("j1", used(State.RUNNING)), ("j2", None)))
    poll(store, "j1", T0, used(State.RUNNING, input=100, output=7))
    poll(store, "j1", T0, used(State.RUNNING, input=100, output=7))  # nothing new
    poll(store, "j2", T0, used(State.RUNNING, trained=5000))
    assert (tokens("input"), tokens("output"), tokens("trained")) == (100, 7, 5000)
    storage.flush()
    storage.close()

    storage = Storage.open(tmp_path / "data")
    store = discovering_store(storage, now)
    assert (tokens("input"), tokens("output"), tokens("trained")) == (100, 7, 5000)
    store.update(listing(T0, ("j1", used(State.RUNNING, input=100, output=7)), ("j2", None)))
    poll(store, "j1", T0, used(State.RUNNING, input=90))  # a dip is no refund...
    poll(store, "j1", T0, used(State.SUCCEEDED, input=150, output=20))  # ...nor twice counted
    poll(store, "j2", T0, used(State.SUCCEEDED, trained=6000))
    assert (tokens("input"), tokens("output"), tokens("trained")) == (150, 20, 6000)
    now[0] = T0 + timedelta(hours=2)
    assert {r.job_id for r in store.retire(now[0])} == {"j1", "j2"}
    storage.flush()
    storage.close()

    storage = Storage.open(tmp_path / "data")
    try:
        store = discovering_store(storage, now)
        assert store.jobs() == ()
        assert (tokens("input"), tokens("output"), tokens("trained")) == (150, 20, 6000)
    finally:
        storage.close()


# -- the changes the store tells ----------------------------------------------------------------


class Follower:
    """Records each write's changes, as a scheduler would take them."""

    def __init__(self) -> None:
        self.writes: list[tuple[Change, ...]] = []

    def __call__(self, changes: tuple[Change, ...]) -> None:
        self.writes.append(changes)

    def kinds(self) -> list[list[tuple[str, str]]]:
        """Each write as (kind, job) pairs; a listing's job is ""."""
        return [[(type(c).__name__, _job_of(c)) for c in write] for write in self.writes]


def _job_of(change: Change) -> str:
    match change:
        case Added(record=r) | Updated(record=r) | Removed(record=r):
            return r.job_id
        case Tracked(records=records):
            return ",".join(sorted(r.job_id for r in records))
        case Listed():
            return ""


def test_a_follower_sees_what_is_tracked_then_every_write_in_order() -> None:
    """Subscribing tells the jobs tracked now; then each write tells its changes, one call per
    write: added, updated with its outcome, expired, removed, retired."""
    now = [T0]
    store = discovering_store(None, now)
    store.add("azure_document_translation", SOURCE, "a1", None, "api")
    follower = Follower()
    store.subscribe(SOURCE, follower)
    store.add("azure_document_translation", SOURCE, "a2", None, "api")
    store.add("azure_document_translation", SOURCE, "a2", None, "api")  # known: no change
    running = JobSnapshot(state=State.RUNNING, vendor_status="Running", progress={"overall": 0.1})
    store.update(listing(T0, ("l1", running), ("l2", snapshot(State.SUCCEEDED, 5, T0))))
    poll(store, "a1", T0, running)
    for _ in range(3):
        poll(store, "a2", T0, error=ErrorReason.NOT_FOUND)  # expires with the third
    store.delete(SOURCE, "a1")
    now[0] = T0 + timedelta(hours=2)
    store.retire(now[0])  # l2's retention (an hour) has ended
    assert follower.kinds() == [
        [("Tracked", "a1")],
        [("Added", "a2")],
        [("Added", "l1"), ("Added", "l2"), ("Updated", "l1"), ("Updated", "l2"), ("Listed", "")],
        [("Updated", "a1")],
        [("Updated", "a2")],
        [("Updated", "a2")],
        [("Updated", "a2"), ("Removed", "a2")],
        [("Removed", "a1")],
        [("Removed", "l2")],
    ]
    (polled,) = follower.writes[3]
    assert isinstance(polled, Updated)
    assert isinstance(polled.outcome, PollOutcome)
    assert polled.before.snapshot is None
    assert polled.record.snapshot == running
    reasons = [c.reason for write in follower.writes for c in write if isinstance(c, Removed)]
    assert reasons == ["expired", "deleted", "retention"]


def test_a_reload_tells_the_jobs_it_adds_and_removes() -> None:
    store = store_with()
    store.add("azure_document_translation", SOURCE, "api-1", None, "api")
    follower = Follower()
    store.subscribe(SOURCE, follower)
    store.replace([SourceJobs("azure_document_translation", SOURCE, ("new",), None, 100,
                              retention=(HOUR, HOUR))])  # fmt: skip
    assert follower.kinds()[1:] == [[("Removed", "listed"), ("Added", "new")]]  # api-1 stays
    (removed, _) = follower.writes[1]
    assert isinstance(removed, Removed)
    assert removed.reason == "unconfigured"


def test_a_webhook_call_about_a_known_job_is_an_update_and_every_call_is_counted() -> None:
    store = Store(clock=lambda: T0)
    store.replace([SourceJobs(SD_PROVIDER, SD, ("sd-1",), None, 100, retention=(HOUR, HOUR),
                              webhook=True)])  # fmt: skip
    follower = Follower()
    store.subscribe(SD, follower)
    known = store.update(WebhookOutcome(SD, "known", "sd-1"))
    assert store.update(WebhookOutcome(SD, "registered", "sd-1")) == ()  # its Added said it all
    assert store.update(WebhookOutcome(SD, "unauthorized")) == ()
    assert follower.writes[1:] == [known]
    (change,) = known
    assert isinstance(change, Updated)
    assert change.outcome == WebhookOutcome(SD, "known", "sd-1")
    labels = {"provider": SD_PROVIDER, "source": SD}
    assert sample(store, "asyncjob_webhooks_total", **labels, result="known") == 1
    assert sample(store, "asyncjob_webhooks_total", **labels, result="unauthorized") == 1


def test_a_follower_that_fails_does_not_fail_the_write_and_one_that_left_hears_nothing() -> None:
    store = store_with()

    def broken(_changes: tuple[Change, ...]) -> None:
        raise RuntimeError("a bug in a follower")

    store.subscribe(SOURCE, broken)
    follower = Follower()
    leave = store.subscribe(SOURCE, follower)
    store.add("azure_document_translation", SOURCE, "b1", None, "api")
    assert store.get(SOURCE, "b1") is not None
    leave()
    store.delete(SOURCE, "b1")
    assert follower.kinds() == [[("Tracked", "listed")], [("Added", "b1")]]
    other = Follower()
    store.subscribe("elsewhere", other)  # another source's writes are not told
    poll(store, "listed", T0, snapshot(State.SUCCEEDED, 5, T0))
    assert other.kinds() == [[("Tracked", "")]]


# -- what runs every second ---------------------------------------------------------------------


class Watched(dict[tuple[str, str] | str, object]):
    """A dict that counts the entries read from it, one by key or all by a scan."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.read = 0

    def get(self, key, default=None):  # type: ignore[no-untyped-def]
        self.read += 1
        return super().get(key, default)

    def __getitem__(self, key):  # type: ignore[no-untyped-def]
        self.read += 1
        return super().__getitem__(key)

    def __iter__(self):  # type: ignore[no-untyped-def]
        self.read += len(self)
        return super().__iter__()

    def items(self):  # type: ignore[no-untyped-def]
        self.read += len(self)
        return super().items()

    def values(self):  # type: ignore[no-untyped-def]
        self.read += len(self)
        return super().values()


def test_retiring_every_second_looks_at_the_due_jobs_not_at_every_job() -> None:
    """10,000 finished jobs and 10,000 retired ones: a retire() with nothing due reads none of
    them; one where three retentions ended reads those three. Deadlines are in heaps."""
    now = [T0]
    store = Store(clock=lambda: now[0])
    store.replace([SourceJobs("azure_document_translation", SOURCE, (), None, 100_000,
                              retention=(HOUR, HOUR), discovery=True,
                              remember_retired=24 * HOUR)])  # fmt: skip
    jobs = [f"b{i}" for i in range(10_000)]
    for i, job_id in enumerate(jobs):
        store.add("azure_document_translation", SOURCE, job_id, None, "api")
        finished = snapshot(State.SUCCEEDED, 5, T0 + timedelta(seconds=i))
        poll(store, job_id, T0 + timedelta(seconds=i), finished)  # ends at T0 + 1 h + i s
    now[0] = T0 + timedelta(hours=1, seconds=10_000)  # every one of them retired...
    assert len(store.retire(now[0])) == len(jobs)
    for i, job_id in enumerate(jobs):  # ...and as many again tracked, finished a second apart
        store.add("azure_document_translation", SOURCE, f"n{job_id}", None, "api")
        finished = snapshot(State.SUCCEEDED, 5, now[0] + timedelta(seconds=i))
        poll(store, f"n{job_id}", now[0] + timedelta(seconds=i), finished)
    tracked, retired = Watched(store._jobs), Watched(store._retired[SOURCE])
    store._jobs, store._retired[SOURCE] = tracked, retired  # type: ignore[assignment]
    start = now[0]
    for second in range(1, 60):  # a minute of an idle exporter: nothing due
        assert store.retire(start + timedelta(seconds=second)) == []
    assert (tracked.read, retired.read) == (0, 0)
    ended = start + timedelta(hours=1, seconds=2.5)  # three retentions ended
    assert [r.job_id for r in store.retire(ended)] == ["nb0", "nb1", "nb2"]
    assert (tracked.read, retired.read) == (3, 0)
    store.retire(start + timedelta(hours=25))  # a day after: those retired then are forgotten
    assert not any(job_id in retired for job_id in (*jobs, "nb0", "nb1", "nb2"))
    assert "nb3" in retired  # retired by this very call
