"""The only shared state, and the one owner of which jobs exist: one immutable `JobRecord` per
tracked job, and request statistics.

It has one write interface, as kube-state-metrics' MetricsStore: `replace` (the config's sources
and their jobs), `add` (a job that came by another route), `update` (an outcome: a poll's, a
listing's or a webhook call's), `delete` (a job removed through the jobs API); and `retire`, its
own deletions when a finished job's retention ends. Each write tells the subscribers of the
source what it changed, as frozen values (`Added`, `Updated`, `Removed`, `Listed`): the
scheduler follows them, and nothing keeps a copy of which jobs exist in step by hand.

Writers replace a record whole under the lock; readers get a tuple of records that no later
write can change, so a scrape never sees half an update.
"""

from __future__ import annotations

import bisect
import heapq
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import structlog

from exporter.model import (
    TOKEN_KINDS,
    UNSUCCESSFUL_STATES,
    ErrorReason,
    JobRecord,
    ListOutcome,
    Origin,
    PollOutcome,
    State,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from exporter.model import JobSnapshot
    from exporter.storage import Storage

log = structlog.get_logger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)


# Upstream calls take from tens of milliseconds to the timeout (10 s by default) and beyond.
REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DURATION_BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0,
                    172800.0)  # fmt: skip
"""asyncjob_job_duration_seconds: from a minute to two days."""
FINISHED_STATES = tuple(s.value for s in State if s.terminal)
DROP_REASONS = ("retention", "expired", "deleted")
"""Why a job stopped being tracked: its retention after finishing ended, its status answered 404
EXPIRE_AFTER polls in a row (the API discarded it), or it was removed through the jobs API."""
EXPIRE_AFTER = 3


@dataclass(frozen=True, slots=True)
class SourceStats:
    """Request statistics of one source, copied out for a scrape."""

    provider: str
    source: str
    tracked_jobs: int
    requests: int
    errors: dict[ErrorReason, int]
    bucket_counts: tuple[int, ...]  # per REQUEST_BUCKETS, then +Inf; not cumulative
    duration_sum: float
    rejected: int  # job IDs refused because the source is at max_jobs
    delayed: int  # requests that waited for the request budget
    webhooks: dict[str, int] | None  # calls by result; None: the source takes no webhook
    tally: Tally
    dropped: dict[str, int]
    discovered: int | None  # jobs first found by listing; None: the source has no discovery


@dataclass(slots=True)
class Tally:
    """What outlives the jobs of a source, and a restart too (it is stored): how many jobs the
    exporter saw finish, by terminal state, and how long they took (created to finished, the
    record's finish time), as histogram buckets (not cumulative, then +Inf) and a sum; and the
    characters charged and the tokens used, each job's increase counted once (its record keeps
    how many were)."""

    finished: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINISHED_STATES, 0))
    buckets: dict[str, list[int]] = field(
        default_factory=lambda: {s: [0] * (len(DURATION_BUCKETS) + 1) for s in FINISHED_STATES}
    )
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(FINISHED_STATES, 0.0))
    characters: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_KINDS, 0))

    def add(self, old: JobRecord, new: JobRecord) -> bool:
        """Count what one poll changed of a job: its finish, once, and the characters charged
        since the poll before. Whether anything was counted (then the tally must be saved with
        the new record)."""
        finished = new.finished and not old.finished
        if finished:
            self.finish(new)
        charged = new.characters_counted - old.characters_counted
        self.characters += charged
        used = False
        if new.tokens_counted is not old.tokens_counted:
            for kind, n in new.tokens_counted.items():
                more = n - old.tokens_counted.get(kind, 0)
                self.tokens[kind] += more
                used = used or more > 0
        return finished or charged > 0 or used

    def finish(self, record: JobRecord) -> None:
        snap = record.snapshot
        assert snap is not None  # only finished jobs are tallied
        state = snap.state.value
        self.finished[state] += 1
        if snap.created is not None and record.finished_at is not None:
            took = max(0.0, (record.finished_at - snap.created).total_seconds())
            self.buckets[state][bisect.bisect_left(DURATION_BUCKETS, took)] += 1
            self.seconds[state] += took

    def to_json(self) -> dict[str, Any]:
        return {"finished": self.finished, "buckets": self.buckets, "seconds": self.seconds,
                "characters": self.characters, "tokens": self.tokens}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tally:
        tally = cls(characters=int(data.get("characters", 0)))  # older tallies lack it
        for kind in TOKEN_KINDS:  # and these
            tally.tokens[kind] = int(data.get("tokens", {}).get(kind, 0))
        for state in FINISHED_STATES:  # a state the file lacks starts at zero
            tally.finished[state] = int(data["finished"].get(state, 0))
            tally.seconds[state] = float(data["seconds"].get(state, 0.0))
            stored = data["buckets"].get(state)
            if stored is not None and len(stored) == len(DURATION_BUCKETS) + 1:
                tally.buckets[state] = [int(n) for n in stored]
        return tally


@dataclass(slots=True)
class _Counters:
    provider: str
    requests: int = 0
    errors: dict[ErrorReason, int] = field(default_factory=lambda: dict.fromkeys(ErrorReason, 0))
    buckets: list[int] = field(default_factory=lambda: [0] * (len(REQUEST_BUCKETS) + 1))
    duration_sum: float = 0.0
    rejected: int = 0
    delayed: int = 0  # requests that waited for the request budget
    webhooks: dict[str, int] | None = None
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    tally: Tally = field(default_factory=Tally)
    discovered: int | None = None

    def count(self, outcome: PollOutcome | ListOutcome) -> None:
        """Every attempt is a request (retries too), whatever became of its body."""
        for attempt in outcome.attempts:
            self.requests += 1
            self.delayed += attempt.delayed
            self.duration_sum += attempt.seconds
            self.buckets[bisect.bisect_left(REQUEST_BUCKETS, attempt.seconds)] += 1
            if attempt.error is not None:
                self.errors[attempt.error] += 1
        answered = not outcome.attempts or outcome.attempts[-1].error is None
        if outcome.error is not None and answered:
            # The request succeeded but its answer was unreadable (or an error sent with a 200).
            self.errors[outcome.error] += 1


def _finished_at(old: JobRecord, snapshot: JobSnapshot, at: datetime) -> datetime | None:
    """When a job finished, by the poll at `at` that answered `snapshot`: None while it runs.
    Once known it is kept. The API's time where it gives one, never later than the poll that
    saw the job finished (an upstream clock ahead of ours must not stretch a retention). Else
    the poll that saw a job it had seen unfinished finish. A job first seen finished with no
    API time (a first listing names every fine-tune ever made) has none: that it just finished
    is not known, so nothing must take it for a fresh event."""
    if not snapshot.state.terminal:
        return None
    if old.finished_at is not None:
        return old.finished_at
    if snapshot.finished is not None:
        return min(snapshot.finished, at)
    seen_unfinished = old.snapshot is not None and not old.snapshot.state.terminal
    return at if seen_unfinished else None


def _updated(old: JobRecord, outcome: PollOutcome) -> JobRecord:
    snapshot = outcome.snapshot
    if snapshot is None:  # a failed poll keeps the last good values
        streak = old.not_found_streak + 1 if outcome.error is ErrorReason.NOT_FOUND else 0
        return replace(old, up=False, last_error=outcome.error, not_found_streak=streak)
    changed = not snapshot.same_progress(old.snapshot)
    return replace(
        old,
        snapshot=snapshot,
        up=True,
        last_error=None,
        last_poll_success=outcome.at,
        last_progress_change=outcome.at if changed else old.last_progress_change,
        finished_at=_finished_at(old, snapshot, outcome.at),
        not_found_streak=0,
        # A total that goes down (it should not) is not counted again when it comes back up.
        characters_counted=max(old.characters_counted, snapshot.characters_charged or 0),
        tokens_counted=_tokens_counted(old.tokens_counted, snapshot.tokens),
    )


def _tokens_counted(counted: Mapping[str, int], tokens: Mapping[str, int]) -> Mapping[str, int]:
    """What a job's tokens have added to its source's tally: each kind's highest total seen."""
    if all(counted.get(kind, 0) >= n for kind, n in tokens.items()):
        return counted  # the common case (no tokens, or none new): no new mapping per poll
    kinds = [kind for kind in TOKEN_KINDS if kind in counted or kind in tokens]
    return MappingProxyType({k: max(counted.get(k, 0), tokens.get(k, 0)) for k in kinds})


WEBHOOK_RESULTS = ("registered", "known", "unauthorized", "invalid", "refused", "unsaved")
"""How a webhook call ended: a new job, one already tracked, a wrong or missing token, no
usable job ID in it, the source at its max_jobs, or a job the storage could not commit."""


KNOWN = "known"
"""The webhook result of a call about a job already tracked: the call says it moved."""
UNCONFIGURED = "unconfigured"
"""Why a job was removed by `replace`: the config no longer tracks it (nor its source)."""


@dataclass(frozen=True, slots=True)
class WebhookOutcome:
    """What one webhook call to a source came to, as the store counts it (webhooks.WebhookCall
    is the call itself): how it ended (one of WEBHOOK_RESULTS), and the job it named, if any."""

    source: str
    result: str
    job_id: str | None = None


@dataclass(frozen=True, slots=True)
class Tracked:
    """The jobs a source tracked when a subscription to its changes began (its first change)."""

    records: tuple[JobRecord, ...]


@dataclass(frozen=True, slots=True)
class Added:
    """A job is tracked from now on: configured, registered, discovered, or resumed."""

    record: JobRecord


@dataclass(frozen=True, slots=True)
class Updated:
    """What an outcome did to a tracked job: a poll's (its own, or a listing's that carried its
    status), a failed listing's that was to poll it, or a webhook call's that says it moved."""

    before: JobRecord
    record: JobRecord
    outcome: PollOutcome | ListOutcome | WebhookOutcome


@dataclass(frozen=True, slots=True)
class Removed:
    """A job is tracked no more: why (one of DROP_REASONS, or UNCONFIGURED), and its last record."""

    record: JobRecord
    reason: str


@dataclass(frozen=True, slots=True)
class Listed:
    """A listing of the source was applied, after the changes it made to its jobs."""

    outcome: ListOutcome


Change = Tracked | Added | Updated | Removed | Listed
Follower = Callable[[tuple[Change, ...]], None]
"""Told each write's changes to one source, in order, under the store's lock: it must be quick
and must not call the store."""


@dataclass(frozen=True, slots=True)
class SourceJobs:
    """What the config says about one source's jobs."""

    provider: str
    source: str
    job_ids: tuple[str, ...]
    project: str | None
    max_jobs: int
    retention: tuple[float, float]  # seconds, after finishing: succeeded, unsuccessful
    webhook: bool = False  # the source takes webhook calls
    discovery: bool = False  # the source lists its jobs
    # How long a job let go is kept from coming back by discovery (None: for ever, when the
    # listing has no dates; else the lookback, past which a listing no longer names it).
    remember_retired: float | None = None


class Store:
    """With a `Storage`, every change to a record is also queued for the database, and jobs the
    config tracks resume from what was stored before a restart."""

    def __init__(
        self,
        storage: Storage | None = None,
        clock: Callable[[], datetime] = _utcnow,
        owns: Callable[[str, str], bool] = lambda _source, _job_id: True,
    ) -> None:
        self._owns = owns  # which jobs are this exporter's (sharding.Shard.owns); the one test
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], JobRecord] = {}
        self._counters: dict[str, _Counters] = {}
        self._storage = storage
        self._clock = clock
        # What storage holds, as records, until the config (replace) or a route (add) asks for
        # them: made row by row as they are read, so that the rows and their parsed JSON are
        # never all held at once (at 50,000 jobs they came to more than the records).
        self._restored = {
            (record.source, record.job_id): record
            for record in (storage.stored() if storage is not None else ())
        }
        self._limits: dict[str, int] = {}
        self._retention: dict[str, tuple[timedelta, timedelta]] = {}  # succeeded, unsuccessful
        self._tallies = storage.load_tallies() if storage is not None else {}
        self._specs: dict[str, SourceJobs] = {}
        self._generation = 0  # moves on with every change to a record: renders key on it
        self._tracked: dict[str, int] = {}  # jobs per source, kept with _jobs (no scans)
        # Jobs of discovery sources that were let go, and when: a listing must not bring back
        # a job that finished and was retired (it would be polled and counted again).
        self._retired = storage.load_retired() if storage is not None else {}
        # When each finished job's retention ends, and when each retired job may be forgotten,
        # soonest first: what runs every second looks at what is due, not at every job. Entries
        # a later write made stale are skipped when they surface; a reload heaps them afresh.
        self._retention_ends: list[tuple[datetime, str, str]] = []
        self._forget_at: list[tuple[datetime, str, str]] = []
        self._followers: dict[str, list[Follower]] = {}  # by source

    # -- subscriptions ------------------------------------------------------------------------

    def subscribe(self, source: str, follower: Follower) -> Callable[[], None]:
        """Tell `follower` every change to `source`'s jobs from now on, one call per write,
        first `Tracked` with the jobs it tracks now (before this returns, so that no change
        falls between the two). Returns the function that ends the subscription."""
        with self._lock:
            current = tuple(record for key, record in self._jobs.items() if key[0] == source)
            self._followers.setdefault(source, []).append(follower)
            self._tell(source, (Tracked(current),))

        def end() -> None:
            with self._lock:
                followers = self._followers.get(source, [])
                if follower in followers:
                    followers.remove(follower)

        return end

    def _tell(self, source: str, changes: tuple[Change, ...]) -> None:
        """Tell the source's followers what one write changed; the caller holds the lock, so
        that every follower sees the writes in the order they were made. The write is done
        whatever a follower does: a follower's bug is logged, not raised to the writer."""
        if not changes:
            return
        for follower in self._followers.get(source, ()):
            try:
                follower(changes)
            except Exception:
                log.exception("a follower of the store failed", source=source)

    # -- the write interface ------------------------------------------------------------------

    def _new_record(
        self, provider: str, source: str, job_id: str, project: str | None, origin: str
    ) -> JobRecord:
        restored = self._restored.pop((source, job_id), None)
        if restored is not None and restored.provider == provider:
            project = project or restored.project
            if (project, origin) == (restored.project, restored.origin):
                return restored  # as stored: the same object, so that it is not saved again
            return replace(restored, project=project, origin=origin)
        return JobRecord(provider, source, job_id, self._clock(), project, origin)

    def replace(self, sources: Iterable[SourceJobs]) -> None:
        """Track these sources: exactly their config-listed jobs (the first `max_jobs`; the
        rest are refused and counted), plus the jobs that came by other routes while their
        source stays. Kept jobs keep their records; jobs new to this process resume from
        storage where it has them, and jobs that came by other routes before a restart are
        tracked again."""
        specs = list(sources)
        with self._lock:
            # Jobs that came by other routes, now or before a restart, stay while their source
            # does (and while it has room).
            others = self._by_other_routes()
            as_stored = {id(record) for record in self._restored.values()}
            jobs: dict[tuple[str, str], JobRecord] = {}
            counters: dict[str, _Counters] = {}
            for spec in specs:
                counters[spec.source] = self._counters_for(spec)
                own = [job_id for job_id in spec.job_ids if self._owns(spec.source, job_id)]
                listed = own[: spec.max_jobs]
                counters[spec.source].rejected += len(own) - len(listed)
                for job_id in listed:
                    old = self._jobs.get((spec.source, job_id))
                    if old is not None and old.provider == spec.provider:
                        jobs[spec.source, job_id] = replace(old, origin=Origin.CONFIG)
                    else:
                        jobs[spec.source, job_id] = self._new_record(
                            spec.provider, spec.source, job_id, spec.project, Origin.CONFIG
                        )
                room = spec.max_jobs - len(listed)
                for record in others.get(spec.source, ()):
                    key = (record.source, record.job_id)
                    ours = record.provider == spec.provider
                    if ours and room > 0 and key not in jobs and self._owns(*key):
                        jobs[key] = record
                        room -= 1
            gone = [key for key in (*self._jobs, *self._restored) if key not in jobs]
            added = [record for key, record in jobs.items() if self._jobs.get(key) is not record]
            changes = self._replaced(self._jobs, jobs)
            self._jobs, self._counters = jobs, counters
            self._generation += 1
            self._tracked = {}
            for source, _ in jobs:
                self._tracked[source] = self._tracked.get(source, 0) + 1
            self._limits = {spec.source: spec.max_jobs for spec in specs}
            self._retention = {
                spec.source: (
                    timedelta(seconds=spec.retention[0]),
                    timedelta(seconds=spec.retention[1]),
                )
                for spec in specs
            }
            self._specs = {spec.source: spec for spec in specs}
            self._restored = {}
            self._heap_deadlines()
            if self._storage is not None:
                self._storage.delete(gone)
                # A job resumed as it was stored needs no write (at 50,000 jobs a restart
                # wrote every row again, a second of CPU and the rows' JSON in memory).
                self._storage.save(r for r in added if id(r) not in as_stored)
            for source, changed in changes.items():
                self._tell(source, tuple(changed))

    def _by_other_routes(self) -> dict[str, list[JobRecord]]:
        """The jobs that came by other routes than the config, tracked now or stored before a
        restart, by source (so that each source looks at its own, not at every job); the
        caller holds the lock."""
        others: dict[str, list[JobRecord]] = {}
        for record in (*self._jobs.values(), *self._restored.values()):
            if record.origin != Origin.CONFIG:
                others.setdefault(record.source, []).append(record)
        return others

    def _replaced(
        self, old: dict[tuple[str, str], JobRecord], new: dict[tuple[str, str], JobRecord]
    ) -> dict[str, list[Change]]:
        """The jobs a replace let go and took on (a job whose provider changed is both), by
        source, for the sources someone follows; the caller holds the lock."""
        followed = {source for source, followers in self._followers.items() if followers}
        changes: dict[str, list[Change]] = {}
        if not followed:
            return changes
        for key, record in old.items():
            kept = new.get(key)
            if key[0] in followed and (kept is None or kept.provider != record.provider):
                changes.setdefault(key[0], []).append(Removed(record, UNCONFIGURED))
        for key, record in new.items():
            was = old.get(key)
            if key[0] in followed and (was is None or was.provider != record.provider):
                changes.setdefault(key[0], []).append(Added(record))
        return changes

    def _counters_for(self, spec: SourceJobs) -> _Counters:
        """A source's counters: kept while its provider stays, with the families it has."""
        counters = self._counters.get(spec.source)
        if counters is None or counters.provider != spec.provider:
            counters = self._fresh(spec)
        if not spec.webhook:
            counters.webhooks = None
        elif counters.webhooks is None:
            counters.webhooks = dict.fromkeys(WEBHOOK_RESULTS, 0)
        if not spec.discovery:
            counters.discovered = None
        elif counters.discovered is None:
            counters.discovered = 0
        return counters

    def _fresh(self, spec: SourceJobs) -> _Counters:
        """A source's counters, its tally resumed from storage where it has one."""
        counters = _Counters(spec.provider)
        stored = self._tallies.pop(spec.source, None)
        if stored is not None:
            counters.tally = Tally.from_json(stored)
        return counters

    def add(
        self, provider: str, source: str, job_id: str, project: str | None, origin: str
    ) -> tuple[JobRecord, bool] | None:
        """Track a job that came by another route than the config: (record, True) when new,
        (its record, False) when already tracked, None when the source is at its max_jobs
        (counted). The source must be configured."""
        with self._lock:
            old = self._jobs.get((source, job_id))
            if old is not None:
                return old, False
            counters = self._counters[source]
            if self._tracked.get(source, 0) >= self._limits[source]:
                counters.rejected += 1
                return None
            record = self._jobs[source, job_id] = self._new_record(
                provider, source, job_id, project, origin
            )
            self._generation += 1
            self._tracked[source] = self._tracked.get(source, 0) + 1
            self._heap_retention(None, record)  # resumed from storage, it may be finished
            if self._retired.get(source, {}).pop(job_id, None) and self._storage is not None:
                self._storage.unretire(((source, job_id),))  # asked for again: track it anew
            if self._storage is not None:
                self._storage.save((record,))
            self._tell(source, (Added(record),))
            return record, True

    def update(self, outcome: PollOutcome | ListOutcome | WebhookOutcome) -> tuple[Change, ...]:
        """Apply one outcome, in one step, and return what it changed (told to the source's
        followers too). A poll's: the job's record, its source's request statistics and tally
        (a finish, characters charged); `Updated`, and `Removed` as well when the job expired
        (EXPIRE_AFTER polls in a row answered 404 and the config does not list it); nothing
        when the job is no longer tracked (removed while the poll was in flight). A listing's:
        see `_apply_listing`. A webhook call's: it is counted, and a call about a job already
        tracked is an `Updated` that says it moved."""
        with self._lock:
            if isinstance(outcome, WebhookOutcome):
                changes = self._count_webhook(outcome)
            elif isinstance(outcome, ListOutcome):
                changes = self._apply_listing(outcome)
            else:
                counters = self._counters.get(outcome.source)
                if counters is None:
                    return ()
                counters.count(outcome)
                changes = self._apply_poll(outcome, counters)
            self._tell(outcome.source, changes)
            return changes

    def _apply_poll(self, outcome: PollOutcome, counters: _Counters) -> tuple[Change, ...]:
        """update() of a poll but for counting its requests; the caller holds the lock."""
        key = (outcome.source, outcome.job_id)
        old = self._jobs.get(key)
        if old is None:
            return ()
        new = self._jobs[key] = _updated(old, outcome)
        self._generation += 1
        self._heap_retention(old, new)
        tallied = counters.tally.add(old, new)
        if self._storage is not None:
            tally = (outcome.source, counters.tally.to_json()) if tallied else None
            self._storage.save((new,), tally)  # together: see Storage.save
        updated = Updated(old, new, outcome)
        if new.not_found_streak >= EXPIRE_AFTER and new.origin != Origin.CONFIG:
            self._drop(key, "expired")  # its row's deletion supersedes the save
            return updated, Removed(new, "expired")
        return (updated,)

    def _apply_listing(self, outcome: ListOutcome) -> tuple[Change, ...]:
        """Apply one listing of a source, in one step: its requests are counted once; a job
        new to the store is added (origin "discovery"; not one retired before, and not past
        max_jobs, which is counted); a status the listing carries is applied as that job's poll
        (but to finished jobs: they change no more). A failed listing marks the unfinished
        jobs it was to poll as failing, keeping their last good values. `Listed` comes last.
        The caller holds the lock."""
        source = outcome.source
        counters, spec = self._counters.get(source), self._specs.get(source)
        if counters is None or spec is None:
            return ()
        counters.count(outcome)
        changes: list[Change] = []
        if outcome.error is not None:
            for job_id in outcome.covers:
                old = self._jobs.get((source, job_id))
                if old is not None and not old.finished:
                    failing = replace(old, up=False, last_error=outcome.error)
                    self._jobs[source, job_id] = failing
                    self._generation += 1
                    if self._storage is not None:
                        self._storage.save((failing,))
                    changes.append(Updated(old, failing, outcome))
        else:
            changes += (Added(record) for record in self._discover(outcome, spec, counters))
            for job_id, _, snapshot in outcome.listed:
                record = self._jobs.get((source, job_id))
                if snapshot is not None and record is not None and not record.finished:
                    changes += self._apply_poll(outcome.poll_of(job_id, snapshot), counters)
        changes.append(Listed(outcome))
        return tuple(changes)

    def _discover(
        self, outcome: ListOutcome, spec: SourceJobs, counters: _Counters
    ) -> list[JobRecord]:
        """Track the listed jobs new to the store; the caller holds the lock."""
        retired = self._retired.get(spec.source, {})
        room = spec.max_jobs - self._tracked.get(spec.source, 0)
        added = []
        for job_id, project, _ in outcome.listed:
            key = (spec.source, job_id)
            if key in self._jobs or job_id in retired or not self._owns(*key):
                continue
            if room <= 0:
                counters.rejected += 1
                continue
            record = self._new_record(spec.provider, spec.source, job_id, project, Origin.DISCOVERY)
            self._jobs[spec.source, job_id] = record
            self._generation += 1
            self._tracked[spec.source] = self._tracked.get(spec.source, 0) + 1
            self._heap_retention(None, record)
            added.append(record)
            room -= 1
            counters.discovered = (counters.discovered or 0) + 1
        if added and self._storage is not None:
            self._storage.save(added)
        return added

    def _count_webhook(self, call: WebhookOutcome) -> tuple[Change, ...]:
        """update() of a webhook call; the caller holds the lock. Calls to a source that takes
        none (or is gone) are not counted: it has no such counter."""
        counters = self._counters.get(call.source)
        if counters is not None and counters.webhooks is not None:
            counters.webhooks[call.result] += 1
        record = None if call.job_id is None else self._jobs.get((call.source, call.job_id))
        if record is None or call.result != KNOWN:
            return ()
        return (Updated(record, record, call),)

    def delete(self, source: str, job_id: str) -> JobRecord | None:
        """Stop tracking a job (dropped as "deleted"); its record, or None if not tracked."""
        with self._lock:
            record = self._drop((source, job_id), "deleted")
            if record is not None:
                self._tell(source, (Removed(record, "deleted"),))
            return record

    def retire(self, now: datetime) -> list[JobRecord]:
        """Drop the finished jobs whose retention has ended (not those the config lists),
        counted from the finish, or where that is not known from the poll that found the job
        finished (a finished job is polled no more, so that poll is its last success); and
        forget the retired jobs no listing can name any more. Runs every second: it looks at
        the deadlines that passed, not at every job."""
        with self._lock:
            self._forget_retired(now)
            retired = []
            heap = self._retention_ends
            while heap and heap[0][0] < now:
                ends, source, job_id = heapq.heappop(heap)
                record = self._jobs.get((source, job_id))
                if record is None or self._retention_end(record) != ends:
                    continue  # stale: gone, or its retention end moved (it has another entry)
                self._drop((source, job_id), "retention")
                retired.append(record)
                self._tell(source, (Removed(record, "retention"),))
            return retired

    def _drop(self, key: tuple[str, str], reason: str) -> JobRecord | None:
        """Stop tracking a job, counting why; on a discovery source a job that did not come
        from the config is remembered, so that no listing brings it back. The caller holds
        the lock, and tells the followers."""
        record = self._jobs.pop(key, None)
        self._generation += 1
        if record is not None:
            self._tracked[key[0]] -= 1
            self._counters[key[0]].dropped[reason] += 1
            spec = self._specs.get(key[0])
            if spec is not None and spec.discovery and record.origin != Origin.CONFIG:
                now = self._clock()
                self._retired.setdefault(key[0], {})[key[1]] = now
                keep = self._keep_retired(key[0])
                if keep is not None:
                    heapq.heappush(self._forget_at, (now + keep, *key))
                if self._storage is not None:
                    self._storage.retire(key[0], key[1], now)
            if self._storage is not None:
                self._storage.delete((key,))
        return record

    def _forget_retired(self, now: datetime) -> None:
        """Forget retired jobs no listing can name any more (created before the lookback), and
        those of sources that no longer discover. The caller holds the lock."""
        forgotten = []
        heap = self._forget_at
        while heap and heap[0][0] < now:
            when, source, job_id = heapq.heappop(heap)
            jobs = self._retired.get(source, {})
            at, keep = jobs.get(job_id), self._keep_retired(source)
            if at is None or keep is None or at + keep != when:
                continue  # stale: asked for again (and maybe retired again since)
            del jobs[job_id]
            forgotten.append((source, job_id))
        if forgotten and self._storage is not None:
            self._storage.unretire(forgotten)

    def _keep_retired(self, source: str) -> timedelta | None:
        """How long a retired job of `source` is remembered; None: for ever (its listing names
        every job ever made)."""
        spec = self._specs.get(source)
        if spec is not None and spec.discovery and spec.remember_retired is None:
            return None
        return timedelta(seconds=spec.remember_retired or 0.0) if spec else timedelta(0)

    def _retention_end(self, record: JobRecord) -> datetime | None:
        """When a job's retention ends; None while it runs, and for a job the config lists."""
        if record.origin == Origin.CONFIG or not record.finished:
            return None
        since = record.finished_at or record.last_poll_success
        return None if since is None else since + self._retention_of(record)

    def _heap_retention(self, old: JobRecord | None, new: JobRecord) -> None:
        """Heap a job's retention end when a write gave it one, or moved it; the caller holds
        the lock. Stale entries (of jobs gone, or moved) are dropped all at once if they come
        to outnumber the jobs."""
        ends = self._retention_end(new)
        if ends is None or (old is not None and ends == self._retention_end(old)):
            return
        heapq.heappush(self._retention_ends, (ends, new.source, new.job_id))
        if len(self._retention_ends) > 2 * len(self._jobs) + 1024:
            self._heap_deadlines()

    def _heap_deadlines(self) -> None:
        """Every job's retention end and every retired job's forgetting, afresh: after a reload
        (which can change both), and when stale entries pile up. The caller holds the lock."""
        self._retention_ends = [
            (ends, *key)
            for key, record in self._jobs.items()
            if (ends := self._retention_end(record)) is not None
        ]
        heapq.heapify(self._retention_ends)
        self._forget_at = [
            (at + keep, source, job_id)
            for source, jobs in self._retired.items()
            if (keep := self._keep_retired(source)) is not None
            for job_id, at in jobs.items()
        ]
        heapq.heapify(self._forget_at)

    def _retention_of(self, record: JobRecord) -> timedelta:
        succeeded, unsuccessful = self._retention[record.source]  # every tracked job's source
        state = record.snapshot.state if record.snapshot else State.SUCCEEDED
        return unsuccessful if state in UNSUCCESSFUL_STATES else succeeded

    # -- reads --------------------------------------------------------------------------------

    @property
    def storage(self) -> Storage | None:
        """The storage behind the store (to flush before saying a job is kept), if any."""
        return self._storage

    def jobs_of(self, source: str) -> list[JobRecord]:
        with self._lock:
            return [record for key, record in self._jobs.items() if key[0] == source]

    def get(self, source: str, job_id: str) -> JobRecord | None:
        with self._lock:
            return self._jobs.get((source, job_id))

    @property
    def generation(self) -> int:
        """A number that changes whenever any record does (or a job comes or goes)."""
        with self._lock:
            return self._generation

    def jobs(self) -> tuple[JobRecord, ...]:
        with self._lock:
            return tuple(self._jobs.values())

    def source_stats(self) -> tuple[SourceStats, ...]:
        with self._lock:
            tracked = self._tracked
            return tuple(
                SourceStats(
                    provider=c.provider,
                    source=source,
                    tracked_jobs=tracked.get(source, 0),
                    requests=c.requests,
                    errors=dict(c.errors),
                    bucket_counts=tuple(c.buckets),
                    duration_sum=c.duration_sum,
                    rejected=c.rejected,
                    delayed=c.delayed,
                    webhooks=None if c.webhooks is None else dict(c.webhooks),
                    tally=Tally.from_json(c.tally.to_json()),  # a copy for the scrape
                    dropped=dict(c.dropped),
                    discovered=c.discovered,
                )
                for source, c in self._counters.items()
            )
