"""A fine-tune's answer gives no times, so no finish time: the store decides
(tests/test_store.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from conftest import fixture

from exporter.providers import PROVIDERS

NAME = "stable_diffusion_finetune"


@pytest.mark.parametrize(
    "name", ["seed-004-status.json", "real-training-failed.json", "real-worker-log-step4.json"]
)
def test_a_fine_tune_answer_has_no_finish_time(name: str) -> None:
    snap = PROVIDERS[NAME].parse(fixture(NAME, name), datetime(2026, 3, 2, 11, 30, tzinfo=UTC))
    assert snap.finished is None
