"""Shared test helpers: fixtures on disk, a simulator + exporter harness, and /metrics reading."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
import yaml
from hypothesis import settings
from prometheus_client.parser import text_string_to_metric_families

from exporter import logging as exporter_logging
from exporter.api import Api
from exporter.app import Exporter
from exporter.config import parse_config
from exporter.poller import poll_job
from exporter.providers import PROVIDERS, package
from exporter.server import HttpServer, make_app
from exporter.simulator import DEMO_JOBS, DEMO_KEY, ManualClock, SimJob, Simulator, demo_config

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from exporter.http import Fetched, HttpClient
    from exporter.model import Attempt, PollOutcome
    from exporter.poller import SourcePoller
    from exporter.providers.base import Provider, SourceBase
    from exporter.storage import Storage
    from exporter.upstream import UpstreamRequest

REPO = Path(__file__).parent.parent
SHARED_REFERENCE = REPO.parent / "shared" / "reference"


def _fixtures(provider: str) -> Path:
    folder = importlib.import_module(package(provider)).__file__
    assert folder is not None, provider
    return Path(folder).parent / "fixtures"


# Each provider's real answers, in its folder (exporter/providers/<name>/fixtures/).
FIXTURES = {provider: _fixtures(provider) for provider in PROVIDERS}


def fixture(provider: str, name: str) -> Any:
    return json.loads((FIXTURES[provider] / name).read_text(encoding="utf-8"))


def example_body(provider: str, name: str, status: str = "200") -> Any:
    """The response body of a vendor example file (they keep `responses[status].body`)."""
    return fixture(provider, name)["responses"][status]["body"]


def source_of(provider: str, **keys: Any) -> Any:
    """A validated `sources[]` entry of `provider` named s on https://x.example, with `keys`
    (its `auth` among them)."""
    raw = {"name": "s", "provider": provider, "endpoint": "https://x.example", **keys}
    return PROVIDERS[provider].source_model.model_validate(raw)


# Hypothesis's deadline per example (200 ms) is a wall-clock assertion: on a loaded 2-core
# machine a slow example is not a bug (a record's round trip failed on it once while a bench ran).
settings.register_profile("no-deadline", deadline=None)
settings.load_profile("no-deadline")

# Generated payloads per parser property (CI can raise it: issue #4 asks 10,000 per parser);
# the default keeps `make test` quick.
FUZZ_EXAMPLES = int(os.environ.get("PARSER_FUZZ_EXAMPLES", "300"))


class Metrics:
    """One scrape of /metrics, parsed with client_python's own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        self.types: dict[str, str] = {}
        self.help: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            self.help[family.name] = family.documentation
            for s in family.samples:
                self.samples[s.name, frozenset(s.labels.items())] = s.value

    def get(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def series(self, name: str, **labels: str) -> list[dict[str, str]]:
        """Label sets of every sample of `name` whose labels include `labels`."""
        want = set(labels.items())
        return [dict(lbls) for (n, lbls), _ in self.samples.items() if n == name and want <= lbls]


def tool(name: str) -> str:
    """A binary from .tools/bin (`make tools`), the venv (PyPI tools), else PATH; never a skip."""
    candidates = (REPO / ".tools" / "bin" / name, Path(sys.executable).parent / name)
    local = next((c for c in candidates if c.exists()), None)
    found = str(local) if local else shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: run `make tools` (scripts/fetch-tools.sh)")
    return found


def run_tool(name: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool from `tool()` in the repo root, bounded in time, never raising on exit code."""
    return subprocess.run(
        [tool(name), *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )


def wait_until(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Retry `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def fetch_each(
    client: HttpClient, requests: Sequence[UpstreamRequest], attempts: list[Attempt]
) -> list[Fetched]:
    """Send `requests` one after another with `client`, on a loop of their own."""

    async def fetch() -> list[Fetched]:
        async with client:
            return [await client.fetch_json(request, attempts) for request in requests]

    return asyncio.run(fetch())


def poll_with(
    client: HttpClient, provider: Provider[Any], source: SourceBase, job_id: str
) -> PollOutcome:
    """One poll of `job_id` with `client`, on a loop of its own; the outcome is not applied."""

    async def poll() -> PollOutcome:
        async with client:
            return await poll_job(client, provider, source, job_id)

    return asyncio.run(poll())


def poll_now(poller: SourcePoller, job_id: str) -> PollOutcome:
    """One poll of `job_id` as `poller` sends it (its settings and budgets); not applied."""
    return poll_with(poller.http(), poller.provider, poller.source, job_id)


def disk_full(storage: Storage, *, full: bool = True) -> None:
    """Make SQLite answer 'database or disk is full' (the file may not grow by one more page),
    or stop it doing so: a full disk without a filesystem to fill."""
    connection = storage._connection  # the test reaches in: a pragma on the writer's connection
    assert connection is not None
    pages = connection.execute("PRAGMA page_count").fetchone()[0] if full else 1073741823
    connection.execute(f"PRAGMA max_page_count = {pages}")


@dataclass
class Harness:
    """A simulator and an exporter serving /metrics, both on 127.0.0.1."""

    sim: Simulator
    clock: ManualClock
    exporter: Exporter
    server: HttpServer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def scrape(self) -> Metrics:
        response = requests.get(f"{self.url}/metrics", timeout=5)
        assert response.status_code == 200
        return Metrics(response.text)


def demo_raw_config(sim: Simulator, **global_overrides: Any) -> dict[str, Any]:
    raw = demo_config(sim.url, poll_interval="200ms")
    raw["global"].update({"timeout": "5s", "max_retry_wait": "200ms", **global_overrides})
    return raw


def named_jobs(raw: dict[str, Any]) -> int:
    """How many jobs a raw config names in its sources' job_ids (the demo's grow with each
    provider's part)."""
    return sum(len(source.get("job_ids", [])) for source in raw["sources"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Processes:
    """Real servers (Prometheus, Alertmanager) for one test: logged to files, always stopped."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._running: list[tuple[subprocess.Popen[bytes], Any]] = []

    def start(self, name: str, *args: str) -> Path:
        log_path = self.directory / f"{name}.log"
        log = log_path.open("wb")
        process = subprocess.Popen([tool(name), *args], stdout=log, stderr=subprocess.STDOUT)
        self._running.append((process, log))
        return log_path

    def stop_all(self) -> None:
        for process, log in self._running:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
            log.close()


def wait_ready(url: str, what: str) -> None:
    def ready() -> bool:
        try:
            return requests.get(url, timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    wait_until(ready, timeout=30, what=what)


def start_prometheus(processes: Processes, directory: Path, config: dict[str, Any]) -> str:
    """A Prometheus with `config` (its data in `directory`), on a free port once ready; its URL."""
    path = directory / "prometheus.yml"
    path.write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    processes.start("prometheus", f"--config.file={path}", f"--storage.tsdb.path={directory / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}")  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/-/ready", "Prometheus")
    return url


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    running = Processes(tmp_path)
    yield running
    running.stop_all()


class Webhook:
    """Alertmanager's webhook receiver: keeps every notification (and alert) it is sent."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        self.alerts: list[dict[str, Any]] = []
        notifications, alerts = self.notifications, self.alerts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                notifications.append(body)
                alerts.extend(body["alerts"])
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def firing(self, alertname: str, **labels: str) -> list[dict[str, Any]]:
        return [
            a
            for a in list(self.alerts)
            if a["status"] == "firing"
            and a["labels"]["alertname"] == alertname
            and all(a["labels"].get(k) == v for k, v in labels.items())
        ]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    receiver = Webhook()
    yield receiver
    receiver.close()


def alertmanager_config(tmp_path: Path, webhook_url: str, **route: str) -> Path:
    """The example config with every receiver pointed at the test's webhook, and short waits
    (or `route`'s); its grouping and inhibitions as shipped."""
    config = yaml.safe_load((REPO / "alerting" / "alertmanager.example.yaml").read_text())
    for receiver in config["receivers"]:
        receiver["webhook_configs"] = [{"url": webhook_url, "send_resolved": True}]
    config["route"].update({"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h",
                            **route})  # fmt: skip
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_alertmanager(processes: Processes, tmp_path: Path, webhook_url: str, **route: str) -> str:
    """A real Alertmanager with `alertmanager_config`, on loopback, ready; its URL."""
    port = free_port()
    processes.start(
        "alertmanager",
        f"--config.file={alertmanager_config(tmp_path, webhook_url, **route)}",
        f"--storage.path={tmp_path / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/-/ready", "Alertmanager")
    return url


def with_source(index: int, **keys: Any) -> Callable[[Simulator], dict[str, Any]]:
    """The demo config for a simulator, with keys of source `index` replaced."""

    def config_for(sim: Simulator) -> dict[str, Any]:
        raw = demo_raw_config(sim)
        raw["sources"][index].update(keys)
        return raw

    return config_for


@pytest.fixture
def make_harness() -> Iterator[Callable[..., Harness]]:
    """Build harnesses from raw configs; everything started is stopped at the end."""
    started: list[Harness] = []

    def make(
        config_for: Callable[[Simulator], dict[str, Any]] = demo_raw_config,
        at: float = 60.0,
        start_polling: bool = False,
        jobs: tuple[SimJob, ...] = DEMO_JOBS,
        sim_clock: Callable[[], float] | None = None,
        jobs_api: bool = False,
        storage: Storage | None = None,
        **sim_options: Any,
    ) -> Harness:
        clock = ManualClock(at)
        sim = Simulator(jobs=jobs, clock=sim_clock or clock, key=DEMO_KEY, **sim_options).start()
        exporter = Exporter(parse_config(config_for(sim), env={}), storage=storage)
        app = make_app(
            exporter.exposition, "/metrics", exporter.not_ready, exporter.store.jobs,
            api=Api(exporter, jobs=jobs_api),
        )  # fmt: skip
        server = HttpServer(app, "127.0.0.1:0")
        server.start()
        harness = Harness(sim, clock, exporter, server)
        started.append(harness)
        if start_polling:
            exporter.start()
        return harness

    yield make
    for harness in started:
        harness.exporter.stop()
        harness.server.stop()
        harness.sim.stop()


@pytest.fixture(autouse=True)
def _quiet_logs() -> None:
    """Tests log at warning level unless they configure logging themselves."""
    exporter_logging.configure("warn", "console")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI a skipped test is a defect (a tool went missing): fail the run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    skipped = reporter.stats.get("skipped", [])
    if os.environ.get("CI") and skipped and exitstatus == 0:
        reporter.write_line(f"CI: {len(skipped)} test(s) skipped; failing the run", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
