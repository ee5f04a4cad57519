"""SQLite persistence of what the store must not lose across a restart (`--storage.path`).

One file, `DIR/asyncjob.db`, in WAL mode, with a `schema_version` table so that upgrades
migrate it forward and a file from a newer exporter is refused rather than misread. Every
tracked job's record is kept: its identity (source, job ID, project), how it arrived (origin),
its last snapshot, when it was first seen, when it finished and when its progress last changed,
so a restarted exporter exports finished jobs without polling them again and stall detection
keeps its clock.

Writes never block a scrape or a poll: `save()` and `delete()` queue the change and return; one
writer thread commits what has queued at least every FLUSH_EVERY seconds, so a crash loses at
most about that much. `flush()` waits until everything queued so far is committed.

`DIR/lock` is held (flock) while the exporter runs: a second exporter on the same path is
refused at start, as Prometheus refuses a second server on its data directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from exporter.model import ErrorReason, JobSnapshot, State

if TYPE_CHECKING:
    from collections.abc import Iterable

    from exporter.store import JobRecord

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


@dataclass(frozen=True, slots=True)
class StoredJob:
    """A job as it was stored: its identity and the record to resume it with."""

    source: str
    job_id: str
    provider: str
    project: str | None
    origin: str
    first_seen: datetime
    record: dict[str, Any]


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def snapshot_to_json(snap: JobSnapshot) -> dict[str, Any]:
    return {
        "state": snap.state.value,
        "vendor_status": snap.vendor_status,
        "progress": dict(snap.progress),
        "display_name": snap.display_name,
        "tasks": dict(snap.tasks),
        "documents": dict(snap.documents),
        "characters_charged": snap.characters_charged,
        "errors": snap.errors,
        "warnings": snap.warnings,
        **{
            key: _time(getattr(snap, key))
            for key in ("created", "last_update", "started", "estimated_completion", "expiration")
        },
    }


def snapshot_from_json(data: dict[str, Any]) -> JobSnapshot:
    times = ("created", "last_update", "started", "estimated_completion", "expiration")
    return JobSnapshot(
        state=State(data["state"]),
        vendor_status=data["vendor_status"],
        progress=data["progress"],
        display_name=data["display_name"],
        tasks=data["tasks"],
        documents=data["documents"],
        characters_charged=data["characters_charged"],
        errors=data["errors"],
        warnings=data["warnings"],
        **{key: _parse_time(data[key]) for key in times},
    )


def record_to_json(record: JobRecord) -> dict[str, Any]:
    return {
        "snapshot": None if record.snapshot is None else snapshot_to_json(record.snapshot),
        "up": record.up,
        "last_error": None if record.last_error is None else record.last_error.value,
        "last_poll_success": _time(record.last_poll_success),
        "last_progress_change": _time(record.last_progress_change),
        "finished_at": _time(record.finished_at),
        "not_found_streak": record.not_found_streak,
    }


def record_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The JobRecord fields a stored record restores (identity comes from the row)."""
    snapshot = data["snapshot"]
    return {
        "snapshot": None if snapshot is None else snapshot_from_json(snapshot),
        "up": bool(data["up"]),
        "last_error": None if data["last_error"] is None else ErrorReason(data["last_error"]),
        "last_poll_success": _parse_time(data["last_poll_success"]),
        "last_progress_change": _parse_time(data["last_progress_change"]),
        "finished_at": _parse_time(data["finished_at"]),
        "not_found_streak": int(data.get("not_found_streak", 0)),
    }


_Change = tuple[str, tuple[Any, ...]]  # (SQL, parameters)
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


class Storage:
    """The open database, its lock and its writer thread. Use `Storage.open(directory)`."""

    def __init__(self, directory: Path, connection: sqlite3.Connection, lock: Any) -> None:
        self.directory = directory
        self._connection = connection
        self._lock_file = lock
        self._changes: queue.SimpleQueue[_Change | threading.Event | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write, name="storage-writer", daemon=True)
        self._writer.start()

    @classmethod
    def open(cls, directory: str | Path) -> Storage:
        """Open (or create) the storage in `directory`. Raises StorageError, never resets."""
        path = Path(directory)
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
        try:
            connection = _connect(path / DATABASE)
        except StorageError:
            lock.close()
            raise
        return cls(path, connection, lock)

    def load(self) -> list[StoredJob]:
        """Every stored job (read once, at start, before the writer has anything to do)."""
        rows = self._connection.execute(
            "SELECT source, job_id, provider, project, origin, first_seen, record FROM jobs"
        ).fetchall()
        return [
            StoredJob(
                source,
                job_id,
                provider,
                project,
                origin,
                datetime.fromisoformat(first),
                json.loads(record),
            )
            for source, job_id, provider, project, origin, first, record in rows
        ]

    def save(self, records: Iterable[JobRecord]) -> None:
        """Queue upserts of these records; returns at once."""
        for r in records:
            row = (r.source, r.job_id, r.provider, r.project, r.origin, r.first_seen.isoformat(),
                   json.dumps(record_to_json(r)))  # fmt: skip
            self._changes.put((_UPSERT, row))

    def load_tallies(self) -> dict[str, dict[str, Any]]:
        """Every source's stored tally, by source (read once, at start)."""
        rows = self._connection.execute("SELECT source, tally FROM tallies").fetchall()
        return {source: json.loads(tally) for source, tally in rows}

    def save_tally(self, source: str, tally: dict[str, Any]) -> None:
        """Queue the upsert of a source's tally; returns at once."""
        self._changes.put((_SAVE_TALLY, (source, json.dumps(tally))))

    def load_retired(self) -> dict[str, dict[str, datetime]]:
        """When each retired job was let go, by source and job ID (read once, at start)."""
        retired: dict[str, dict[str, datetime]] = {}
        for source, job_id, at in self._connection.execute(
            "SELECT source, job_id, at FROM retired"
        ).fetchall():
            retired.setdefault(source, {})[job_id] = datetime.fromisoformat(at)
        return retired

    def retire(self, source: str, job_id: str, at: datetime) -> None:
        """Queue the remembering of a retired job; returns at once."""
        self._changes.put((_RETIRE, (source, job_id, at.isoformat())))

    def unretire(self, keys: Iterable[tuple[str, str]]) -> None:
        """Queue the forgetting of retired jobs; returns at once."""
        for key in keys:
            self._changes.put((_UNRETIRE, key))

    def delete(self, keys: Iterable[tuple[str, str]]) -> None:
        """Queue the removal of (source, job_id) rows; returns at once."""
        for key in keys:
            self._changes.put((_DELETE, key))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every change queued before this call is committed."""
        done = threading.Event()
        self._changes.put(done)
        return done.wait(timeout)

    def close(self) -> None:
        """Commit what is queued, stop the writer, release the database and the lock."""
        self._changes.put(None)
        self._writer.join(10.0)
        with contextlib.suppress(sqlite3.Error):
            self._connection.close()
        self._lock_file.close()

    def _write(self) -> None:
        stopping = False
        while not stopping:
            batch, waiters, stopping = self._take_batch()
            if batch:
                try:
                    with self._connection:  # one transaction, committed on leaving
                        for sql, parameters in batch:
                            self._connection.execute(sql, parameters)
                except sqlite3.Error as exc:
                    log.exception("storage write failed", path=str(self.directory), error=str(exc))
            for waiter in waiters:
                waiter.set()

    def _take_batch(self) -> tuple[list[_Change], list[threading.Event], bool]:
        """Block for the first change, then take what arrives within FLUSH_EVERY of it; a
        flush() or close() ends the batch at once. Returns (changes, flush waiters, stopping)."""
        batch: list[_Change] = []
        waiters: list[threading.Event] = []
        item = self._changes.get()
        deadline = time.monotonic() + FLUSH_EVERY
        while True:
            if item is None:
                return batch, waiters, True
            if isinstance(item, threading.Event):
                waiters.append(item)
                return batch, waiters, False
            batch.append(item)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return batch, waiters, False
            try:
                item = self._changes.get(timeout=remaining)
            except queue.Empty:
                return batch, waiters, False


def _connect(path: Path) -> sqlite3.Connection:
    """Open, check and migrate the database file. Raises StorageError naming the file."""
    where = str(path)
    try:
        connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        _check_integrity(connection)
        _migrate(connection, where)
    except sqlite3.DatabaseError as exc:
        raise StorageError(
            f"storage file {where!r} is not a readable exporter database ({exc}); nothing was "
            "changed. Move it aside to start with empty storage, or restore it from a backup"
        ) from None
    connection.isolation_level = "DEFERRED"  # transactions from here on: the writer batches
    return connection


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
