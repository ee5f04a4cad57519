"""Config validation: every broken file is refused with its exact location and message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from exporter.cli import main
from exporter.config import ConfigError, load_config, parse_config
from exporter.values import format_duration, parse_duration

CASES = sorted((Path(__file__).parent / "configs").glob("*.yaml"))
REPO = Path(__file__).parent.parent


def expected_problems(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.removeprefix("# expect: ") for line in lines if line.startswith("# expect: ")]


def test_there_are_many_cases() -> None:
    assert len(CASES) >= 20


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_broken_config_reports_location_and_message(path: Path) -> None:
    """load_config raises ConfigError whose problems are exactly the file's `# expect:` lines."""
    expected = expected_problems(path)
    assert expected, f"{path.name} states no expected problem"
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert [f"{where}: {what}" for where, what in caught.value.problems] == expected


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_config_check_exits_nonzero_and_prints_each_problem(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--config.check prints a count and every problem on stderr, and exits 1."""
    assert main(["--config.check", "--config.file", str(path), "--log.format", "json"]) == 1
    err = capsys.readouterr().err.splitlines()
    expected = expected_problems(path)
    assert err[0].startswith(f"{path}: {len(expected)} problem")
    assert err[1:] == expected


def test_example_config_is_valid(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """config.example.yaml passes --config.check once its variables and files exist."""
    key_file = tmp_path / "key"
    key_file.write_text("file-secret\n")
    text = (
        (REPO / "config.example.yaml")
        .read_text()
        .replace("/run/secrets/text-analytics-key", str(key_file))
    )
    config_path = tmp_path / "config.yaml"
    config_path.write_text(text)
    for name in ("AZURE_LANGUAGE_KEY", "AZURE_TRANSLATOR_KEY", "SD_API_KEY"):
        monkeypatch.setenv(name, f"value-of-{name}")
    assert main(["--config.check", "--config.file", str(config_path)]) == 0
    assert capsys.readouterr().out.strip() == f"{config_path}: OK (5 sources, 5 jobs)"
    config = load_config(config_path)
    assert config.global_.poll_interval == 30.0
    assert config.poll_interval(config.sources[3]) == 60.0
    headers = config.provider(config.sources[2]).request(config.sources[2], "j").headers
    assert headers["Ocp-Apim-Subscription-Key"] == "file-secret"  # newline stripped


def test_missing_config_file_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("/nonexistent/config.yaml")
    assert caught.value.problems == [
        ("/nonexistent/config.yaml", "cannot read file: No such file or directory")
    ]


def test_env_expansion_inside_strings() -> None:
    raw = {
        "sources": [
            {
                "name": "a",
                "provider": "azure_language_analyze_text",
                "endpoint": "https://${HOST}.cognitiveservices.azure.com",
                "auth": {"subscription_key": "${KEY}"},
                "job_ids": ["j"],
            }
        ]
    }
    config = parse_config(raw, env={"HOST": "mine", "KEY": "k1"})
    assert config.sources[0].endpoint == "https://mine.cognitiveservices.azure.com"


def test_secrets_never_appear_in_repr_or_errors() -> None:
    """A key is masked in repr, and a config error elsewhere in the file does not echo it."""
    secret = "s3cr3t-value-for-repr-test"
    raw: dict[str, Any] = {
        "global": {"timeout": "soon"},
        "sources": [
            {
                "name": "a",
                "provider": "stable_diffusion_finetune",
                "auth": {"api_key": secret},
                "job_ids": ["j", "../x"],
            }
        ],
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, env={})
    assert secret not in str(caught.value)
    raw["global"] = {}
    raw["sources"][0]["job_ids"] = ["j"]
    config = parse_config(raw, env={})
    assert secret not in repr(config)
    assert secret not in str(config.sources[0])


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1d", 86400.0),
        ("1m500ms", 60.5),
    ],
)
def test_prometheus_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.5, "500ms"), (30.0, "30s"), (300.0, "5m"), (3600.0, "1h"), (90.0, "90s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
