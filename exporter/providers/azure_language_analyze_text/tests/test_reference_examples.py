"""The vendor's examples and the seed document's, parsed, with their values asserted.

Expected values are read off the example JSON by hand, not produced by the parser.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import example_body, fixture, source_of

from exporter.model import JobSnapshot, State
from exporter.providers import PROVIDERS

NAME = "azure_language_analyze_text"
PROVIDER = PROVIDERS[NAME]
POLLED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def t(text: str) -> datetime:
    return datetime.fromisoformat(text)


def parse(payload: Any) -> JobSnapshot:
    return PROVIDER.parse(payload, POLLED_AT)


def source(**keys: Any) -> Any:
    return source_of(NAME, auth={"subscription_key": "k"}, job_ids=["j"], **keys)


def test_analyze_text_multiple_task_example() -> None:
    """Two tasks, both done: tasks by state, display name, 'lastUpdatedDateTime' spelling."""
    body = example_body(NAME, "2023-04-01_SuccessfulAnalyzeTextJobsMultipleTaskStatusRequest.json")
    snap = parse(body)
    assert snap.state is State.SUCCEEDED
    assert snap.vendor_status == "succeeded"
    assert snap.display_name == "Extracting Location & US Region"
    assert snap.tasks == {"completed": 2, "failed": 0, "in_progress": 0, "cancelled": 0}
    assert snap.progress == {"overall": 1.0}
    assert snap.created == t("2020-10-01T15:00:45Z")
    assert snap.last_update == t("2020-10-01T15:01:03Z")
    assert snap.expiration == t("2020-10-03T15:01:03Z")
    assert (snap.errors, snap.warnings) == (0, 0)


def test_analyze_conversation_summarization_example() -> None:
    """An analyze-conversations job (with a nextLink) parses the same way."""
    body = example_body(
        NAME, "2023-04-01_SuccessfulConversationSummarizationTaskStatusRequest.json"
    )
    snap = parse(body)
    assert (snap.state, snap.display_name) == (State.SUCCEEDED, "Analyze chat")
    assert snap.tasks == {"completed": 1, "failed": 0, "in_progress": 0, "cancelled": 0}
    assert snap.last_update == t("2022-04-01T15:00:49Z")
    assert snap.expiration == t("2022-04-02T15:00:45Z")


def test_analyze_text_seed_document_example() -> None:
    """The seed uses the older 'lastUpdateDateTime' spelling and millisecond timestamps."""
    snap = parse(fixture(NAME, "seed-001-status.json"))
    assert (snap.state, snap.display_name) == (State.SUCCEEDED, "MyJobName")
    assert snap.tasks == {"completed": 1, "failed": 0, "in_progress": 0, "cancelled": 0}
    assert snap.last_update == t("2021-05-19T14:32:25.578Z")


@pytest.mark.parametrize(
    ("name", "workload"),
    [
        ("2023-04-01_SuccessfulAnalyzeTextJobsCancelRequest.json", "text"),
        ("2023-04-01_SuccessfulAnalyzeConversationsJobsCancelRequest.json", "conversations"),
    ],
)
def test_analyze_request_matches_operation_location(name: str, workload: str) -> None:
    """The request is the Operation-Location the vendor's cancel answer gives for the job."""
    example = fixture(NAME, name)
    params = example["parameters"]
    location = example["responses"]["202"]["headers"]["Operation-Location"]
    src = source(workload=workload, api_version=params["api-version"])
    req = PROVIDER.request(src, params["jobId"])
    expected = location.replace("{Endpoint}", "https://x.example").replace(
        "{jobId}", params["jobId"]
    )
    assert req.url == expected


def test_unrecognised_vendor_status_is_unknown() -> None:
    snap = parse({"status": "teleporting"})
    assert snap.state is State.UNKNOWN
    assert snap.vendor_status.lower() == "teleporting"


@pytest.mark.parametrize("status", ["RUNNING", "Running", "running"])
def test_statuses_match_case_insensitively(status: str) -> None:
    assert parse({"status": status}).state is State.RUNNING


def test_job_ids_are_percent_encoded_into_one_segment() -> None:
    """Even an ID the config would refuse cannot add a path segment or a query."""
    url = PROVIDER.request(source(), "a/../b?x=1").url
    assert (
        url
        == "https://x.example/language/analyze-text/jobs/a%2F..%2Fb%3Fx%3D1?api-version=2023-04-01"
    )
