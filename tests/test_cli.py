"""The command line as a user runs it: --once, --demo in a real process, signals, flags."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
import requests
import yaml
from conftest import REPO, Metrics, demo_raw_config, free_port, wait_until
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import metric_families
from exporter.cli import build_parser, main
from exporter.model import State
from exporter.providers import PROVIDERS
from exporter.simulator import DEMO_JOBS, ManualClock, Simulator, demo_config, parts

if TYPE_CHECKING:
    from pathlib import Path


def test_once_prints_metrics_and_exits_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--once polls every job once and prints the exposition; poll failures are in it, not fatal."""
    with Simulator(clock=ManualClock(1000.0)) as sim:
        raw = demo_raw_config(sim)
        raw["sources"][3]["job_ids"].append("no-such-batch")
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(raw))
        assert main(["--once", "--config.file", str(path)]) == 0
    out, err = capsys.readouterr()
    m = Metrics(out)
    assert {s["provider"] for s in m.series("asyncjob_up")} == set(PROVIDERS)
    assert (
        m.get(
            "asyncjob_up",
            provider="azure_document_translation",
            source="translator",
            job_id="no-such-batch",
        )
        == 0.0
    )
    assert m.get("asyncjob_state", provider="azure_document_translation", source="translator",
                 job_id="batch-ok", state="succeeded") == 1.0, err  # fmt: skip


def test_once_with_bad_config_exits_nonzero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("sources: []\n")
    assert main(["--once", "--config.file", str(path)]) == 1
    assert "sources: expected a non-empty list of sources" in capsys.readouterr().err


def test_demo_runs_every_provider_and_stops_on_sigterm() -> None:
    """`--demo` in its own process: URLs printed, every provider's jobs up, SIGTERM exits 0."""
    calls = [call for part in parts() for call in part.demo_calls]
    called = [job.job_id for part in parts() for job in part.called_jobs]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter",
            "--demo",
            "--web.listen-address=127.0.0.1:0",
            "--log.level=warn",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = [process.stdout.readline() for _ in range(5 + len(calls))]
        assert banner[0].startswith("Simulator:")
        metrics_url = re.search(r"Metrics:\s+(\S+)", banner[1])
        assert metrics_url, banner
        # The demo makes each part's calls (the jobs API, a webhook) and prints each one.
        assert banner[3] == "Jobs arriving by themselves (the demo just did these):\n"
        curls = banner[4 : 4 + len(calls)]
        assert all(line.startswith("  curl -X POST ") for line in curls), curls
        assert all(" http://127.0.0.1:" in line for line in curls), curls
        assert all(any(f'"{job_id}"' in line for line in curls) for job_id in called), curls
        registered = next(line for line in curls if "/api/v1/jobs " in line)
        assert '"job_id": "analyze-api"' in registered
        webhook = next(line for line in curls if "/api/v1/webhooks/" in line)
        assert "-H 'X-Webhook-Token: " in webhook
        assert '"model_id": "sd-webhook"' in webhook
        assert banner[-1].startswith("  and discovery: sources "), banner[-1]
        assert "language-training" in banner[-1]
        assert "translator" in banner[-1]

        def all_up() -> Metrics | None:
            m = Metrics(requests.get(metrics_url[1], timeout=5).text)
            ups = m.series("asyncjob_up")
            ok = len(ups) >= len(DEMO_JOBS) + len(called)
            ok = ok and all(m.get("asyncjob_up", **s) == 1.0 for s in ups)
            return m if ok else None

        m = wait_until(all_up, timeout=20, what="every demo job to be polled")
        assert {s["provider"] for s in m.series("asyncjob_up")} == set(PROVIDERS)
        jobs_url = metrics_url[1].replace("/metrics", "/api/v1/jobs")
        origins = {
            j["job_id"]: j["origin"] for j in requests.get(jobs_url, timeout=5).json()["jobs"]
        }
        assert (origins["analyze-api"], origins["sd-webhook"], origins["sd-ok"]) == (
            "api", "webhook", "config"
        )  # fmt: skip
        assert (origins["batch-ok"], origins["train-fail"]) == ("discovery", "discovery")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


@pytest.mark.parametrize(
    ("flags", "dest", "value"),
    [
        ([], "config_file", "config.yaml"),
        ([], "listen_address", ":9879"),
        ([], "telemetry_path", "/metrics"),
        ([], "log_level", "info"),
        ([], "log_format", None),
        ([], "max_connections", 512),
        (["--web.max-connections=20"], "max_connections", 20),
        (["--web.listen-address=[::1]:9100"], "listen_address", "[::1]:9100"),
        (["--web.telemetry-path=/custom"], "telemetry_path", "/custom"),
    ],
)
def test_flag_defaults_follow_prometheus_conventions(
    flags: list[str], dest: str, value: object
) -> None:
    assert getattr(build_parser().parse_args(flags), dest) == value


@pytest.mark.parametrize(
    "flags",
    [
        ["--web.listen-address=9879"],
        ["--web.telemetry-path=/"],
        ["--web.telemetry-path=/-/x"],
        ["--log.level=trace"],
        ["--web.max-connections=0"],
        ["--web.max-connections=many"],
    ],
)
def test_bad_flags_are_refused(flags: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(flags)
    assert caught.value.code == 2


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert re.fullmatch(r"asyncjob-exporter \S+\n", capsys.readouterr().out)


def test_config_check_covers_the_web_config_with_every_problem_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both files' problems in one run, the unreadable certificate and key named by path."""
    config = tmp_path / "config.yaml"
    config.write_text("sources:\n  - {name: x, provider: azure_foo}\n")
    web = tmp_path / "web.yml"
    web.write_text(
        "tls_server_config: {cert_file: /missing/cert.pem, key_file: /missing/key.pem}\n"
        "basic_auth_users: {prometheus: hunter2}\n"
    )
    args = ["--config.check", f"--config.file={config}", f"--web.config.file={web}"]
    assert main(args) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{config}: 1 problem",
        (
            "sources[0].provider: unknown provider 'azure_foo'; expected one of "
            + ", ".join(PROVIDERS)
        ),
        f"{web}: 3 problems",
        "tls_server_config.cert_file: cannot read '/missing/cert.pem': No such file or directory",
        "tls_server_config.key_file: cannot read '/missing/key.pem': No such file or directory",
        "basic_auth_users: expected a bcrypt hash ($2a$/$2b$/$2y$, 60 characters), not a password",
    ]


def demo_counts() -> str:
    """What --demo --config.check counts in the demo config, which every provider adds to."""
    sources = demo_config("http://127.0.0.1:1", discovery=True)["sources"]
    jobs = sum(len(source.get("job_ids", [])) for source in sources)
    discovering = sum(1 for source in sources if "discovery" in source)
    return f"{len(sources)} sources, {jobs} jobs, {discovering} discovering"


def test_config_check_says_ok_for_both_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    web = tmp_path / "web.yml"
    web.write_text("http_server_config: {headers: {X-Frame-Options: deny}}\n")
    assert main(["--demo", "--config.check", f"--web.config.file={web}"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"--demo: OK ({demo_counts()})",
        f"{web}: OK (no TLS, no auth)",
    ]


def test_demo_config_check_does_not_listen() -> None:
    """--demo --config.check checks the built-in config and exits; it binds nothing. The port it
    is given is held by this test, so trying to listen there would fail."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        checked = subprocess.run(
            [sys.executable, "-m", "exporter", "--demo", "--config.check",
             f"--web.listen-address=127.0.0.1:{port}", "--log.format=json"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    assert (checked.returncode, checked.stdout, checked.stderr) == (
        0,
        f"--demo: OK ({demo_counts()})\n",
        "",
    )


def test_make_demo_takes_a_port() -> None:
    """`make demo PORT=N` serves the demo on N (the README's first command, with a port)."""
    port = free_port()
    process = subprocess.Popen(
        ["make", "--no-print-directory", "demo", f"PORT={port}"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:

        def serving() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port}/-/healthy", timeout=2).ok
            except requests.ConnectionError:
                return False

        wait_until(serving, timeout=60, what=f"make demo on port {port}")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)


def test_make_clean_removes_what_the_build_leaves(tmp_path: Path) -> None:
    """`make clean` in a copy of the tree: build/, *.egg-info, test-artifacts/ and the caches go;
    the sources stay."""
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    leftovers = ["build/lib", "dist", "asyncjob_exporter.egg-info", "test-artifacts",
                 ".venv/bin", ".tools/bin", ".pytest_cache", ".mypy_cache", ".ruff_cache",
                 ".hypothesis", "exporter/__pycache__"]  # fmt: skip
    for folder in leftovers:
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "file").write_text("x")
    (tmp_path / "exporter" / "cli.py").write_text("# source\n")
    subprocess.run(["make", "-C", str(tmp_path), "clean"], check=True, capture_output=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Makefile", "exporter"]
    assert [p.name for p in (tmp_path / "exporter").iterdir()] == ["cli.py"]


def test_a_port_in_use_is_one_clear_line_not_a_traceback(tmp_path: Path) -> None:
    """Found when two test runs raced for a port: a failed bind used to end in an
    AttributeError from closing a server that never got its worker pool."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(demo_config("http://127.0.0.1:1")))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "exporter", f"--config.file={config}",
             f"--web.listen-address=127.0.0.1:{port}", f"--storage.path={tmp_path}/data"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 1
    assert "cannot listen" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def _exporter(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "--demo", "--web.listen-address=127.0.0.1:0", *flags],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("flag", ["--metric-allowlist", "--metric-denylist"])
def test_a_pattern_that_matches_no_family_is_refused_and_named(flag: str) -> None:
    """--config.check and start-up alike, as every flag error (exit 2): a typo can neither keep
    nothing nor silently keep everything. The families it could have named are listed."""
    for check in (["--config.check"], []):
        result = _exporter(*check, f"{flag}=asyncjob_state, asyncjob_stat")
        assert result.returncode == 2, result
        assert result.stdout == ""
        error = result.stderr.splitlines()[-1]
        assert error.startswith(
            f'asyncjob-exporter: error: argument {flag}: "asyncjob_stat" matches no metric family '
            "(families: asyncjob_info, asyncjob_state, "
        ), error
        assert "asyncjob_requests_total, " in error


def test_the_allowlist_and_the_denylist_are_mutually_exclusive() -> None:
    result = _exporter("--config.check", "--metric-allowlist=asyncjob_up",
                       "--metric-denylist=asyncjob_state")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "asyncjob-exporter: error: argument --metric-denylist: not allowed with argument "
        "--metric-allowlist"
    )


def test_config_check_passes_a_valid_list() -> None:
    """A pattern may match several families, and a counter by its README name."""
    result = _exporter("--config.check", "--metric-allowlist=asyncjob_state,asyncjob_.*_total")
    assert (result.returncode, result.stderr) == (0, "")
    families = metric_families()
    counters = sum(1 for _, kind in families if kind == "counter")
    config, lists = result.stdout.splitlines()
    assert config.startswith("--demo: OK (")
    assert lists == (
        f"--metric-allowlist: OK ({1 + counters} of {len(families)} asyncjob_ families exported)"
    )


def test_a_running_exporter_exports_only_the_allowed_families(tmp_path: Path) -> None:
    """A real exporter process with an allowlist: its /metrics holds the allowed asyncjob_
    families and client_python's process_ and python_ ones, nothing else."""
    port = free_port()
    allowlist = "asyncjob_state,asyncjob_up,asyncjob_requests_total,asyncjob_build_info"
    with Simulator(clock=ManualClock(1000.0)) as sim:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(demo_raw_config(sim)))
        process = subprocess.Popen(
            [sys.executable, "-m", "exporter", f"--config.file={config}",
             f"--web.listen-address=127.0.0.1:{port}", f"--storage.path={tmp_path}/data",
             f"--metric-allowlist={allowlist}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:

            def polled() -> str | None:
                try:
                    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                except requests.ConnectionError:
                    return None
                states = len(Metrics(text).series("asyncjob_state"))
                return text if states >= 4 * len(State) else None

            text = wait_until(polled, timeout=30, what="the config's 4 jobs to be polled")
        finally:
            process.terminate()
            _, err = process.communicate(timeout=15)
    assert process.returncode == 0, err
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {n for n in names if n.startswith("asyncjob_")} == {
        "asyncjob_state", "asyncjob_up", "asyncjob_requests", "asyncjob_build_info"
    }  # fmt: skip
    assert {n.split("_")[0] for n in names} == {"asyncjob", "process", "python"}
