"""--storage.path: a real SQLite file, real exporter processes, kill -9 and restart."""

from __future__ import annotations

import concurrent.futures
import contextlib
import enum
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import MISSING, dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
import requests
import yaml
from conftest import Metrics, demo_raw_config, disk_full, free_port, wait_until
from hypothesis import given
from hypothesis import strategies as st

from exporter import logging as exporter_logging
from exporter import storage as storage_module
from exporter.model import (
    DOCUMENT_STATES,
    LOSS_SPLITS,
    TASK_STATES,
    TOKEN_KINDS,
    ErrorReason,
    JobRecord,
    JobSnapshot,
    State,
)
from exporter.simulator import ManualClock, Simulator
from exporter.storage import (
    DATABASE,
    ROW_COLUMNS,
    SCHEMA_VERSION,
    Storage,
    StorageError,
    record_from_json,
    record_to_json,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from pathlib import Path

SEEN = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
FINISHED = JobRecord(
    "azure_document_translation", "translator", "batch-1", SEEN, project=None, origin="config",
    snapshot=JobSnapshot(
        state=State.SUCCEEDED, vendor_status="Succeeded", progress={"overall": 1.0},
        documents={"succeeded": 8, "failed": 2, "in_progress": 0, "not_started": 0, "cancelled": 0},
        characters_charged=12000, errors=0,
        created=datetime(2026, 3, 1, 8, 0, 1, tzinfo=UTC),
        last_update=datetime(2026, 3, 1, 8, 5, tzinfo=UTC),
        finished=datetime(2026, 3, 1, 8, 5, tzinfo=UTC),
    ),
    up=True, last_poll_success=datetime(2026, 3, 1, 8, 6, tzinfo=UTC),
    last_progress_change=datetime(2026, 3, 1, 8, 5, 30, tzinfo=UTC),
    finished_at=datetime(2026, 3, 1, 8, 5, tzinfo=UTC), characters_counted=11000,
)  # fmt: skip
FAILING = JobRecord(
    "azure_language_training", "training", "job-2", SEEN, project="Loans", origin="config",
    up=False, last_error=ErrorReason.THROTTLED,
)  # fmt: skip


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    opened = Storage.open(tmp_path / "data")
    yield opened
    opened.close()


def test_records_survive_a_reopen_field_for_field(tmp_path: Path) -> None:
    first = Storage.open(tmp_path / "data")
    first.save([FINISHED, FAILING])
    assert first.flush()
    first.close()
    again = Storage.open(tmp_path / "data")
    try:
        stored = {job.job_id: job for job in again.load()}
    finally:
        again.close()
    assert set(stored) == {"batch-1", "job-2"}
    assert stored["batch-1"] == FINISHED
    assert stored["job-2"] == FAILING
    assert (stored["job-2"].project, stored["job-2"].first_seen) == ("Loans", SEEN)
    assert stored["job-2"].last_error is ErrorReason.THROTTLED


def test_a_row_from_before_the_characters_counter_takes_its_charges_as_counted() -> None:
    """Upgrading must not add every stored batch's whole total to the new counter at once, nor
    stumble on the snapshot's finish time, which such a row lacks."""
    old = record_to_json(FINISHED)
    del old["characters_counted"]
    assert old["snapshot"] is not None
    del old["snapshot"]["finished"]
    restored = restore(FINISHED, old)
    assert restored.characters_counted == 12000
    assert restored.snapshot is not None
    assert restored.snapshot.finished is None
    assert restored.finished_at == FINISHED.finished_at


TRAINING = JobRecord(
    "openai_fine_tuning", "openai", "ftjob-1", SEEN, origin="discovery",
    snapshot=JobSnapshot(
        state=State.RUNNING, vendor_status="running", progress={"overall": 0.25},
        tokens={"trained": 5000}, training_step=25, training_loss={"train": 0.5, "valid": 0.75},
        created=datetime(2026, 3, 1, 8, 0, 1, tzinfo=UTC),
    ),
    up=False, last_error=ErrorReason.TIMEOUT, last_poll_success=datetime(2026, 3, 1, 8, 6, tzinfo=UTC),
    last_progress_change=datetime(2026, 3, 1, 8, 5, 30, tzinfo=UTC), not_found_streak=1,
)  # fmt: skip
# Rows exactly as the exporter wrote them while storage listed the fields by hand
# (`json.dumps(record_to_json(...))`): FINISHED and FAILING before the snapshot had tokens and
# training figures (commit d334380), TRAINING with them (154fee8, the last such list).
WRITTEN_BEFORE = {
    "finished": '{"snapshot": {"state": "succeeded", "vendor_status": "Succeeded", "progress": {"overall": 1.0}, "display_name": "", "tasks": {}, "documents": {"succeeded": 8, "failed": 2, "in_progress": 0, "not_started": 0, "cancelled": 0}, "characters_charged": 12000, "errors": 0, "warnings": null, "created": "2026-03-01T08:00:01+00:00", "last_update": "2026-03-01T08:05:00+00:00", "started": null, "estimated_completion": null, "expiration": null, "finished": "2026-03-01T08:05:00+00:00"}, "up": true, "last_error": null, "last_poll_success": "2026-03-01T08:06:00+00:00", "last_progress_change": "2026-03-01T08:05:30+00:00", "finished_at": "2026-03-01T08:05:00+00:00", "not_found_streak": 0, "characters_counted": 11000}',
    "training": '{"snapshot": {"state": "running", "vendor_status": "running", "progress": {"overall": 0.25}, "display_name": "", "tasks": {}, "documents": {}, "characters_charged": null, "errors": null, "warnings": null, "tokens": {"trained": 5000}, "training_step": 25, "training_loss": {"train": 0.5, "valid": 0.75}, "created": "2026-03-01T08:00:01+00:00", "last_update": null, "started": null, "estimated_completion": null, "expiration": null, "finished": null}, "up": false, "last_error": "timeout", "last_poll_success": "2026-03-01T08:06:00+00:00", "last_progress_change": "2026-03-01T08:05:30+00:00", "finished_at": null, "not_found_streak": 1, "characters_counted": 0}',
    "failing": '{"snapshot": null, "up": false, "last_error": "throttled", "last_poll_success": null, "last_progress_change": null, "finished_at": null, "not_found_streak": 0, "characters_counted": 0}',
}


def restore(like: JobRecord, data: dict[str, Any]) -> JobRecord:
    """The record a stored row's JSON restores, with `like`'s identity (the row's columns)."""
    return record_from_json(data, *(getattr(like, name) for name in ROW_COLUMNS))


def within(keys: Any, data: Any) -> Any:
    """`data` cut down to the keys of `keys`, nested dicts too."""
    if not isinstance(keys, dict):
        return data
    return {key: within(value, data[key]) for key, value in keys.items()}


@pytest.mark.parametrize(
    ("record", "before"), [(FINISHED, "finished"), (FAILING, "failing"), (TRAINING, "training")]
)
def test_a_row_written_before_loads_identically_and_is_written_as_it_was(
    record: JobRecord, before: str
) -> None:
    """No row written before storage followed the dataclasses becomes unreadable: it restores
    the same record; and each key it has is written now as it was then (fields added since add
    keys, and nothing else changes)."""
    written = json.loads(WRITTEN_BEFORE[before])
    assert restore(record, written) == record
    assert within(written, record_to_json(record)) == written


def test_every_field_of_the_record_and_its_snapshot_is_stored() -> None:
    """A field added to JobRecord or JobSnapshot is stored with no change to storage.py: the
    row's JSON holds every field but those that are the row's columns."""
    row = record_to_json(FINISHED)
    assert set(row) == {f.name for f in fields(JobRecord)} - set(ROW_COLUMNS)
    assert set(row["snapshot"]) == {f.name for f in fields(JobSnapshot)}
    assert restore(FINISHED, json.loads(json.dumps(row))) == FINISHED


def _default(f: Any) -> Any:
    return f.default if f.default is not MISSING else f.default_factory()


@pytest.mark.parametrize(
    "name",
    [f.name for f in fields(JobRecord) if f.name not in ROW_COLUMNS]
    + [f"snapshot.{f.name}" for f in fields(JobSnapshot) if f.default is not MISSING
       or f.default_factory is not MISSING],
)  # fmt: skip
def test_a_row_from_before_a_field_existed_gets_the_field_s_default(name: str) -> None:
    """Whichever field is added next, the rows stored before it load, with its default (or,
    for the characters counter, what the row's snapshot had charged: see the test above)."""
    row = record_to_json(FINISHED)
    owner, key = (row["snapshot"], name.split(".")[1]) if "." in name else (row, name)
    del owner[key]
    restored = restore(FINISHED, json.loads(json.dumps(row)))
    if "." in name:
        assert restored.snapshot is not None
        f = next(f for f in fields(JobSnapshot) if f.name == key)
        assert getattr(restored.snapshot, key) == _default(f)
    elif name == "characters_counted":
        assert restored.characters_counted == 12000
    else:
        f = next(f for f in fields(JobRecord) if f.name == key)
        assert getattr(restored, key) == _default(f)


def test_keys_that_no_field_has_are_ignored() -> None:
    """A row written by a newer exporter (or with a field since removed) still loads."""
    row = record_to_json(FINISHED)
    row["from_a_newer_exporter"] = {"x": 1}
    row["snapshot"]["a_removed_field"] = "2026-03-01T08:00:00+00:00"
    assert restore(FINISHED, json.loads(json.dumps(row))) == FINISHED


class Colour(enum.Enum):
    RED = "red"


@dataclass(frozen=True)
class Inner:
    at: datetime
    count: int = 0


@dataclass(frozen=True)
class Outer:
    colour: Colour
    when: datetime | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    inner: Inner | None = None
    ratio: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Unstorable:
    tags: set[str]


def test_fields_are_converted_by_their_type_and_an_unknown_type_is_refused() -> None:
    """What a new field may be: times as ISO strings, enums by value, mappings as objects,
    dataclasses nested, numbers and text as they are. A type storage cannot convert fails
    when storage.py is loaded, naming the field, not when a row is written."""
    codec = storage_module._codec(Outer)
    outer = Outer(Colour.RED, SEEN, {"a": 1}, Inner(SEEN, 3), 0.5, "n")
    data = codec.to_json(outer)
    assert data == {"colour": "red", "when": "2026-03-01T08:00:00+00:00", "counts": {"a": 1},
                    "inner": {"at": "2026-03-01T08:00:00+00:00", "count": 3}, "ratio": 0.5,
                    "note": "n"}  # fmt: skip
    assert codec.from_json(json.loads(json.dumps(data))) == outer
    assert codec.from_json({"colour": "red", "unknown": 1}) == Outer(Colour.RED)
    with pytest.raises(TypeError, match=r"storage cannot keep Unstorable\.tags"):
        storage_module._codec(Unstorable)


times = st.none() | st.datetimes(
    min_value=datetime(2000, 1, 1),  # noqa: DTZ001 - hypothesis wants naive bounds
    max_value=datetime(2100, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)
counts = st.integers(min_value=0, max_value=2**53)


@st.composite
def snapshots(draw: Any) -> JobSnapshot:
    state = draw(st.sampled_from(list(State)))
    ratios = st.floats(min_value=0.0, max_value=1.0)
    return JobSnapshot(
        state=state, vendor_status=draw(st.text(max_size=8)), display_name=draw(st.text(max_size=8)),
        progress={**draw(st.dictionaries(st.text(max_size=5), ratios, max_size=2)),
                  "overall": draw(ratios)},
        tasks=draw(st.dictionaries(st.sampled_from(TASK_STATES), counts)),
        documents=draw(st.dictionaries(st.sampled_from(DOCUMENT_STATES), counts)),
        tokens=draw(st.dictionaries(st.sampled_from(TOKEN_KINDS), counts)),
        training_step=draw(st.none() | counts),
        training_loss=draw(st.dictionaries(st.sampled_from(LOSS_SPLITS),
                                           st.floats(allow_nan=False, allow_infinity=False))),
        characters_charged=draw(st.none() | counts), errors=draw(st.none() | counts),
        warnings=draw(st.none() | counts), created=draw(times), last_update=draw(times),
        started=draw(times), estimated_completion=draw(times), expiration=draw(times),
        finished=draw(times) if state.terminal else None,
    )  # fmt: skip


@given(
    snapshot=st.none() | snapshots(),
    error=st.none() | st.sampled_from(list(ErrorReason)),
    when=st.tuples(times, times, times),
    numbers=st.tuples(st.booleans(), counts, counts),
)
def test_any_record_comes_back_from_its_json_as_it_was(
    snapshot: JobSnapshot | None,
    error: ErrorReason | None,
    when: tuple[datetime | None, ...],
    numbers: tuple[bool, int, int],
) -> None:
    """Field for field, whatever the values, through the JSON text a row holds."""
    record = replace(
        FINISHED, snapshot=snapshot, last_error=error, last_poll_success=when[0],
        last_progress_change=when[1], finished_at=when[2], up=numbers[0],
        not_found_streak=numbers[1], characters_counted=numbers[2],
    )  # fmt: skip
    assert restore(record, json.loads(json.dumps(record_to_json(record)))) == record


@pytest.mark.parametrize(
    ("column", "value"),
    [
        # A running job with a finish time: a check of the model refuses it (as a newer
        # version's stricter check would refuse a row an older one wrote).
        ("record", json.dumps({**record_to_json(FINISHED), "snapshot": {
            **record_to_json(FINISHED)["snapshot"], "state": "running"}})),
        ("record", '{"snapshot": {"state": "no such state"}}'),
        ("record", "not JSON at all"),
        ("record", "[1, 2]"),
        ("first_seen", "yesterday"),
    ],
)  # fmt: skip
def test_a_row_that_cannot_be_read_is_skipped_counted_and_kept(
    tmp_path: Path, column: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """One bad row must not keep every other job, and the exporter, from starting: it is
    skipped, counted as a failed `read`, logged by source and job ID, and left in the file."""
    first = Storage.open(tmp_path / "data")
    bad = replace(FINISHED, job_id="batch-bad")
    first.save([FINISHED, bad, FAILING])
    assert first.flush()
    first.close()
    with sqlite3.connect(tmp_path / "data" / DATABASE) as db:
        db.execute(f"UPDATE jobs SET {column} = ? WHERE job_id = 'batch-bad'", (value,))
    again = Storage.open(tmp_path / "data")
    exporter_logging.configure("info", "json")
    try:
        stored = {job.job_id: job for job in again.load()}
        errors = again.errors()
    finally:
        again.close()
    assert stored == {"batch-1": FINISHED, "job-2": FAILING}
    assert errors == {"open": 0, "write": 0, "read": 1}
    (line,) = [event for event in log_events(capsys) if "cannot be read" in event["event"]]
    assert (line["source"], line["job_id"], line["level"]) == ("translator", "batch-bad", "error")
    with sqlite3.connect(tmp_path / "data" / DATABASE) as db:
        kept = db.execute("SELECT COUNT(*) FROM jobs WHERE job_id = 'batch-bad'").fetchone()
    assert kept == (1,)


def test_delete_removes_the_row(storage: Storage) -> None:
    storage.save([FINISHED, FAILING])
    storage.delete([("translator", "batch-1")])
    assert storage.flush()
    assert [job.job_id for job in storage.load()] == ["job-2"]


def test_writes_are_committed_within_about_a_second_without_a_flush(
    storage: Storage, tmp_path: Path
) -> None:
    """What a crash may lose is bounded: another connection sees the row without flush()."""
    storage.save([FINISHED])
    reader = sqlite3.connect(tmp_path / "data" / DATABASE)
    try:
        wait_until(
            lambda: reader.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1,
            timeout=5,
            what="the writer's batch commit",
        )
    finally:
        reader.close()


def test_a_second_exporter_on_the_same_path_is_refused(storage: Storage, tmp_path: Path) -> None:
    with pytest.raises(StorageError) as caught:
        Storage.open(tmp_path / "data")
    message = str(caught.value)
    assert f"storage directory '{tmp_path / 'data'}' is in use by another exporter" in message
    assert "--storage.path" in message


def test_a_corrupt_file_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    database = tmp_path / "data" / DATABASE
    garbage = b"this is not a database" * 100
    database.write_bytes(garbage)
    with pytest.raises(StorageError) as caught:
        Storage.open(tmp_path / "data")
    message = str(caught.value)
    assert f"storage file '{database}' is not a readable exporter database" in message
    assert "Move it aside" in message
    assert database.read_bytes() == garbage  # nothing silently reset


def test_an_unwritable_path_is_refused_with_what_to_do(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError) as caught:
        Storage.open(blocker / "data")
    assert f"cannot use storage directory '{blocker / 'data'}'" in str(caught.value)
    assert "choose another with --storage.path" in str(caught.value)


def test_schema_version_is_recorded_once_and_a_newer_file_is_refused(tmp_path: Path) -> None:
    for _ in range(2):  # the second open finds the schema current and migrates nothing
        Storage.open(tmp_path / "data").close()
    database = tmp_path / "data" / DATABASE
    with sqlite3.connect(database) as db:
        versions = db.execute("SELECT version FROM schema_version").fetchall()
        assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]  # each migration once
        db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION + 1,))
    db.close()
    with pytest.raises(StorageError, match=f"schema version {SCHEMA_VERSION + 1}, newer than"):
        Storage.open(tmp_path / "data")


def test_a_version_1_file_is_migrated_and_keeps_its_jobs(tmp_path: Path) -> None:
    """A file laid out by hand exactly as schema version 1 defined it (as the first exporter
    with storage left it) is migrated to the current version on open, and its jobs load."""
    (tmp_path / "data").mkdir()
    record = {"snapshot": None, "up": False, "last_error": "auth", "last_poll_success": None,
              "last_progress_change": None, "finished_at": None}  # fmt: skip
    with sqlite3.connect(tmp_path / "data" / DATABASE) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (1)")
        db.execute(
            "CREATE TABLE jobs (source TEXT NOT NULL, job_id TEXT NOT NULL, provider TEXT NOT NULL,"
            " project TEXT, origin TEXT NOT NULL, first_seen TEXT NOT NULL, record TEXT NOT NULL,"
            " PRIMARY KEY (source, job_id))"
        )
        db.execute(
            "INSERT INTO jobs VALUES ('analyze', 'a-1', 'azure_language_analyze_text', NULL,"
            " 'config', '2026-03-01T08:00:00+00:00', ?)",
            (json.dumps(record),),
        )
    db.close()
    opened = Storage.open(tmp_path / "data")
    try:
        (job,) = opened.load()
        assert opened.load_tallies() == {}  # version 2's table, added by the migration
        assert opened.load_retired() == {}  # and version 3's
    finally:
        opened.close()
    assert (job.source, job.job_id, job.first_seen) == ("analyze", "a-1", SEEN)
    # The fields added since version 1 take their defaults.
    assert job == JobRecord("azure_language_analyze_text", "analyze", "a-1", SEEN,
                                 last_error=ErrorReason.AUTH)  # fmt: skip
    with sqlite3.connect(tmp_path / "data" / DATABASE) as db:
        assert db.execute("SELECT max(version) FROM schema_version").fetchone() == (3,)
    db.close()


def records(count: int, origin: str = "api") -> list[JobRecord]:
    return [replace(FAILING, job_id=f"job-{n:04d}", origin=origin) for n in range(count)]


def log_events(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """The JSON log lines written since the last call (after exporter_logging.configure)."""
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line[:1] == "{"]


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage_module, "RETRY_FIRST", 0.05)
    monkeypatch.setattr(storage_module, "RETRY_MAX", 0.1)


@pytest.mark.usefixtures("fast_retries")
def test_a_failed_commit_is_reported_kept_and_retried_until_it_succeeds(
    storage: Storage, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """wait_saved() names the path and the reason instead of pretending; the changes stay,
    one per row, and are written once the storage takes them; one log line per streak."""
    database = str(tmp_path / "data" / DATABASE)
    disk_full(storage)
    exporter_logging.configure("info", "json")
    storage.save(records(50))
    problem = storage.wait_saved(("training", "job-0001"))
    assert problem is not None
    assert problem.startswith(f"cannot write storage file {database!r}: database or disk is full")
    assert storage.problem == problem
    assert not storage.flush()
    for _ in range(20):  # every row changes again and again: the backlog does not grow
        storage.save(records(50, origin="webhook"))
    assert storage.backlog == 50
    wait_until(lambda: storage.errors()["write"] >= 3, what="retries with a backoff")
    disk_full(storage, full=False)
    wait_until(lambda: storage.problem is None, what="the retry that succeeds")
    logged = log_events(capsys)
    assert storage.wait_saved(("training", "job-0001")) is None
    stored = storage.load()
    assert len(stored) == 50
    assert {job.origin for job in stored} == {"webhook"}  # the latest change of each row won
    assert storage.backlog == 0
    events = [e["event"] for e in logged]
    assert events.count("storage write failed; changes kept in memory and retried, not ready") == 1
    assert events.count("storage writable again; what changed meanwhile is written") == 1
    failed = next(e for e in logged if e["level"] == "error")
    assert "exc_info" not in failed  # no traceback: the reason says it all
    assert (failed["operation"], failed["error"]) == ("write", problem)


@pytest.mark.usefixtures("fast_retries")
def test_a_read_only_database_is_reported_as_such(storage: Storage) -> None:
    connection = storage._connection
    assert connection is not None
    connection.execute("PRAGMA query_only = ON")
    storage.save([FINISHED])
    problem = storage.wait_saved()
    assert problem is not None
    assert "attempt to write a readonly database" in problem
    connection.execute("PRAGMA query_only = OFF")
    wait_until(lambda: storage.problem is None, what="the retry that succeeds")
    assert [job.job_id for job in storage.load()] == ["batch-1"]


def test_a_job_already_committed_is_saved_even_while_the_storage_fails(storage: Storage) -> None:
    """Waiting for one job's row does not wait for (or fail with) other rows' changes."""
    storage.save([FINISHED])
    assert storage.wait_saved(("translator", "batch-1")) is None
    disk_full(storage)
    storage.save(records(50))
    assert storage.wait_saved(("training", "job-0001")) is not None
    assert storage.wait_saved(("translator", "batch-1")) is None


def test_close_retries_once_and_logs_what_it_could_not_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    opened = Storage.open(tmp_path / "data")
    disk_full(opened)
    opened.save(records(50))
    assert opened.wait_saved() is not None
    exporter_logging.configure("info", "json")
    opened.close()
    lost = next(
        e
        for e in log_events(capsys)
        if e["event"] == "storage closed with changes it could not write"
    )
    assert lost["rows"] == 50


def test_a_dangling_symlink_is_named_as_such(tmp_path: Path) -> None:
    link = tmp_path / "data"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(StorageError) as caught:
        Storage.open(link)
    assert str(caught.value) == (
        f"storage directory '{link}' is a symbolic link to '{tmp_path / 'gone'}', which does not "
        "exist; create that directory or point --storage.path at one that exists"
    )


# -- real processes --------------------------------------------------------------------------


def start(config: Path, storage_dir: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "exporter", f"--config.file={config}",
         f"--web.listen-address=127.0.0.1:{port}", f"--storage.path={storage_dir}",
         "--log.format=json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def scrape(port: int) -> Metrics | None:
    try:
        return Metrics(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
    except requests.ConnectionError:
        return None


TRANSLATOR = {"provider": "azure_document_translation", "source": "translator"}
SD = {"provider": "stable_diffusion_finetune", "source": "stable-diffusion"}


def stored_states(database: Path) -> dict[str, str]:
    """The state of each stored job, read from the file by another connection."""
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT job_id, record FROM jobs").fetchall()
    db.close()
    return {
        job_id: (json.loads(record)["snapshot"] or {}).get("state", "") for job_id, record in rows
    }


def test_kill_9_and_restart_resumes_without_polling_finished_jobs(tmp_path: Path) -> None:
    """Finished batches come back with their values and cost no upstream request; the running
    fine-tune is polled again and keeps its stall clock."""
    with Simulator(clock=ManualClock(1000.0)) as sim:
        raw = demo_raw_config(sim, poll_interval="300ms")
        raw["sources"] = [raw["sources"][3], raw["sources"][4]]  # translator, stable-diffusion
        raw["sources"][1]["job_ids"] = ["sd-stalled"]
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(raw))
        data = tmp_path / "data"
        port = free_port()
        first = start(config, data, port)
        try:
            before = wait_until(
                lambda: (
                    (m := scrape(port))
                    and m.get(
                        "asyncjob_state", **TRANSLATOR, job_id="batch-partial", state="succeeded"
                    )
                    == 1
                    and m.get("asyncjob_state", **TRANSLATOR, job_id="batch-ok", state="succeeded")
                    == 1
                    and m.get("asyncjob_up", **SD, job_id="sd-stalled") == 1
                    and m
                ),
                what="both batches finished and the fine-tune polled",
            )
            wait_until(  # committed by the writer (at most about a second behind)
                lambda: (
                    stored_states(data / DATABASE)
                    == {
                        "batch-ok": "succeeded",
                        "batch-partial": "succeeded",
                        "sd-stalled": "running",
                    }
                ),
                what="the finished batches in the database",
            )
        finally:
            first.send_signal(signal.SIGKILL)
            first.communicate(timeout=10)
        batch_requests = len(sim.seen("batch-ok")) + len(sim.seen("batch-partial"))
        sd_polls = len(sim.seen("sd-stalled"))

        second = start(config, data, port)
        try:
            after = wait_until(
                lambda: (m := scrape(port)) and len(sim.seen("sd-stalled")) > sd_polls + 2 and m,
                what="the restarted exporter to poll the fine-tune again",
            )
            for job_id, characters in (("batch-ok", 30000.0), ("batch-partial", 12000.0)):
                labels = {**TRANSLATOR, "job_id": job_id}
                assert after.get("asyncjob_state", **labels, state="succeeded") == 1
                assert (
                    after.get("asyncjob_translation_characters_charged_total", **labels)
                    == characters
                )
                assert after.get("asyncjob_up", **labels) == 1
            assert (
                after.get(
                    "asyncjob_documents", **TRANSLATOR, job_id="batch-partial", state="failed"
                )
                == 2
            )
            assert len(sim.seen("batch-ok")) + len(sim.seen("batch-partial")) == batch_requests
            change = "asyncjob_last_progress_change_timestamp_seconds"
            assert after.get(change, **SD, job_id="sd-stalled") == before.get(
                change, **SD, job_id="sd-stalled"
            )
            assert after.get("asyncjob_requests_total", **TRANSLATOR) == 0  # not one request
            finished = "asyncjob_jobs_finished_total"
            assert before.get(finished, **TRANSLATOR, state="succeeded") == 2
            assert after.get(finished, **TRANSLATOR, state="succeeded") == 2  # unchanged
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=15) == 0
            second.communicate(timeout=10)


def test_a_second_exporter_process_on_the_same_path_exits_with_the_reason(tmp_path: Path) -> None:
    with Simulator(clock=ManualClock(60.0)) as sim:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(demo_raw_config(sim)))
        first = start(config, tmp_path / "data", free_port())
        try:
            wait_until((tmp_path / "data" / DATABASE).exists, what="the first to open")
            second = start(config, tmp_path / "data", free_port())
            _, err = second.communicate(timeout=30)
            assert second.returncode == 1
            logged: list[dict[str, Any]] = [
                json.loads(x) for x in err.splitlines() if x.startswith("{")
            ]
            refusal = next(e for e in logged if e["event"] == "cannot open storage")
            assert "is in use by another exporter" in refusal["error"]
        finally:
            first.send_signal(signal.SIGTERM)
            first.communicate(timeout=15)


def test_a_registered_job_survives_kill_9_and_is_polled_again(tmp_path: Path) -> None:
    """A 201 from the jobs API means committed: killed right after it, the exporter comes back
    tracking the job (origin api) and polls it."""
    with Simulator(clock=ManualClock(60.0)) as sim:
        raw = demo_raw_config(sim, poll_interval="300ms")
        raw["sources"] = [raw["sources"][3]]  # the translator
        raw["sources"][0]["job_ids"] = ["batch-ok"]
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(raw))
        data, port = tmp_path / "data", free_port()
        api = f"http://127.0.0.1:{port}/api/v1/jobs"

        def run() -> subprocess.Popen[str]:
            return subprocess.Popen(
                [sys.executable, "-m", "exporter", f"--config.file={config}",
                 f"--web.listen-address=127.0.0.1:{port}", f"--storage.path={data}",
                 "--web.enable-jobs-api", "--log.format=json"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip

        first = run()
        try:
            wait_until(lambda: scrape(port), what="the exporter to serve")
            created = requests.post(api, json={"source": "translator", "job_id": "batch-partial"},
                                    timeout=10)  # fmt: skip
            assert created.status_code == 201
        finally:
            first.send_signal(signal.SIGKILL)  # at once: no writer batch to wait for
            first.communicate(timeout=10)
        polls = len(sim.seen("batch-partial"))
        second = run()
        try:
            # A poll the killed exporter had in flight may reach the simulator after `polls`
            # was counted: the restarted one must be serving before it is asked anything.
            wait_until(lambda: scrape(port), what="the restarted exporter to serve")
            wait_until(lambda: len(sim.seen("batch-partial")) > polls, what="a poll after restart")
            listed = {j["job_id"]: j for j in requests.get(api, timeout=10).json()["jobs"]}
            assert listed["batch-partial"]["origin"] == "api"
            assert listed["batch-ok"]["origin"] == "config"
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=15) == 0
            second.communicate(timeout=10)


# -- a real full disk --------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted at the end whatever happened."""
    if os.geteuid() != 0:
        pytest.fail("the full-disk tests mount a tmpfs and must run as root (CI does)")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> None:
    with contextlib.suppress(OSError), (disk / "filler").open("wb", buffering=0) as filler:
        for _ in range(4096):  # at most 16 MiB: the disk is far smaller
            filler.write(b"\0" * 4096)


def test_a_new_database_on_a_full_disk_is_refused_with_the_reason(small_disk: Path) -> None:
    fill(small_disk)
    with pytest.raises(StorageError) as caught:
        Storage.open(small_disk)
    database = small_disk / DATABASE
    assert str(caught.value).startswith(
        f"cannot create the storage database: cannot write storage file '{database}': "
    )
    assert "no space left on its filesystem" in str(caught.value)
    assert not database.exists()  # no empty file left to be mistaken for a database


@pytest.mark.usefixtures("fast_retries")
def test_a_full_disk_at_start_up_serves_what_is_stored_until_it_can_write(
    small_disk: Path,
) -> None:
    first = Storage.open(small_disk)
    first.save([FINISHED])
    first.close()
    fill(small_disk)
    opened = Storage.open(small_disk)
    try:
        assert [job.job_id for job in opened.load()] == ["batch-1"]
        assert opened.problem is not None
        assert "no space left on its filesystem" in opened.problem
        assert opened.errors()["open"] >= 1
        opened.save([FAILING])
        (small_disk / "filler").unlink()
        wait_until(lambda: opened.problem is None, what="opening for writing once there is room")
        assert opened.wait_saved() is None
        assert {job.job_id for job in opened.load()} == {"batch-1", "job-2"}
    finally:
        opened.close()


class Exporter:
    """An exporter process on `disk` with the jobs API, its log in a file, for the tests."""

    def __init__(self, tmp_path: Path, config: Path, disk: Path, name: str) -> None:
        self.port, self.log = free_port(), tmp_path / f"{name}.log"
        self.base = f"http://127.0.0.1:{self.port}"
        with self.log.open("w") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "exporter", f"--config.file={config}",
                 f"--web.listen-address=127.0.0.1:{self.port}", f"--storage.path={disk}",
                 "--web.enable-jobs-api", "--log.format=json"],
                stdout=subprocess.DEVNULL, stderr=log_file, text=True,
            )  # fmt: skip
        wait_until(lambda: scrape(self.port), what=f"the {name} exporter to serve")

    def register(self, job_ids: list[str], clients: int = 8) -> dict[str, tuple[int, str]]:
        """Register the jobs from concurrent clients: (status, body) by job ID."""

        def one_client(part: list[str]) -> list[tuple[str, int, str]]:
            answers = []
            with requests.Session() as session:
                for job_id in part:
                    r = session.post(f"{self.base}/api/v1/jobs", timeout=30,
                                     json={"source": "translator", "job_id": job_id})  # fmt: skip
                    answers.append((job_id, r.status_code, r.text))
            return answers

        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            parts = pool.map(one_client, [job_ids[i::clients] for i in range(clients)])
        return {job_id: (code, text) for part in parts for job_id, code, text in part}

    def ready(self) -> requests.Response:
        return requests.get(f"{self.base}/-/ready", timeout=5)

    def jobs(self) -> set[str]:
        answer = requests.get(f"{self.base}/api/v1/jobs", params={"limit": "10000"}, timeout=30)
        return {job["job_id"] for job in answer.json()["jobs"]}

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


def test_a_disk_filled_by_registrations_loses_no_acknowledged_job(
    tmp_path: Path, small_disk: Path
) -> None:
    """A burst of registrations fills a real 1 MiB disk: every 201 survives kill -9 and a
    restart on the still full disk; the rest were answered 503 with the reason; /-/ready was
    503 and the errors counted, with one log line. Given room, the restarted exporter is ready
    again and writes what it held back, so after another kill -9 every job is there."""
    with Simulator(clock=ManualClock(60.0)) as sim:
        raw = demo_raw_config(sim, poll_interval="1h")
        raw["sources"] = [{**raw["sources"][3], "job_ids": [], "max_jobs": 100_000}]
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(raw))
        ids = [f"batch-{n:04d}" for n in range(1000)]
        first = Exporter(tmp_path, config, small_disk, "first")
        try:
            answers = first.register(ids)
            ready, metrics = first.ready(), scrape(first.port)
        finally:
            first.kill()
        acknowledged = {job_id for job_id, (code, _) in answers.items() if code == 201}
        refused = {job_id: text for job_id, (code, text) in answers.items() if code == 503}
        second = Exporter(tmp_path, config, small_disk, "second")  # the disk is still full
        try:
            missing = acknowledged - second.jobs()
            assert not missing, f"{len(missing)} of {len(acknowledged)} jobs answered 201 lost"
            assert refused, "the disk never filled"
            assert len(acknowledged) + len(refused) == len(ids)
            for text in refused.values():
                assert "no space left on its filesystem" in json.loads(text)["error"]
            assert ready.status_code == 503
            assert (
                f"storage failing: cannot write storage file '{small_disk / DATABASE}'"
                in ready.text
            )
            assert metrics is not None
            assert (metrics.get("asyncjob_storage_errors_total", operation="write") or 0) >= 1
            log_text = first.log.read_text()
            events = [json.loads(line)["event"] for line in log_text.splitlines()]
            assert len([e for e in events if e.startswith("storage write failed")]) == 1
            assert "Traceback" not in log_text
            again = second.register(sorted(refused))  # fills what SQLite can reuse, then 503
            unsaved = sorted(job_id for job_id, (code, _) in again.items() if code == 503)
            assert unsaved, "the disk never filled again"
            assert second.ready().status_code == 503
            subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
            wait_until(lambda: second.ready().status_code == 200, what="ready once there is room")
            late = second.register(unsaved)  # tracked all along, and now committed: 200
            assert {code for code, _ in late.values()} == {200}
        finally:
            second.kill()
        # A third start would poll each job a third time and expire it (the simulator has no
        # such batches: 404), so the file is read as it was left.
        assert set(stored_states(small_disk / DATABASE)) == set(ids)


def test_a_long_failure_streak_keeps_its_backoff(tmp_path: Path) -> None:
    """After thousands of failed tries (some 85 minutes of a full disk at 5 s) the backoff is
    still 5 s: it does not overflow and stop the writer."""
    storage = Storage.open(tmp_path)
    try:
        storage._retries = 2000
        storage._failed({}, "write", sqlite3.OperationalError("disk I/O error"))
        assert storage._retry_at - time.monotonic() <= 5.0
        assert storage._retries == 2001
    finally:
        storage.close()
