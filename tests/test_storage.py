"""--storage.path: a real SQLite file, real exporter processes, kill -9 and restart."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
import requests
import yaml
from conftest import Metrics, demo_raw_config, disk_full, free_port, wait_until

from exporter import logging as exporter_logging
from exporter import storage as storage_module
from exporter.model import ErrorReason, JobSnapshot, State
from exporter.simulator import ManualClock, Simulator
from exporter.storage import DATABASE, SCHEMA_VERSION, Storage, StorageError
from exporter.store import JobRecord

if TYPE_CHECKING:
    from collections.abc import Iterator
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
    ),
    up=True, last_poll_success=datetime(2026, 3, 1, 8, 6, tzinfo=UTC),
    last_progress_change=datetime(2026, 3, 1, 8, 5, 30, tzinfo=UTC),
    finished_at=datetime(2026, 3, 1, 8, 5, tzinfo=UTC),
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
    from exporter.storage import record_fields  # noqa: PLC0415

    restored = JobRecord(
        "azure_document_translation", "translator", "batch-1", stored["batch-1"].first_seen,
        stored["batch-1"].project, stored["batch-1"].origin, **record_fields(stored["batch-1"].record),
    )  # fmt: skip
    assert restored == FINISHED
    assert (stored["job-2"].project, stored["job-2"].first_seen) == ("Loans", SEEN)
    assert record_fields(stored["job-2"].record)["last_error"] is ErrorReason.THROTTLED


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
            wait_until(lambda: len(sim.seen("batch-partial")) > polls, what="a poll after restart")
            listed = {j["job_id"]: j for j in requests.get(api, timeout=10).json()["jobs"]}
            assert listed["batch-partial"]["origin"] == "api"
            assert listed["batch-ok"]["origin"] == "config"
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=15) == 0
            second.communicate(timeout=10)
