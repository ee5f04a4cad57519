"""Config validation: every broken file is refused with its exact location and message."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from exporter.cli import main
from exporter.config import ConfigError, load_config, parse_config, secret_values
from exporter.providers import PROVIDERS
from exporter.values import format_duration, parse_duration

CASES = sorted((Path(__file__).parent / "configs").glob("*.yaml"))
REPO = Path(__file__).parent.parent


def expected_problems(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    expected = [line.removeprefix("# expect: ") for line in lines if line.startswith("# expect: ")]
    return [line.replace("{providers}", ", ".join(PROVIDERS)) for line in expected]


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


def example_env(tmp_path: Path) -> dict[str, str]:
    """A value for every variable config.example.yaml names (outside comments); a *_FILE
    variable gets the path of a real file holding a secret."""
    lines = (REPO / "config.example.yaml").read_text().splitlines()
    code = [line.split("#", 1)[0] for line in lines]
    names = set(re.findall(r"\$\{([A-Z_]+)\}", "\n".join(code)))
    env = {}
    for name in sorted(names):
        if name.endswith("_FILE"):
            secret = tmp_path / name.lower()
            secret.write_text("file-secret\n")
            env[name] = str(secret)
        else:
            env[name] = f"value-of-{name}"
    return env


def test_example_config_passes_its_own_check(tmp_path: Path) -> None:
    """The example as shipped, unedited: with the variables it names set, --config.check is OK."""
    env = example_env(tmp_path)
    assert set(env) == {"AZURE_LANGUAGE_KEY", "AZURE_TRANSLATOR_KEY", "SD_API_KEY",
                        "OPENAI_API_KEY", "AZURE_OPENAI_KEY", "TEXT_ANALYTICS_KEY_FILE",
                        "ANTHROPIC_API_KEY"}  # fmt: skip
    checked = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.check", "--config.file", "config.example.yaml"],
        env={**os.environ, **env}, cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (checked.returncode, checked.stderr) == (0, "")
    assert checked.stdout == "config.example.yaml: OK (8 sources, 7 jobs, 4 discovering)\n"
    config = load_config(REPO / "config.example.yaml", env=env)
    assert config.global_.poll_interval == 30.0
    assert config.poll_interval(config.sources[3]) == 60.0
    headers = config.provider(config.sources[2]).request(config.sources[2], "j").headers
    assert headers["Ocp-Apim-Subscription-Key"] == "file-secret"  # newline stripped


def test_one_source_is_not_written_as_sources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "one.yaml"
    path.write_text(
        "sources:\n  - {name: t, provider: azure_document_translation, "
        "endpoint: 'https://x.example', auth: {subscription_key: k}, job_ids: [a]}\n"
    )
    assert main(["--config.check", "--config.file", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: OK (1 source, 1 job)\n"


# -- the JSON Schema for editors ---------------------------------------------------------------

SCHEMA_FILE = REPO / "config.schema.json"


def test_committed_schema_is_what_the_models_export(capsys: pytest.CaptureFixture[str]) -> None:
    """config.schema.json is `asyncjob-exporter --config.schema`; regenerate it when this fails:
    asyncjob-exporter --config.schema > config.schema.json"""
    assert main(["--config.schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(SCHEMA_FILE.read_text())


def test_example_config_points_editors_at_the_schema_and_satisfies_it() -> None:
    text = (REPO / "config.example.yaml").read_text()
    assert text.splitlines()[0] == "# yaml-language-server: $schema=config.schema.json"
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load(text), schema)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda raw: raw["sources"][0].update(projekt="x"), "Additional properties"),
        (lambda raw: raw["global"].update(poll_interval="30 seconds"), "does not match"),
        (lambda raw: raw["sources"][4].update(provider="stable_diffusion"), "'stable_diffusion_"),
        (lambda raw: raw["sources"][3]["auth"].update(regoin="x"), "'regoin' was unexpected"),
    ],
    ids=["typo-in-a-key", "bad-duration", "unknown-provider", "typo-in-auth"],
)
def test_schema_catches_what_an_editor_should_flag(change: Any, error: str) -> None:
    raw = yaml.safe_load((REPO / "config.example.yaml").read_text())
    change(raw)
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    errors = list(validator.iter_errors(raw))
    assert errors
    # Under oneOf the message that names the problem is in the branch of the source's provider.
    messages = [e.message for err in errors for e in (err, *(err.context or ()))]
    assert any(error in message for message in messages), messages


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


def test_a_config_that_fails_masks_its_own_secrets(tmp_path: Path) -> None:
    """A key pasted into a wrong field is masked in the problem even though the config that
    holds it fails; so is the content of a key file."""
    key, from_file = "pasted-key-0123456789", "key-from-a-file-9876543210"
    (tmp_path / "key").write_text(f"{from_file}\n", encoding="utf-8")
    raw = {
        "sources": [
            {"name": "a", "provider": "azure_language_analyze_text", "endpoint": key,
             "auth": {"subscription_key": key}, "job_ids": [f"{from_file}/"]},
            {"name": "b", "provider": "azure_language_analyze_text", "endpoint": from_file,
             "auth": {"subscription_key_file": str(tmp_path / "key")}},
        ]
    }  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, env={})
    said = "\n".join(f"{where}: {what}" for where, what in caught.value.problems)
    assert key not in said
    assert from_file not in said
    assert said.count("'<redacted>") == 3, said


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


def test_a_webhook_signing_secret_is_a_secret(tmp_path: Path) -> None:
    """`webhook_secret` (a Standard Webhooks `whsec_` secret) and the file its `_file` form
    names are masked like every key, whichever provider's source holds them."""
    secret_file = tmp_path / "whsec"
    secret_file.write_text("whsec_from-a-file\n")
    tree = {"sources": [{"webhook_secret": "whsec_written-in"},
                        {"webhook_secret_file": str(secret_file)}]}  # fmt: skip
    assert secret_values(tree) == ["whsec_written-in", "whsec_from-a-file"]
