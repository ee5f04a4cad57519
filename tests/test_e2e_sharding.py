"""Three shards and one unsharded exporter, real processes on loopback, one real Prometheus.

The shards run the same discovery config against the simulator. Prometheus scrapes the shards
as job "asyncjob" and the unsharded exporter as "asyncjob-single", and evaluates the project's
own alert rules (every `for` shortened to 0s, so the test need not wait minutes).
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
import requests
import yaml
from conftest import REPO, Processes, free_port, wait_ready, wait_until

from exporter.sharding import Shard
from exporter.simulator import DEMO_KEY, ManualClock, SimJob, Simulator

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

pytestmark = pytest.mark.e2e

SHARDS = 3
RULES = REPO / "alerting" / "rules" / "asyncjob-alerts.yaml"
RECORDING_RULES = REPO / "alerting" / "rules" / "asyncjob-recording.yaml"
DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
# Panels whose numbers legitimately differ between one exporter and three: request counts and
# rates (each shard lists the APIs), the exporters' own poll times and health, and the lists cut
# with topk (equal values may be cut differently).
DIFFERS = ("rate(", "increase(", "_timestamp_seconds", "asyncjob_request", "discovered",
           "process_", "up{", "scrape_", "by (instance)", "topk(", "$__")  # fmt: skip


def jobs() -> tuple[SimJob, ...]:
    batches = tuple(
        SimJob(f"b-{i}", "azure_document_translation", start_delay=0, units=4, created_at=-60 - i,
               duration=10.0**7 if i % 4 == 0 else 5, outcome="failed" if i % 7 == 3 else "succeeded")
        for i in range(24)
    )  # fmt: skip
    training = tuple(
        SimJob(f"t-{i}", "azure_language_training", start_delay=0, created_at=-60 - i, project=f"p{i % 2}",
               duration=10.0**7 if i % 3 == 0 else 5)
        for i in range(12)
    )  # fmt: skip
    analyze = tuple(SimJob(f"a-{i}", "azure_language_analyze_text", start_delay=0, duration=10.0**7)
                    for i in range(12))  # fmt: skip
    return (*batches, *training, *analyze)


def config(sim: Simulator) -> dict[str, Any]:
    auth = {"subscription_key": DEMO_KEY}
    return {
        "global": {"poll_interval": "500ms", "max_retry_wait": "500ms"},
        "sources": [
            {"name": "translator", "provider": "azure_document_translation", "endpoint": sim.url,
             "auth": auth, "discovery": {"interval": "500ms"}},
            {"name": "training", "provider": "azure_language_training", "endpoint": sim.url,
             "auth": auth, "discovery": {"interval": "500ms"}},
            {"name": "analyze", "provider": "azure_language_analyze_text", "endpoint": sim.url,
             "auth": auth, "job_ids": [f"a-{i}" for i in range(6)]},  # a-6.. come by the API
        ],
    }  # fmt: skip


def consecutive_ports(n: int) -> int:
    """A base port b (a multiple of 10) with b..b+n-1 free: shard i listens on b+i, so the
    peer template is http://127.0.0.1:{b // 10}{shard}."""
    for _ in range(200):
        base = free_port() // 10 * 10
        try:
            for port in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    pytest.fail("no run of free ports")


def exporter(path: Path, port: int, *flags: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "exporter", f"--config.file={path}", "--log.level=warn",
         f"--web.listen-address=127.0.0.1:{port}", "--web.enable-jobs-api", *flags],
        cwd=path.parent,
    )  # fmt: skip


def query(url: str, promql: str, at: float | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"query": promql}
    if at is not None:
        params["time"] = at
    answer = requests.get(f"{url}/api/v1/query", params=params, timeout=10)
    answer.raise_for_status()
    result: list[dict[str, Any]] = answer.json()["data"]["result"]
    return result


def numbers(result: list[dict[str, Any]]) -> list[tuple[tuple[tuple[str, str], ...], str]]:
    """A query's result without the labels that name the scrape (job, instance), sorted."""
    return sorted(
        (tuple(sorted((k, v) for k, v in r["metric"].items() if k not in {"job", "instance"})),
         r["value"][1])
        for r in result
    )  # fmt: skip


def dashboard_queries() -> list[str]:
    found = []
    for path in DASHBOARDS:
        text = path.read_text()
        found += [m.encode().decode("unicode_escape") for m in re.findall(r'"expr": "((?:[^"\\]|\\.)*)"', text)]  # fmt: skip
    return found


def listening(
    start: Callable[[int], list[subprocess.Popen[bytes]]], choose: Callable[[], int]
) -> tuple[int, list[subprocess.Popen[bytes]]]:
    """Start exporters on ports from `choose` and wait until each answers /-/ready. A port
    picked as free can be taken by another process before ours binds it (the exporter then
    exits with "cannot listen"): then the ports are chosen again, up to three times."""
    for _ in range(3):
        base = choose()
        started = start(base)
        ports = [base + i for i in range(len(started))]

        def ready(ports: list[int] = ports, started: list[Any] = started) -> bool | None:
            if any(process.poll() is not None for process in started):
                return None  # one could not listen
            try:
                return all(requests.get(f"http://127.0.0.1:{p}/-/ready", timeout=2).ok
                           for p in ports)  # fmt: skip
            except requests.ConnectionError:
                return False

        deadline = time.monotonic() + 30
        while (state := ready()) is False and time.monotonic() < deadline:
            time.sleep(0.1)
        if state:
            return base, started
        for process in started:
            process.kill()
            process.wait(10)
    pytest.fail("the exporters could not listen on three tries")


def start_shards(path: Path, tmp_path: Path) -> tuple[list[subprocess.Popen[bytes]], int]:
    def start(base: int) -> list[subprocess.Popen[bytes]]:
        peer = f"http://127.0.0.1:{base // 10}{{shard}}"
        return [
            exporter(path, base + i, f"--total-shards={SHARDS}", f"--shard={i}",
                     f"--shard.peer-url={peer}", f"--storage.path={tmp_path}/data-{i}")
            for i in range(SHARDS)
        ]  # fmt: skip

    base, shards = listening(start, lambda: consecutive_ports(SHARDS))
    return shards, base


@pytest.fixture
def running(tmp_path: Path, processes: Processes) -> Iterator[dict[str, Any]]:
    sim = Simulator(jobs=jobs(), clock=ManualClock(60.0)).start()
    started: list[subprocess.Popen[bytes]] = []  # every exporter, stopped whatever happens
    try:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config(sim)))
        shards, base = start_shards(path, tmp_path)
        started += shards
        single_port, single = listening(
            lambda port: [exporter(path, port, f"--storage.path={tmp_path}/data-single")],
            free_port,
        )
        started += single
        url = start_prometheus(processes, tmp_path, base, single_port)
        yield {"prometheus": url, "shards": shards, "ports": [base + i for i in range(SHARDS)],
               "sim": sim}  # fmt: skip
    finally:
        for process in started:
            process.terminate()
        for process in started:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        sim.stop()


def start_prometheus(processes: Processes, tmp_path: Path, base: int, single_port: int) -> str:
    """Prometheus scraping the shards (job asyncjob) and the single exporter, with the rules."""
    rules = tmp_path / "rules.yaml"
    shipped = RULES.read_text()
    assert 'expr: up{job="asyncjob"} == 0\n    for: 5m' in shipped  # the rule as shipped
    rules.write_text(re.sub(r"^(\s+)for: \S+$", r"\1for: 0s", shipped, flags=re.MULTILINE))
    # The recording rules for both scrape jobs, so the dashboards read them for either.
    selector = yaml.safe_load((REPO / "monitoring.yaml").read_text())["selector"]
    recording = tmp_path / "recording.yaml"
    recording.write_text(
        RECORDING_RULES.read_text().replace(selector, 'job=~"asyncjob|asyncjob-single"')
    )
    targets = [f"127.0.0.1:{base + i}" for i in range(SHARDS)]
    prometheus_config = tmp_path / "prometheus.yml"
    prometheus_config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules), str(recording)],
        "scrape_configs": [
            {"job_name": "asyncjob", "static_configs": [{"targets": targets}]},
            {"job_name": "asyncjob-single",
             "static_configs": [{"targets": [f"127.0.0.1:{single_port}"]}]},
        ],
    }))  # fmt: skip
    port = free_port()
    processes.start("prometheus", f"--config.file={prometheus_config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}")  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/-/ready", "Prometheus to be ready")
    return url


def test_shards_split_the_jobs_and_the_dashboards_add_up(running: dict[str, Any]) -> None:
    url = running["prometheus"]
    everything = 24 + 12 + 6

    def counted(job: str) -> float:
        result = query(url, f'count(asyncjob_up{{job="{job}"}})')
        return float(result[0]["value"][1]) if result else 0.0

    wait_until(lambda: counted("asyncjob") == everything == counted("asyncjob-single"),
               timeout=60, what="every job in Prometheus, from the shards and the single one")  # fmt: skip
    # Every job exported by exactly one shard, and every shard has its share.
    per_job = query(url, 'count by (source, job_id) (asyncjob_up{job="asyncjob"})')
    assert {r["value"][1] for r in per_job} == {"1"}
    mine = {r["metric"]["instance"] for r in query(url, 'asyncjob_up{job="asyncjob"}')}
    assert len(mine) == SHARDS
    single = query(url, 'count by (source, job_id) (asyncjob_up{job="asyncjob-single"})')
    assert {tuple(sorted(r["metric"].items())) for r in per_job} == {
        tuple(sorted(r["metric"].items())) for r in single
    }
    shard_info = query(url, "asyncjob_shard_info")
    assert sorted((r["metric"]["shard"], r["metric"]["total_shards"]) for r in shard_info) == [
        ("0", "1"), ("0", "3"), ("1", "3"), ("2", "3")
    ]  # fmt: skip

    # The dashboards' queries give the same numbers over three shards as over one exporter,
    # once the recording rules have caught up with every job on both sides.
    def caught_up() -> bool:
        return all(
            numbers(query(url, f'sum by (state) (source_state:asyncjob_state:sum{{job="{job}"}})'))
            == numbers(query(url, f'sum by (state) (asyncjob_state{{job="{job}"}})'))
            for job in ("asyncjob", "asyncjob-single")
        )

    wait_until(caught_up, timeout=30, what="the recording rules to catch up with every job")
    at, compared = time.time(), 0
    fill = {"$provider": ".*", "$source": ".*", "$job_id": ".*", "$instance": ".*",
            "$price_per_million_characters": "15"}  # fmt: skip
    for panel in dashboard_queries():
        if any(marker in panel for marker in DIFFERS):
            continue
        expr = panel
        for name, value in fill.items():
            expr = expr.replace(name, value)
        sharded = numbers(query(url, expr.replace("$job", "asyncjob"), at))
        alone = numbers(query(url, expr.replace("$job", "asyncjob-single"), at))
        assert sharded == alone, expr
        compared += bool(sharded)
    assert compared >= 5, compared


def test_a_job_registered_on_any_shard_is_polled_by_its_owner(running: dict[str, Any]) -> None:
    ports, sim = running["ports"], running["sim"]
    shard = Shard(0, SHARDS)
    job_id = next(f"a-{i}" for i in range(6, 12) if not shard.owns("analyze", f"a-{i}"))
    owner = shard.owner("analyze", job_id)
    answer = requests.post(f"http://127.0.0.1:{ports[0]}/api/v1/jobs",
                           json={"source": "analyze", "job_id": job_id}, timeout=15)  # fmt: skip
    assert answer.status_code == 201, answer.text
    assert answer.json()["job_id"] == job_id
    listed = requests.get(f"http://127.0.0.1:{ports[owner]}/api/v1/jobs",
                          params={"source": "analyze"}, timeout=10).json()  # fmt: skip
    assert job_id in {j["job_id"] for j in listed["jobs"]}
    here = requests.get(f"http://127.0.0.1:{ports[0]}/api/v1/jobs",
                        params={"source": "analyze"}, timeout=10).json()  # fmt: skip
    assert job_id not in {j["job_id"] for j in here["jobs"]}
    wait_until(lambda: sim.seen(job_id), what="the owner's poll of the registered job")
    again = requests.post(f"http://127.0.0.1:{ports[0]}/api/v1/jobs",
                          json={"source": "analyze", "job_id": job_id}, timeout=15)  # fmt: skip
    assert again.status_code == 200  # idempotent through the forward too
    gone = requests.delete(f"http://127.0.0.1:{ports[0]}/api/v1/jobs/analyze/{job_id}", timeout=15)
    assert gone.status_code == 204


def test_killing_one_shard_fires_exporter_down_for_it_alone(running: dict[str, Any]) -> None:
    url, shards, ports = running["prometheus"], running["shards"], running["ports"]

    def all_up() -> bool:
        result = query(url, 'up{job="asyncjob"}')
        return len(result) == SHARDS and all(r["value"][1] == "1" for r in result)

    wait_until(all_up, timeout=60, what="every shard up in Prometheus")
    shards[2].send_signal(signal.SIGKILL)
    shards[2].wait(10)

    def firing() -> list[dict[str, Any]]:
        return query(url, 'ALERTS{alertname="AsyncJobExporterDown", alertstate="firing"}')

    alerts = wait_until(firing, timeout=60, what="AsyncJobExporterDown firing")
    time.sleep(3)  # a few more evaluations: no other shard joins it
    alerts = firing()
    assert [a["metric"]["instance"] for a in alerts] == [f"127.0.0.1:{ports[2]}"]
    # Its shard is missing too, once for the scrape job (its last samples go stale at once).
    missing = query(url, 'ALERTS{alertname="AsyncJobShardMissing", alertstate="firing"}')
    assert [(a["metric"]["job"], a["metric"]["total_shards"]) for a in missing] == [
        ("asyncjob", "3")
    ]
