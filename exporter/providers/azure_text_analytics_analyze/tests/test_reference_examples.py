"""The vendor's examples and the seed document's, parsed, with their values asserted.

Expected values are read off the example JSON by hand, not produced by the parser.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import example_body, fixture, source_of

from exporter.model import JobSnapshot, State
from exporter.providers import PROVIDERS, ParseError

NAME = "azure_text_analytics_analyze"
PROVIDER = PROVIDERS[NAME]
POLLED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def t(text: str) -> datetime:
    return datetime.fromisoformat(text)


def parse(payload: Any) -> JobSnapshot:
    return PROVIDER.parse(payload, POLLED_AT)


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("v3.1_SuccessfulAnalyzeStatusRequest.json", "v3.1"),
        ("v3.2-preview.2_SuccessfulAnalyzeStatusRequest.json", "v3.2-preview.2"),
    ],
)
def test_text_analytics_examples(name: str, version: str) -> None:
    """A v3.x analyze job: tasks, display name, the version as a path segment."""
    example = fixture(NAME, name)
    snap = parse(example["responses"]["200"]["body"])
    assert (snap.state, snap.vendor_status) == (State.SUCCEEDED, "succeeded")
    assert snap.display_name == "Extracting Location & US Region"
    assert snap.tasks == {"completed": 2, "failed": 0, "in_progress": 0, "cancelled": 0}
    assert snap.last_update == t("2020-10-01T15:01:03Z")
    src = source_of(NAME, auth={"subscription_key": "k"}, job_ids=["j"],
                    api_version=example["parameters"].get("ApiVersion"))  # fmt: skip
    url = PROVIDER.request(src, "c0f2a446").url
    assert url == f"https://x.example/text/analytics/{version}/analyze/jobs/c0f2a446"


@pytest.mark.parametrize("status", ["404", "500"])
def test_text_analytics_error_bodies_are_parse_errors(status: str) -> None:
    body = example_body(NAME, "v3.1_SuccessfulAnalyzeStatusRequest.json", status)
    with pytest.raises(ParseError):
        parse(body)


def test_text_analytics_seed_completed_means_succeeded() -> None:
    """The v3.2 preview's 'completed' maps to succeeded."""
    snap = parse(fixture(NAME, "seed-002-status.json"))
    assert (snap.state, snap.vendor_status) == (State.SUCCEEDED, "completed")
    assert snap.tasks == {"completed": 1, "failed": 0, "in_progress": 0, "cancelled": 0}
    assert snap.progress == {"overall": 1.0}
    assert snap.display_name == "MyJobName"


def test_text_analytics_rejected_means_failed() -> None:
    snap = parse({"status": "Rejected", "tasks": {"failed": 1, "total": 1}})
    assert snap.state is State.FAILED


def test_unrecognised_vendor_status_is_unknown() -> None:
    snap = parse({"status": "teleporting"})
    assert snap.state is State.UNKNOWN
    assert snap.vendor_status.lower() == "teleporting"
