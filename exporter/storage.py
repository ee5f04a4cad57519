"""SQLite persistence of what the store must not lose across a restart (`--storage.path`).

One file, `DIR/asyncjob.db`, in WAL mode, with a `schema_version` table so that upgrades
migrate it forward and a file from a newer exporter is refused rather than misread. Every
tracked job's record is kept: its identity (source, job ID, project), how it arrived (origin),
its last snapshot, when it was first seen, when it finished, when its progress last changed and
how many of its characters charged the source's counter holds (every field of its JobRecord and
JobSnapshot, read off the dataclasses: see ROW_COLUMNS), so a restarted exporter exports
finished jobs without polling them again, stall detection keeps its clock and no count is
repeated. Each source's tally (store.Tally) is kept beside them.

Writes never block a scrape or a poll: `save()` and `delete()` queue the change and return; one
writer thread commits what has queued at least every FLUSH_EVERY seconds, so a crash loses at
most about that much. `wait_saved()` waits until a job's row (or everything queued so far) is
committed and says why when it is not: what the jobs API waits on before it answers 201.

When a commit fails (a full disk, a read-only remount, an I/O error) nothing is dropped: the
changes stay queued, one per row (the latest wins, so memory stays bounded by the rows), and are
retried with a backoff until a commit succeeds. Meanwhile `problem` says why, for /-/ready,
`errors()` counts the failures by operation, and one line is logged when the failures start and
one when they end. A database that exists but cannot be opened for writing at start-up is read
(read-only) and served, and opening it for writing is retried in the same way.

`DIR/lock` is held (flock) while the exporter runs: a second exporter on the same path is
refused at start, as Prometheus refuses a second server on its data directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import fcntl
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from pathlib import Path
from sys import intern
from types import UnionType
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin, get_type_hints

import orjson
import structlog

from exporter.model import JobRecord, JobSnapshot

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 3
FLUSH_EVERY = 1.0
DATABASE = "asyncjob.db"
LOCK = "lock"

# Each entry takes the schema from the version before it to its own number.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE jobs (
            source TEXT NOT NULL,
            job_id TEXT NOT NULL,
            provider TEXT NOT NULL,
            project TEXT,
            origin TEXT NOT NULL,
            first_seen TEXT NOT NULL,
            record TEXT NOT NULL,
            PRIMARY KEY (source, job_id)
        )""",
    ),
    # What outlives the jobs of a source: the finished counts and durations (store.Tally).
    2: ("CREATE TABLE tallies (source TEXT PRIMARY KEY, tally TEXT NOT NULL)",),
    # Jobs that discovery must not bring back: finished, then let go (store.Store.retired).
    3: (
        """CREATE TABLE retired (
            source TEXT NOT NULL,
            job_id TEXT NOT NULL,
            at TEXT NOT NULL,
            PRIMARY KEY (source, job_id)
        )""",
    ),
}


class StorageError(Exception):
    """The storage cannot be used; the message names the path and what to do."""


# -- records as JSON, field by field ----------------------------------------------------------
# What a record keeps is read off the dataclasses, so a field added to JobSnapshot or JobRecord
# is stored without a word here. A row written before a field existed lacks its key and gets
# the field's default; a key no field has (from a newer exporter, or a field since removed) is
# ignored. A field whose type nothing below can convert is refused when this module loads.

_Convert = Callable[[Any], Any]


@functools.lru_cache(maxsize=4096)
def _when(text: str) -> datetime:
    """A stored time, read once per distinct text: many jobs share one (every job a listing
    found has its time as its last success), and one object for all of them is 48 bytes a
    job and a field less."""
    return datetime.fromisoformat(text)


_AS_IS = (str, int, float, bool)
_TYPE_ONLY = {"datetime": datetime, "Mapping": Mapping}  # names model.py imports for types only


@dataclass(frozen=True, slots=True)
class _Codec:
    """How the fields of one dataclass go to a JSON object and back (see _codec)."""

    to_json: Callable[[Any], dict[str, Any]]
    from_json: Callable[..., Any]
    """The instance a JSON object holds, its fields converted; those it lacks get their
    defaults (or an upgrade's value). The fields kept elsewhere (`skip`) come first, in
    `skip`'s order."""


def _converters(owner: type, name: str, kind: Any) -> tuple[_Convert | None, _Convert | None]:
    """How one field's value goes to JSON and back, by its type (None: as it is)."""
    if get_origin(kind) in {Union, UnionType}:  # X | None: None stays None, X as X
        kinds = [k for k in get_args(kind) if k is not type(None)]
        if len(kinds) == 1:
            return _converters(owner, name, kinds[0])
    elif kind in _AS_IS:
        return None, None
    elif kind is datetime:
        return datetime.isoformat, _when
    elif isinstance(kind, type) and issubclass(kind, enum.Enum):
        return attrgetter("value"), kind
    elif get_origin(kind) in {Mapping, dict}:  # the dataclass freezes what it is given
        return dict, None
    elif dataclasses.is_dataclass(kind) and isinstance(kind, type):
        nested = _codec(kind)
        return nested.to_json, nested.from_json
    raise TypeError(f"storage cannot keep {owner.__name__}.{name}: no conversion for {kind!r}")


_ABSENT = object()  # a key the JSON object lacks


def _codec(
    cls: type,
    skip: Sequence[str] = (),
    upgrades: Mapping[str, Callable[[dict[str, Any]], Any]] | None = None,
) -> _Codec:
    """The conversions of the fields of dataclass `cls` but `skip`, each by its type. A field
    the JSON object lacks gets its default, or for a field in `upgrades`, what that works out
    from the object (a field added when rows existed that had a value before it).

    Both are generated once per class, as dataclasses generates __init__, since they run for
    every row written and every row loaded: a loop over the fields instead cost 8% more than
    the hand-written functions these replace. from_json calls the class with every field's
    value, in order: made in a dict first, and then called with it, the 50,000 records of a
    restart took an eighth longer to make."""
    kinds = get_type_hints(cls, localns=_TYPE_ONLY)
    unknown = set(skip) - set(kinds)
    if unknown:
        raise TypeError(f"{cls.__name__} has no fields {sorted(unknown)}")
    namespace: dict[str, Any] = {"cls": cls, "absent": _ABSENT}
    to_json, from_json, args = [], [], []
    for i, f in enumerate(dataclasses.fields(cls)):
        if f.name in skip:
            args.append(f.name)
            continue
        name, upgrade = f.name, (upgrades or {}).get(f.name)
        encode, decode = _converters(cls, name, kinds[name])
        namespace[f"encode{i}"], namespace[f"decode{i}"] = encode, decode
        value = f"obj.{name}"
        if encode is not None:
            value = f"None if {value} is None else encode{i}({value})"
        to_json.append(f"{name!r}: {value}")
        held = "value" if decode is None else f"None if value is None else decode{i}(value)"
        if upgrade is not None:
            namespace[f"upgrade{i}"] = upgrade
            lacking = f"upgrade{i}(data)"
        elif f.default is not dataclasses.MISSING:
            namespace[f"default{i}"] = f.default
            lacking = f"default{i}"
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"factory{i}"] = f.default_factory
            lacking = f"factory{i}()"
        else:  # no default: the object must have it
            from_json.append(f"    value = data[{name!r}]\n    field{i} = {held}\n")
            args.append(f"field{i}")
            continue
        from_json.append(
            f"    value = get({name!r}, absent)\n"
            f"    field{i} = {lacking} if value is absent else {held}\n"
        )
        args.append(f"field{i}")
    source = (
        f"def to_json(obj):\n    return {{{', '.join(to_json)}}}\n"
        f"def from_json(data, {', '.join(skip)}):\n    get = data.get\n{''.join(from_json)}"
        f"    return cls({', '.join(args)})\n"
    )
    exec(source, namespace)  # noqa: S102 - field names from dataclasses.fields(), nothing else
    return _Codec(namespace["to_json"], namespace["from_json"])


def _counted_before_the_counter(data: dict[str, Any]) -> int:
    """A row stored before the characters counter existed: what its job had charged by then is
    taken as counted, so that the new counter starts at the upgrade instead of jumping."""
    snapshot: dict[str, Any] | None = data.get("snapshot")
    return (snapshot and snapshot.get("characters_charged")) or 0


ROW_COLUMNS = ("provider", "source", "job_id", "project", "origin", "first_seen")
"""The record's fields kept in columns of its row (its identity, and how it arrived); the rest
are the row's `record` JSON."""
# The fields added when rows already existed whose value in an older row is not their default
# but is worked out from the rest of that row: field -> (the row's JSON -> its value).
_UPGRADES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "characters_counted": _counted_before_the_counter,
}
_SNAPSHOT = _codec(JobSnapshot)
_RECORD = _codec(JobRecord, skip=ROW_COLUMNS, upgrades=_UPGRADES)


def snapshot_to_json(snap: JobSnapshot) -> dict[str, Any]:
    return _SNAPSHOT.to_json(snap)


def snapshot_from_json(data: dict[str, Any]) -> JobSnapshot:
    snapshot: JobSnapshot = _SNAPSHOT.from_json(data)
    return snapshot


def record_to_json(record: JobRecord) -> dict[str, Any]:
    """A record but its identity (ROW_COLUMNS), as the JSON of its row."""
    return _RECORD.to_json(record)


def record_from_json(data: dict[str, Any], *columns: Any) -> JobRecord:
    """The record a row restores: the values of its columns (in ROW_COLUMNS' order), then its
    JSON; fields the JSON lacks get their defaults, or what _UPGRADES works out."""
    record: JobRecord = _RECORD.from_json(data, *columns)
    return record


_Key = tuple[str, ...]  # the row a change is to: (table, *primary key)
_Change = tuple[str, tuple[Any, ...]] | JobRecord  # (SQL, parameters), or a job's row to upsert
_SELECT = "SELECT provider, source, job_id, project, origin, first_seen, record FROM jobs"
"""Every row: the columns in ROW_COLUMNS' order (as the record's from_json takes them), then
the JSON."""
_UPSERT = (
    "INSERT INTO jobs (source, job_id, provider, project, origin, first_seen, record) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source, job_id) DO UPDATE SET "
    "provider = excluded.provider, project = excluded.project, origin = excluded.origin, "
    "record = excluded.record"
)
_DELETE = "DELETE FROM jobs WHERE source = ? AND job_id = ?"
_RETIRE = "INSERT OR REPLACE INTO retired (source, job_id, at) VALUES (?, ?, ?)"
_UNRETIRE = "DELETE FROM retired WHERE source = ? AND job_id = ?"
_SAVE_TALLY = (
    "INSERT INTO tallies (source, tally) VALUES (?, ?) "
    "ON CONFLICT (source) DO UPDATE SET tally = excluded.tally"
)


def _dumps(value: dict[str, Any]) -> str:
    """JSON text of a row's object. orjson: the standard library's encoder was the larger part
    of the writer's work per row (and its decoder a third of loading 50,000 rows). Both read
    back the same values for what a row holds: strings, whole numbers below 2**63 (model.py
    bounds every count), finite floats (it bounds ratios and losses too)."""
    return orjson.dumps(value).decode()


def _parsed(text: Any) -> Any:
    """One row's JSON, or None (which no record reads) when it is not JSON text."""
    try:
        return orjson.loads(text)
    except (orjson.JSONDecodeError, TypeError):
        return None


def _statement(change: _Change) -> tuple[str, tuple[Any, ...]]:
    """The SQL and parameters of a queued change (a record: the upsert of its row)."""
    if not isinstance(change, JobRecord):
        return change
    r = change
    return _UPSERT, (r.source, r.job_id, r.provider, r.project, r.origin,
                     r.first_seen.isoformat(), _dumps(record_to_json(r)))  # fmt: skip


OPERATIONS = ("open", "write", "read")
"""What failed, for asyncjob_storage_errors_total{operation}: `open` (opening the database for
writing, at start-up or when retrying after it could not be opened), `write` (committing a batch
of changes), `read` (a stored job's row that could not be read at start-up: skipped, and kept in
the file)."""
RETRY_FIRST, RETRY_MAX = 0.5, 5.0  # seconds between attempts while the storage fails, doubling


class Storage:
    """The open database, its lock and its writer thread. Use `Storage.open(directory)`.

    Changes wait in `_pending`, one per row (the latest wins), until a commit succeeds: a
    failed batch goes back there and is retried, so memory grows with the rows that changed,
    not with the changes. `_unsaved` holds, for each such row, the number of its latest change,
    and `_committed` the number up to which everything is in the file."""

    def __init__(
        self,
        directory: Path,
        connection: sqlite3.Connection | None,
        lock: Any,
        reader: sqlite3.Connection | None = None,
        problem: str | None = None,
    ) -> None:
        self.directory = directory
        self._connection = connection  # None: not yet open for writing (see open())
        self._reader = reader  # read-only, for load() while the file cannot be opened to write
        self._lock_file = lock
        self._db = threading.Lock()  # one user of the connections at a time
        self._cond = threading.Condition()  # guards everything below
        self._pending: dict[_Key, _Change] = {}
        self._unsaved: dict[_Key, int] = {}
        self._seq = 0  # the number of the latest change
        self._committed = 0
        self._since = 0.0  # when the oldest pending change came (monotonic)
        self._flush_asked = False
        self._stopping = False
        self._problem = problem
        self._failing_since = time.monotonic() if problem else 0.0
        self._retries = 0
        self._retry_at = time.monotonic() + RETRY_FIRST
        self._errors = dict.fromkeys(OPERATIONS, 0)
        if problem is not None:
            self._errors["open"] += 1
        self._writer = threading.Thread(target=self._write, name="storage-writer", daemon=True)
        self._writer.start()

    @classmethod
    def open(cls, directory: str | Path) -> Storage:
        """Open (or create) the storage in `directory`. Raises StorageError, never resets.

        A database that exists but cannot be opened for writing (a full disk, a read-only
        mount, an I/O error) is opened read-only instead: what it holds is served, the storage
        reports the problem and opening for writing is retried. A database that does not exist
        yet and cannot be created is refused."""
        path = Path(directory)
        if path.is_symlink() and not path.exists():
            raise StorageError(
                f"storage directory {str(path)!r} is a symbolic link to "
                f"{str(path.readlink())!r}, which does not exist; create that directory or point "
                "--storage.path at one that exists"
            )
        try:
            path.mkdir(parents=True, exist_ok=True)
            lock = (path / LOCK).open("a")
        except OSError as exc:
            raise StorageError(
                f"cannot use storage directory {str(path)!r}: {exc.strerror or exc}; "
                "make it writable by the exporter or choose another with --storage.path"
            ) from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise StorageError(
                f"storage directory {str(path)!r} is in use by another exporter (its lock file "
                f"{str(path / LOCK)!r} is held); stop that one or give this one its own "
                "--storage.path"
            ) from None
        database = path / DATABASE
        existed = database.exists()
        try:
            return cls(path, _connect(database), lock)
        except _Unwritable as exc:
            problem = _problem(database, exc.error)
            try:
                reader = _open_read_only(database, problem, existed=existed)
            except StorageError:
                lock.close()
                raise
        except StorageError:
            lock.close()
            raise
        storage = cls(path, None, lock, reader=reader, problem=problem)
        log.error(
            "storage cannot be written; serving what it holds, not ready, retrying",
            path=str(database), error=problem, operation="open",
        )  # fmt: skip
        return storage

    def _read(self, sql: str) -> list[Any]:
        with self._db:
            connection = self._connection or self._reader
            assert connection is not None  # one of them is open until close()
            return connection.execute(sql).fetchall()

    def load(self) -> list[JobRecord]:
        """Every stored job's record (read once, at start, before the writer has anything to
        do)."""
        return list(self.stored())

    def stored(self, batch: int = 1000) -> Iterator[JobRecord]:
        """Every stored job's record, read `batch` rows at a time, so that a caller never holds
        all the rows (nor their parsed JSON) with the records. Each batch's JSON is parsed in
        one call: per-call overhead was a third of parsing row by row."""
        with self._db:
            connection = self._connection or self._reader
            assert connection is not None  # one of them is open until close()
            cursor = connection.execute(_SELECT)
            while rows := cursor.fetchmany(batch):
                try:
                    records = orjson.loads(f"[{','.join(row[-1] for row in rows)}]")
                except (orjson.JSONDecodeError, TypeError):  # a row that is not JSON text
                    records = [_parsed(row[-1]) for row in rows]
                for row, data in zip(rows, records, strict=True):
                    record = self._restored(row, data)
                    if record is not None:
                        yield record

    def _restored(self, row: tuple[Any, ...], data: Any) -> JobRecord | None:
        """The record of one row, or None when the row cannot be read: a newer check of the
        model refuses what it holds, or it is not what the exporter writes. Such a row is
        counted (`read`) and logged, and left in the file for a later version to read; one bad
        row must not keep the exporter, and every other job, from starting."""
        provider, source, job_id, project, origin, first, _ = row
        try:
            # The words many rows share are one string each, not one per row (some 240 bytes
            # a job), as those of records made since are.
            record: JobRecord = _RECORD.from_json(
                data, intern(provider), intern(source), job_id,
                None if project is None else intern(project), intern(origin), _when(first),
            )  # fmt: skip
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            with self._cond:
                self._errors["read"] += 1
            error = f"{type(exc).__name__}: {exc}"
            log.error(  # noqa: TRY400 - the error says what; a traceback would show only our codec
                "stored job cannot be read; skipped, its row kept",
                source=source, job_id=job_id, error=error,
            )  # fmt: skip
            return None
        return record

    def _queue(self, changes: Iterable[tuple[_Key, _Change]]) -> None:
        """Keep each change as its row's latest, for the writer; returns at once. The writer is
        woken only when this is the first change pending: it then waits FLUSH_EVERY from it
        (and while failing, for its retry) without being told of each further change. Waking
        it per change cost a quarter of the exporter's CPU per poll (a thread switch each)."""
        with self._cond:
            idle = not self._pending
            for key, change in changes:
                if not self._pending:
                    self._since = time.monotonic()
                self._seq += 1
                self._pending[key] = change
                self._unsaved[key] = self._seq
            if idle and self._pending:
                self._cond.notify_all()

    def save(
        self, records: Iterable[JobRecord], tally: tuple[str, dict[str, Any]] | None = None
    ) -> None:
        """Queue upserts of these records and of a (source, tally); returns at once. Changes
        queued in one call are committed in one transaction: a tally and the record that says
        what it counted are never written one without the other, so a crash can neither lose
        a count nor, after the restart, repeat it."""
        # A record (immutable) waits as it is; the writer encodes its row when it commits it,
        # one row at a time: queued as JSON, the 50,000 rows of a first listing held 50 MB
        # until their commit, and a row that changes twice before a commit is encoded once.
        changes: list[tuple[_Key, _Change]] = [(("jobs", r.source, r.job_id), r) for r in records]
        if tally is not None:
            source, data = tally
            changes.append((("tallies", source), (_SAVE_TALLY, (source, _dumps(data)))))
        self._queue(changes)

    def load_tallies(self) -> dict[str, dict[str, Any]]:
        """Every source's stored tally, by source (read once, at start)."""
        rows = self._read("SELECT source, tally FROM tallies")
        return {source: orjson.loads(tally) for source, tally in rows}

    def load_retired(self) -> dict[str, dict[str, datetime]]:
        """When each retired job was let go, by source and job ID (read once, at start)."""
        retired: dict[str, dict[str, datetime]] = {}
        for source, job_id, at in self._read("SELECT source, job_id, at FROM retired"):
            retired.setdefault(source, {})[job_id] = datetime.fromisoformat(at)
        return retired

    def retire(self, source: str, job_id: str, at: datetime) -> None:
        """Queue the remembering of a retired job; returns at once."""
        self._queue(((("retired", source, job_id), (_RETIRE, (source, job_id, at.isoformat()))),))

    def unretire(self, keys: Iterable[tuple[str, str]]) -> None:
        """Queue the forgetting of retired jobs; returns at once."""
        self._queue((("retired", *key), (_UNRETIRE, key)) for key in keys)

    def delete(self, keys: Iterable[tuple[str, str]]) -> None:
        """Queue the removal of (source, job_id) rows; returns at once."""
        self._queue((("jobs", *key), (_DELETE, key)) for key in keys)

    @property
    def problem(self) -> str | None:
        """Why the storage cannot be written now (path and reason), or None when it can."""
        with self._cond:
            return self._problem

    @property
    def backlog(self) -> int:
        """Rows with changes not yet committed (one each, however often they changed)."""
        with self._cond:
            return len(self._unsaved)

    def errors(self) -> dict[str, int]:
        """Failed attempts so far, by operation (see OPERATIONS)."""
        with self._cond:
            return dict(self._errors)

    def wait_saved(self, job: tuple[str, str] | None = None, timeout: float = 10.0) -> str | None:
        """Wait until the latest change to this job's row (or, without a job, every change
        queued so far) is committed. Returns None when it is, else why not: the storage's
        problem (at once while it is failing: the change stays queued and is retried), or that
        the commit took longer than `timeout`."""
        with self._cond:
            target = self._seq if job is None else self._unsaved.get(("jobs", *job), 0)
            if self._committed >= target or not self._unsaved:
                return None
            if self._problem is None:
                self._flush_asked = True
                self._cond.notify_all()
                self._cond.wait_for(
                    lambda: self._committed >= target or self._problem is not None, timeout
                )
            if self._committed >= target:
                return None
            return self._problem or (
                f"storage file {str(self.directory / DATABASE)!r} did not commit within "
                f"{timeout:g}s"
            )

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every change queued before this call is committed; False if it was not."""
        return self.wait_saved(timeout=timeout) is None

    def close(self) -> None:
        """Try once more to commit what is queued, stop the writer, release the database and
        the lock. Changes that still cannot be written are lost, and logged as such."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._writer.join(10.0)
        with self._db:
            for connection in (self._connection, self._reader):
                if connection is not None:
                    with contextlib.suppress(sqlite3.Error):
                        connection.close()
        with self._cond:
            lost, problem = len(self._pending), self._problem
        if lost:
            log.error("storage closed with changes it could not write", path=str(self.directory),
                      rows=lost, error=problem)  # fmt: skip
        self._lock_file.close()

    def _due(self) -> float | None:
        """When the writer should next try (monotonic), or None: when something comes."""
        if self._problem is not None:
            return self._retry_at  # failing: retry on the backoff, flushes do not hurry it
        if not self._pending:
            return None
        return time.monotonic() if self._flush_asked else self._since + FLUSH_EVERY

    def _write(self) -> None:
        """Commit what is pending: in batches at least every FLUSH_EVERY (at once for a
        flush), and while the storage fails, on a backoff, with the failed batch kept."""
        while True:
            with self._cond:
                while not self._stopping:
                    due = self._due()
                    now = time.monotonic()
                    if due is not None and due <= now:
                        break
                    self._cond.wait(None if due is None else due - now)
                stopping = self._stopping
                batch, self._pending = self._pending, {}
                self._flush_asked = False
                upto = self._seq
                retry = self._problem is not None  # a reopen to try, even with nothing to write
            if batch or retry:
                self._attempt(batch, upto)
            if stopping:
                return

    def _attempt(self, batch: dict[_Key, _Change], upto: int) -> None:
        operation = "open"
        try:
            with self._db:
                if self._connection is None:
                    self._connection = _connect(self.directory / DATABASE)
                    if self._reader is not None:
                        self._reader.close()
                        self._reader = None
                operation = "write"
                with self._connection:  # one transaction, committed on leaving
                    for change in batch.values():
                        self._connection.execute(*_statement(change))
        except (sqlite3.Error, _Unwritable, StorageError) as exc:
            error = exc.error if isinstance(exc, _Unwritable) else exc
            self._failed(batch, operation, error)
            return
        with self._cond:
            self._committed = upto
            for key in batch:
                if self._unsaved.get(key, upto + 1) <= upto:
                    del self._unsaved[key]
            recovered, self._problem = self._problem is not None, None
            failed_for = time.monotonic() - self._failing_since
            self._retries = 0
            self._cond.notify_all()
        if recovered:
            log.warning("storage writable again; what changed meanwhile is written",
                        path=str(self.directory / DATABASE), rows=len(batch),
                        failed_for=round(failed_for, 1))  # fmt: skip

    def _failed(self, batch: dict[_Key, _Change], operation: str, error: BaseException) -> None:
        """Keep the batch (a change that came since wins), count, and log once per streak."""
        problem = (
            str(error)
            if isinstance(error, StorageError)
            else _problem(self.directory / DATABASE, error)
        )
        with self._cond:
            for key, change in batch.items():
                self._pending.setdefault(key, change)
            self._errors[operation] += 1
            first = self._problem is None
            if first:
                self._failing_since = time.monotonic()
            self._problem = problem
            # The exponent is capped: 2**1024 (some 85 minutes of 5 s tries) overflows a float.
            wait = min(RETRY_MAX, RETRY_FIRST * 2 ** min(self._retries, 32))
            self._retry_at = time.monotonic() + wait
            self._retries += 1
            rows = len(self._pending)
            self._cond.notify_all()
        if first:
            log.error(
                "storage write failed; changes kept in memory and retried, not ready",
                path=str(self.directory / DATABASE), error=problem, operation=operation,
                rows=rows,
            )  # fmt: skip


class _Unwritable(Exception):  # noqa: N818 - internal, carries the sqlite3 error
    """The database exists but cannot be opened for writing now (disk full, read-only, I/O)."""

    def __init__(self, error: sqlite3.Error) -> None:
        super().__init__(str(error))
        self.error = error


def _problem(database: Path, error: BaseException) -> str:
    """What is wrong with writing `database`, with what the filesystem says about it."""
    reason = str(error)
    with contextlib.suppress(OSError):
        fs = os.statvfs(database.parent)
        if fs.f_flag & os.ST_RDONLY:
            reason += "; its filesystem is mounted read-only"
        elif fs.f_bavail * fs.f_frsize < 64 * 1024:
            free = fs.f_bavail * fs.f_frsize
            reason += f"; no space left on its filesystem ({free} bytes free)"
    return f"cannot write storage file {str(database)!r}: {reason}"


def _connect(path: Path) -> sqlite3.Connection:
    """Open, check and migrate the database file. Raises StorageError naming the file, or
    _Unwritable when it cannot be written now."""
    where = str(path)
    try:
        connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    except sqlite3.Error as exc:
        raise _Unwritable(exc) from None
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        _check_integrity(connection)
        _migrate(connection, where)
    except sqlite3.OperationalError as exc:  # full, read-only, I/O, locked: it may pass
        connection.close()
        raise _Unwritable(exc) from None
    except sqlite3.DatabaseError as exc:
        connection.close()
        raise _unreadable(where, exc) from None
    except StorageError:
        connection.close()
        raise
    connection.isolation_level = "DEFERRED"  # transactions from here on: the writer batches
    return connection


def _unreadable(where: str, exc: sqlite3.Error) -> StorageError:
    return StorageError(
        f"storage file {where!r} is not a readable exporter database ({exc}); nothing was "
        "changed. Move it aside to start with empty storage, or restore it from a backup"
    )


def _open_read_only(database: Path, problem: str, *, existed: bool) -> sqlite3.Connection:
    """A read-only connection to a database that cannot be opened for writing now, or a
    StorageError when it holds nothing this exporter can serve (new, or needing migration)."""
    wal = database.with_name(f"{database.name}-wal")
    if not existed or database.stat().st_size == 0:
        if not existed:  # leave no trace of the attempt
            for leftover in (database, wal, database.with_name(f"{database.name}-shm")):
                leftover.unlink(missing_ok=True)
        raise StorageError(
            f"cannot create the storage database: {problem}. Free space (or make it writable) "
            "there, or choose another --storage.path"
        )
    # Without a write-ahead log to replay, the file alone is the whole database: read it as
    # immutable, which needs no shared-memory file (that cannot be created on a full disk).
    immutable = not wal.exists() or wal.stat().st_size == 0
    uri = f"{database.absolute().as_uri()}?mode=ro" + ("&immutable=1" if immutable else "")
    try:
        reader = sqlite3.connect(uri, uri=True, check_same_thread=False)
        version = reader.execute("SELECT max(version) FROM schema_version").fetchone()[0]
    except sqlite3.Error as exc:
        raise StorageError(
            f"{problem}, and it cannot be read either ({exc}). Free space (or make it "
            "writable) there, or choose another --storage.path"
        ) from None
    if version != SCHEMA_VERSION:
        reader.close()
        raise StorageError(
            f"{problem}, and it has schema version {version}, which this exporter must migrate "
            f"to {SCHEMA_VERSION} before it can use it. Free space (or make it writable) there"
        )
    return reader


def _check_integrity(connection: sqlite3.Connection) -> None:
    verdict = connection.execute("PRAGMA quick_check").fetchone()[0]
    if verdict != "ok":
        raise sqlite3.DatabaseError(verdict)


def _migrate(connection: sqlite3.Connection, where: str) -> None:
    connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = connection.execute("SELECT max(version) FROM schema_version").fetchone()
    version = row[0] or 0
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"storage file {where!r} has schema version {version}, newer than this exporter's "
            f"{SCHEMA_VERSION}; run a newer exporter, or move the file aside"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        connection.execute("BEGIN")
        for statement in MIGRATIONS[target]:
            connection.execute(statement)
        connection.execute("INSERT INTO schema_version (version) VALUES (?)", (target,))
        connection.execute("COMMIT")
        log.info("storage migrated", path=where, version=target)
