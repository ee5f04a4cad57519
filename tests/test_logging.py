"""Secrets never reach a log line, whether by a key name, by value, or inside a message."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import structlog
from conftest import Harness, demo_raw_config

from exporter import logging as exporter_logging

if TYPE_CHECKING:
    from collections.abc import Callable

    import pytest

    from exporter.simulator import Simulator

AZURE_SECRET = "azure-secret-0123456789abcdef"
SD_SECRET = "sd-secret-fedcba9876543210"


def wrong_keys(sim: Simulator) -> dict[str, Any]:
    raw = demo_raw_config(sim)
    for source in raw["sources"][:4]:
        source["auth"] = {**source["auth"], "subscription_key": AZURE_SECRET}
    raw["sources"][4]["auth"] = {"api_key": SD_SECRET}
    return raw


def test_secrets_absent_from_logs_and_metrics(
    make_harness: Callable[..., Harness], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every poll fails on auth and is logged; neither key appears in a log line or /metrics."""
    exporter_logging.configure("debug", "json")
    h = make_harness(wrong_keys)
    h.exporter.poll_once()
    log = structlog.get_logger("test")
    log.warning("upstream said", error=f"bad key {AZURE_SECRET} in https://x/y?sv=1&sig=abc%2Fdef")
    log.info("headers", subscription_key="anything", api_key=SD_SECRET)
    metrics = h.scrape().text
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    failures = [e for e in lines if e["event"] == "poll failing"]
    assert {e["reason"] for e in failures} == {"auth"}
    # 8 jobs fail, but an auth failure is logged once per source per backoff interval.
    assert sorted(e["source"] for e in failures) == sorted(
        [
            "language-training",
            "language-analyze",
            "text-analytics",
            "translator",
            "stable-diffusion",
        ]
    )
    for secret in (AZURE_SECRET, SD_SECRET, "abc%2Fdef"):
        assert secret not in err
        assert secret not in metrics
    said = next(e for e in lines if e["event"] == "upstream said")
    assert said["error"] == "bad key <redacted> in https://x/y?sv=1&sig=<redacted>"
    keyed = next(e for e in lines if e["event"] == "headers")
    assert (keyed["subscription_key"], keyed["api_key"]) == ("<redacted>", "<redacted>")


def test_redactor_masks_longest_secret_first() -> None:
    redactor = exporter_logging.Redactor()
    redactor.register(["abcd", "abcdefgh"])
    assert redactor.mask("x abcdefgh y abcd") == "x <redacted> y <redacted>"
