"""The vendor's examples and the seed document's, parsed, with their values asserted.

Expected values are read off the example JSON by hand, not produced by the parser.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import fixture, source_of

from exporter.model import ErrorReason, JobSnapshot, State
from exporter.providers import PROVIDERS, ParseError

NAME = "stable_diffusion_finetune"
PROVIDER = PROVIDERS[NAME]
POLLED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def parse(payload: Any) -> JobSnapshot:
    return PROVIDER.parse(payload, POLLED_AT)


@pytest.mark.parametrize(
    "name",
    [
        "stablediffusionapi_docs_fine_tune_status_example.json",  # " /n " separators
        "modelslab_docs-v2_openapi_fine_tune_status_200.json",  # newline separators
        "seed-004-status.json",
    ],
)
def test_stable_diffusion_ready_examples(name: str) -> None:
    """model_ready is success: progress 1 whatever the step log says, no estimate."""
    snap = parse(fixture(NAME, name))
    assert (snap.state, snap.vendor_status) == (State.SUCCEEDED, "model_ready")
    assert snap.progress == {"overall": 1.0}
    assert snap.estimated_completion is None


@pytest.mark.parametrize(
    "name",
    [
        "modelslab_docs-v2_lora_fine_tune_200.json",
        "modelslab_docs-v2_training_webhook_payload.json",
    ],
)
def test_stable_diffusion_start_and_webhook_examples(name: str) -> None:
    """deploying_gpu (in 'messege' or the webhook's 'training_status') is not started yet."""
    snap = parse(fixture(NAME, name))
    assert (snap.state, snap.vendor_status) == (State.NOT_STARTED, "deploying_gpu")
    assert snap.progress == {"overall": 0.0}
    assert snap.estimated_completion is None


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("modelslab_401_invalid_key", ErrorReason.AUTH),
        ("modelslab_429_rate_limit", ErrorReason.THROTTLED),
        ("modelslab_500", ErrorReason.BAD_RESPONSE),
        ("modelslab_503", ErrorReason.BAD_RESPONSE),
        ("legacy_stablediffusionapi_invalid_key", ErrorReason.AUTH),
        ("legacy_stablediffusionapi_rate_limit", ErrorReason.THROTTLED),
        ("legacy_stablediffusionapi_failed", ErrorReason.BAD_RESPONSE),
    ],
)
def test_stable_diffusion_error_examples_are_failed_polls(key: str, reason: ErrorReason) -> None:
    """An error answer (often HTTP 200) is a failed poll with a reason, not a failed job."""
    examples = fixture(NAME, "modelslab_error_examples.json")
    assert set(examples) - {"_source"} >= {key}
    with pytest.raises(ParseError) as caught:
        parse(examples[key])
    assert caught.value.reason is reason


@pytest.mark.parametrize("separator", ["\n", " /n "])
def test_stable_diffusion_step_gives_progress_and_eta(separator: str) -> None:
    """The last 'Step:N ..., M Steps to go : ETA : X minutes' line: N/(N+M), poll time + X min."""
    data = separator.join(
        [
            "Step:1 Training Started, 5 Steps to go : ETA : 30 minutes",
            "Step:2 Training Done, 4 Steps to go : ETA : 15 minutes",
        ]
    )
    snap = parse({"status": "success", "messege": "training_success", "data": data})
    assert snap.state is State.RUNNING
    assert snap.progress == {"overall": pytest.approx(2 / 6)}
    assert snap.estimated_completion == POLLED_AT + timedelta(minutes=15)


def test_stable_diffusion_request_sends_key_in_body_only() -> None:
    src = source_of(NAME, auth={"api_key": "sd-secret"}, job_ids=["j"])
    req = PROVIDER.request(src, "F5jvdzGnYi")
    assert (req.method, req.url) == ("POST", "https://x.example/api/v3/fine_tune_status/F5jvdzGnYi")
    assert req.json == {"key": "sd-secret"}
    assert "sd-secret" not in repr(req)


def test_stable_diffusion_default_endpoint() -> None:
    raw = {"name": "s", "provider": NAME, "auth": {"api_key": "k"}, "job_ids": ["j"]}
    src = PROVIDER.source_model.model_validate(raw)
    url = PROVIDER.request(src, "j").url
    assert url == "https://stablediffusionapi.com/api/v3/fine_tune_status/j"


def test_unrecognised_vendor_status_is_unknown() -> None:
    snap = parse({"status": "success", "messege": "teleporting"})
    assert snap.state is State.UNKNOWN
    assert snap.vendor_status.lower() == "teleporting"
