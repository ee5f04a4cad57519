"""The command line as a user runs it: --once, --demo in a real process, signals, flags."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
import requests
import yaml
from conftest import Metrics, demo_raw_config, wait_until

from exporter.cli import build_parser, main
from exporter.simulator import ManualClock, Simulator

if TYPE_CHECKING:
    from pathlib import Path

PROVIDERS = {
    "azure_language_training",
    "azure_language_analyze_text",
    "azure_text_analytics_analyze",
    "azure_document_translation",
    "stable_diffusion_finetune",
}


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
    assert {s["provider"] for s in m.series("asyncjob_up")} == PROVIDERS
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


def test_demo_runs_all_five_providers_and_stops_on_sigterm() -> None:
    """`--demo` in its own process: URLs printed, every provider's jobs up, SIGTERM exits 0."""
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
        banner = [process.stdout.readline() for _ in range(3)]
        assert banner[0].startswith("Simulator:")
        metrics_url = re.search(r"Metrics:\s+(\S+)", banner[1])
        assert metrics_url, banner

        def all_up() -> Metrics | None:
            m = Metrics(requests.get(metrics_url[1], timeout=5).text)
            ups = m.series("asyncjob_up")
            ok = len(ups) == 8 and all(m.get("asyncjob_up", **s) == 1.0 for s in ups)
            return m if ok else None

        m = wait_until(all_up, timeout=20, what="every demo job to be polled")
        assert {s["provider"] for s in m.series("asyncjob_up")} == PROVIDERS
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
