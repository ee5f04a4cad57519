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

NAME = "azure_language_training"
PROVIDER = PROVIDERS[NAME]
POLLED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def t(text: str) -> datetime:
    return datetime.fromisoformat(text)


def parse(payload: Any) -> JobSnapshot:
    return PROVIDER.parse(payload, POLLED_AT)


def source(**keys: Any) -> Any:
    return source_of(NAME, auth={"subscription_key": "k"}, job_ids=["j"], **keys)


RUNNING_TRAINING = {
    "state": State.RUNNING,
    "vendor_status": "running",
    "progress": {"training": 0.03, "evaluation": 0.0, "overall": 0.015},
    "created": t("2022-04-18T15:44:44Z"),
    "last_update": t("2022-04-18T15:45:48Z"),
    "expiration": t("2022-04-25T15:44:44Z"),
    "started": t("2022-04-18T15:45:06.819064Z"),
    "estimated_completion": t("2022-04-18T15:47:58.819064Z"),
    "errors": 0,
    "warnings": 0,
}


@pytest.mark.parametrize(
    ("name", "display_name"),
    [
        ("2024-11-15-preview_SuccessfulGetTrainStatus.json", "model1"),
        ("2023-04-01_SuccessfulGetTrainStatus.json", "model1"),
    ],
)
def test_training_status_examples(name: str, display_name: str) -> None:
    """A running training job: phases, their mean, 7-digit timestamps, model label."""
    snap = parse(example_body(NAME, name))
    assert snap.display_name == display_name
    for field, expected in RUNNING_TRAINING.items():
        assert getattr(snap, field) == expected, field


def test_training_seed_document_example() -> None:
    """The training seed document's example, with its placeholder model label kept verbatim."""
    snap = parse(fixture(NAME, "seed-000-status.json"))
    assert snap.display_name == "{MODEL-NAME}"
    for field, expected in RUNNING_TRAINING.items():
        assert getattr(snap, field) == expected, field


@pytest.mark.parametrize(
    "name",
    ["2022-05-01_SuccessfulListTrainingJobs.json", "2023-04-01_SuccessfulListTrainingJobs.json"],
)
def test_training_list_examples_parse_item_by_item(name: str) -> None:
    """Each job in a list of training jobs parses as a finished job; the list itself does not."""
    body = example_body(NAME, name)
    snaps = [parse(item) for item in body["value"]]
    assert [s.display_name for s in snaps] == ["model1", "model2", "model2"]
    assert all(s.state is State.SUCCEEDED for s in snaps)
    assert all(s.progress == {"training": 1.0, "evaluation": 1.0, "overall": 1.0} for s in snaps)
    assert snaps[0].started == t("2022-04-18T15:45:06.819064Z")
    assert snaps[2].last_update == t("2022-04-18T17:51:11Z")
    assert all(s.estimated_completion is None for s in snaps)
    with pytest.raises(ParseError):
        parse(body)


@pytest.mark.parametrize(
    "name", ["2022-05-01_SuccessfulListProjects.json", "2023-04-01_SuccessfulListProjects.json"]
)
def test_project_list_examples_are_not_jobs(name: str) -> None:
    """Project listings have no job status: a ParseError, never a made-up snapshot."""
    body = example_body(NAME, name)
    for payload in (body, *body["value"]):
        with pytest.raises(ParseError):
            parse(payload)


@pytest.mark.parametrize(
    ("name", "status", "expected_url"),
    [
        (
            "2022-05-01_SuccessfulCancelTrainingJob.json",
            "204",
            (
                "https://x.example/language/authoring/analyze-text/projects/LoanAgreements/train/jobs/"
                "8ccf2ffe-e758-4d04-a44a-31512918c7e8_637858368000000000?api-version=2022-05-01"
            ),
        ),
        (
            "2024-11-15-preview_SuccessfulCancelTrainingJob.json",
            "202",
            (
                "https://x.example/language/authoring/analyze-text/projects/LoanAgreements/train/jobs/"
                "8ccf2ffe-e758-4d04-a44a-31512918c7e8_637858368000000000?api-version=2024-11-15-preview"
            ),
        ),
    ],
)
def test_training_request_matches_cancel_examples(
    name: str, status: str, expected_url: str
) -> None:
    """The status URL for the examples' project and job is the vendor's route, key in a header."""
    example = fixture(NAME, name)
    params = example["parameters"]
    assert status in example["responses"]
    src = source(project=params["projectName"], api_version=params["api-version"])
    req = PROVIDER.request(src, params["jobId"])
    assert (req.method, req.url) == ("GET", expected_url)
    assert req.headers == {"Ocp-Apim-Subscription-Key": "k"}
    location = example["responses"][status].get("headers", {}).get("operation-location")
    if location:  # the cancel answer points at a job on the same route
        assert location.startswith(
            "{Endpoint}/language/authoring/analyze-text/projects/LoanAgreements/train/jobs/"
        )


def test_training_conversations_workload_route() -> None:
    src = source(project="EmailApp", workload="conversations")
    url = PROVIDER.request(src, "j1").url
    assert (
        url
        == "https://x.example/language/authoring/analyze-conversations/projects/EmailApp/train/jobs/j1?api-version=2023-04-01"
    )


def test_unrecognised_vendor_status_is_unknown() -> None:
    snap = parse({"status": "teleporting"})
    assert snap.state is State.UNKNOWN
    assert snap.vendor_status.lower() == "teleporting"
