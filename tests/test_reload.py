"""Live reload (POST /-/reload, SIGHUP) and shutdown (SIGTERM), as Prometheus does them."""

from __future__ import annotations

import contextlib
import ctypes
import platform
import signal
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
import yaml
from conftest import Harness, Metrics, demo_raw_config, free_port, wait_until

from exporter.server import HttpServer, make_app
from exporter.simulator import Fault, ManualClock, Simulator

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

TRAINING = {"provider": "azure_language_training", "source": "language-training"}


def write(path: Path, raw: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(raw))


def serve_with_lifecycle(h: Harness, config_path: Path) -> tuple[str, HttpServer]:
    app = make_app(
        h.exporter.exposition, "/metrics", h.exporter.not_ready, h.exporter.store.jobs,
        reload=partial(h.exporter.reload, config_path),
    )  # fmt: skip
    server = HttpServer(app, "127.0.0.1:0")
    server.start()
    return f"http://127.0.0.1:{server.port}", server


def scrape(base: str) -> Metrics:
    return Metrics(requests.get(f"{base}/metrics", timeout=5).text)


def test_reload_adds_removes_and_keeps(
    make_harness: Callable[..., Harness], tmp_path: Path
) -> None:
    """New jobs start polling, removed ones disappear, unchanged ones keep state and counters."""
    h = make_harness(at=1000.0, start_polling=True)
    path = tmp_path / "config.yaml"
    raw = demo_raw_config(h.sim)
    write(path, raw)
    base, server = serve_with_lifecycle(h, path)
    try:
        wait_until(
            lambda: scrape(base).get("asyncjob_up", **TRAINING, job_id="train-ok") == 1,
            what="first polls",
        )
        before = scrape(base)
        train_requests = before.get("asyncjob_requests_total", **TRAINING)
        assert before.get("asyncjob_config_last_reload_successful") == 1

        raw["sources"][3]["job_ids"] = ["batch-ok"]  # batch-partial removed
        raw["sources"][1]["job_ids"] = ["analyze-ok", "analyze-new"]  # a new job
        write(path, raw)
        assert requests.post(f"{base}/-/reload", timeout=10).status_code == 200
        after = wait_until(
            lambda: (m := scrape(base)).series("asyncjob_up", job_id="analyze-new") and m,
            what="the new job",
        )
        assert after.series("asyncjob_up", job_id="batch-partial") == []
        assert after.series("asyncjob_state", job_id="batch-partial") == []
        # The training source did not change: same poller, its job finished, its counter kept.
        assert after.get("asyncjob_state", **TRAINING, job_id="train-ok", state="succeeded") == 1
        assert after.get("asyncjob_requests_total", **TRAINING) == train_requests
        assert len(h.sim.seen("train-ok")) == 1  # finished before the reload, not polled again
        assert after.get("asyncjob_config_last_reload_successful") == 1
        reloaded_at = "asyncjob_config_last_reload_success_timestamp_seconds"
        assert (after.get(reloaded_at) or 0) >= (before.get(reloaded_at) or 1)
    finally:
        server.stop()


def test_invalid_file_is_refused_and_the_old_config_keeps_running(
    make_harness: Callable[..., Harness], tmp_path: Path
) -> None:
    h = make_harness(at=1000.0, start_polling=True)
    path = tmp_path / "config.yaml"
    write(path, demo_raw_config(h.sim))
    base, server = serve_with_lifecycle(h, path)
    configured = len(h.exporter.store.jobs())
    try:
        path.write_text("sources:\n  - name: broken\n    provider: azure_foo\n")
        refused = requests.post(f"{base}/-/reload", timeout=10)
        assert refused.status_code == 500
        assert "sources[0].provider: unknown provider 'azure_foo'" in refused.text
        m = scrape(base)
        assert m.get("asyncjob_config_last_reload_successful") == 0
        assert len(m.series("asyncjob_up")) == configured  # still the old jobs
        polls = len(h.sim.seen("sd-stalled"))
        wait_until(lambda: len(h.sim.seen("sd-stalled")) > polls, what="polling to go on")
    finally:
        server.stop()


def test_rotated_secret_file_takes_effect_on_reload(
    make_harness: Callable[..., Harness], tmp_path: Path
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("old-key-revoked\n")
    path = tmp_path / "config.yaml"

    def config(sim: Simulator) -> dict[str, Any]:
        raw = demo_raw_config(sim)
        raw["sources"][1]["auth"] = {"subscription_key_file": str(key_file)}
        write(path, raw)
        return raw

    h = make_harness(config, at=60.0, start_polling=True)
    base, server = serve_with_lifecycle(h, path)
    labels = {
        "provider": "azure_language_analyze_text",
        "source": "language-analyze",
        "job_id": "analyze-ok",
    }
    try:
        wait_until(
            lambda: scrape(base).get("asyncjob_last_poll_error_info", **labels, reason="auth"),
            what="auth failure",
        )
        key_file.write_text("demo-key\n")  # the rotated key
        assert requests.put(f"{base}/-/reload", timeout=10).status_code == 200
        wait_until(
            lambda: scrape(base).get("asyncjob_up", **labels) == 1, what="the new key to be used"
        )
    finally:
        server.stop()


def test_reload_endpoint_needs_the_lifecycle_flag(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    response = requests.post(f"{h.url}/-/reload", timeout=5)
    assert (response.status_code, response.text) == (403, "Lifecycle API is not enabled.\n")


def run_exporter(config: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "exporter", f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
         f"--storage.path={config.parent / 'data'}", "--log.format=json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@dataclass
class Running:
    """A real exporter process polling the translator's batch-ok, with its config on disk."""

    sim: Simulator
    raw: dict[str, Any]
    path: Path
    process: subprocess.Popen[str]
    base: str

    def add_batch_partial(self) -> None:
        self.raw["sources"][0]["job_ids"] = ["batch-ok", "batch-partial"]
        write(self.path, self.raw)


@contextlib.contextmanager
def translator_exporter(tmp_path: Path, **global_overrides: Any) -> Iterator[Running]:
    """Started and polling batch-ok; killed on the way out if it has not exited by then. Its
    stderr is read once it has exited (process.communicate)."""
    with Simulator(clock=ManualClock(60.0)) as sim:
        raw = demo_raw_config(sim, poll_interval="300ms", **global_overrides)
        raw["sources"] = raw["sources"][3:4]  # the translator only
        raw["sources"][0]["job_ids"] = ["batch-ok"]
        path = tmp_path / "config.yaml"
        write(path, raw)
        port = free_port()
        process = run_exporter(path, port)
        running = Running(sim, raw, path, process, f"http://127.0.0.1:{port}")
        try:
            wait_until(lambda: _up(running.base, "batch-ok"), what="the exporter to poll batch-ok")
            yield running
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=10)


def test_sighup_reloads_and_sigterm_exits_promptly(tmp_path: Path) -> None:
    """A real process: SIGHUP adds a job; SIGTERM with a poll hanging upstream exits 0 quickly."""
    with translator_exporter(tmp_path, timeout="60s") as running:
        running.add_batch_partial()
        running.process.send_signal(signal.SIGHUP)
        wait_until(lambda: _up(running.base, "batch-partial"), what="batch-partial after SIGHUP")

        sim = running.sim
        sim.set_fault("batch-ok", Fault(delay=30.0))  # the next poll hangs for 30 s
        wait_until(  # more requests arrived than were answered: one is hanging
            lambda: sum("batch-ok" in p for p in sim.arrivals) > len(sim.seen("batch-ok")),
            what="a poll of batch-ok hanging upstream",
        )
        running.process.send_signal(signal.SIGTERM)
        # Bounded well under the 30 s the hanging upstream would take to answer.
        assert running.process.wait(timeout=15) == 0
        _, err = running.process.communicate(timeout=10)
    assert '"event": "config reloaded"' in err
    assert '"event": "shutting down"' in err


def _up(base: str, job_id: str) -> bool:
    try:
        m = scrape(base)
    except requests.ConnectionError:
        return False
    return (
        m.get(
            "asyncjob_up", provider="azure_document_translation", source="translator", job_id=job_id
        )
        == 1
    )


def thread_kill(pid: int, tid: int, signum: int) -> None:
    """tgkill(2): a signal to one thread of a process, as the kernel may route a process's."""
    number = {"x86_64": 234, "aarch64": 131}[platform.machine()]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, pid, tid, signum) != 0:
        raise OSError(ctypes.get_errno(), f"tgkill({pid}, {tid}, {signum})")


def test_signals_taken_by_another_thread_are_not_lost(tmp_path: Path) -> None:
    """The cause of a flaky reload: a Python-level handler runs only when the main thread runs
    bytecode, so a SIGHUP that a worker thread took (or that came just before the main thread
    blocked) waited for ever. Here each signal goes to a thread that is not the main one."""
    with translator_exporter(tmp_path) as running:
        pid = running.process.pid
        workers = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
        workers.remove(pid)  # the main thread's ID is the process's
        running.add_batch_partial()
        thread_kill(pid, workers[0], signal.SIGHUP)
        wait_until(lambda: _up(running.base, "batch-partial"), what="batch-partial after SIGHUP")
        thread_kill(pid, workers[-1], signal.SIGTERM)
        assert running.process.wait(timeout=15) == 0
        running.process.communicate(timeout=10)
