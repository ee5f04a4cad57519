"""Every vendor example and every seed document's example, parsed, with its values asserted.

Expected values are read off the example JSON by hand, not produced by the parsers.
"""

from __future__ import annotations

import filecmp
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import FIXTURES, SHARED_REFERENCE, example_body, fixture
from pydantic import SecretStr

from exporter.model import ErrorReason, JobSnapshot, State
from exporter.providers import PROVIDERS, ParseError
from exporter.providers.base import AzureKeyAuth

POLLED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SHARED_FOLDERS = {
    "language-authoring-text": "azure_language_training",
    "language-authoring-conversations": "azure_language_training",
    "language-analyze-text-jobs": "azure_language_analyze_text",
    "text-analytics-v3": "azure_text_analytics_analyze",
    "document-translation": "azure_document_translation",
    "stablediffusion-modelslab": "stable_diffusion_finetune",
}


def t(text: str) -> datetime:
    return datetime.fromisoformat(text)


def parse(provider: str, payload: Any) -> JobSnapshot:
    return PROVIDERS[provider].parse(payload, POLLED_AT)


def source(provider: str, **keys: Any) -> Any:
    raw = {"name": "s", "provider": provider, "endpoint": "https://x.example", "job_ids": ["j"]}
    auth = (
        {"api_key": "k"} if provider == "stable_diffusion_finetune" else {"subscription_key": "k"}
    )
    return PROVIDERS[provider].source_model.model_validate({**raw, "auth": auth, **keys})


def test_every_shared_example_has_an_identical_fixture_copy() -> None:
    """The fixtures are exactly the vendor examples in ../shared/reference, none missing."""
    examples = SHARED_REFERENCE / "api-examples"
    if not examples.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{examples} is missing; CI must have shared/ beside the repo")
        pytest.skip("../shared/reference is not beside this checkout")
    compared = 0
    for folder, provider in SHARED_FOLDERS.items():
        for original in sorted((examples / folder).iterdir()):
            copy = FIXTURES[provider] / original.name
            assert copy.is_file(), f"{original} has no fixture copy at {copy}"
            assert filecmp.cmp(original, copy, shallow=False), f"{copy} differs from {original}"
            compared += 1
    assert {p.name for p in examples.iterdir()} == set(SHARED_FOLDERS)
    assert compared == 25


# -- Azure AI Language training jobs -----------------------------------------------------------

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
    snap = parse("azure_language_training", example_body("azure_language_training", name))
    assert snap.display_name == display_name
    for field, expected in RUNNING_TRAINING.items():
        assert getattr(snap, field) == expected, field


def test_training_seed_document_example() -> None:
    """The training seed document's example, with its placeholder model label kept verbatim."""
    snap = parse(
        "azure_language_training", fixture("azure_language_training", "seed-000-status.json")
    )
    assert snap.display_name == "{MODEL-NAME}"
    for field, expected in RUNNING_TRAINING.items():
        assert getattr(snap, field) == expected, field


@pytest.mark.parametrize(
    "name",
    ["2022-05-01_SuccessfulListTrainingJobs.json", "2023-04-01_SuccessfulListTrainingJobs.json"],
)
def test_training_list_examples_parse_item_by_item(name: str) -> None:
    """Each job in a list of training jobs parses as a finished job; the list itself does not."""
    body = example_body("azure_language_training", name)
    snaps = [parse("azure_language_training", item) for item in body["value"]]
    assert [s.display_name for s in snaps] == ["model1", "model2", "model2"]
    assert all(s.state is State.SUCCEEDED for s in snaps)
    assert all(s.progress == {"training": 1.0, "evaluation": 1.0, "overall": 1.0} for s in snaps)
    assert snaps[0].started == t("2022-04-18T15:45:06.819064Z")
    assert snaps[2].last_update == t("2022-04-18T17:51:11Z")
    assert all(s.estimated_completion is None for s in snaps)
    with pytest.raises(ParseError):
        parse("azure_language_training", body)


@pytest.mark.parametrize(
    "name", ["2022-05-01_SuccessfulListProjects.json", "2023-04-01_SuccessfulListProjects.json"]
)
def test_project_list_examples_are_not_jobs(name: str) -> None:
    """Project listings have no job status: a ParseError, never a made-up snapshot."""
    body = example_body("azure_language_training", name)
    for payload in (body, *body["value"]):
        with pytest.raises(ParseError):
            parse("azure_language_training", payload)


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
    example = fixture("azure_language_training", name)
    params = example["parameters"]
    assert status in example["responses"]
    src = source(
        "azure_language_training", project=params["projectName"], api_version=params["api-version"]
    )
    req = PROVIDERS["azure_language_training"].request(src, params["jobId"])
    assert (req.method, req.url) == ("GET", expected_url)
    assert req.headers == {"Ocp-Apim-Subscription-Key": "k"}
    location = example["responses"][status].get("headers", {}).get("operation-location")
    if location:  # the cancel answer points at a job on the same route
        assert location.startswith(
            "{Endpoint}/language/authoring/analyze-text/projects/LoanAgreements/train/jobs/"
        )


def test_training_conversations_workload_route() -> None:
    src = source("azure_language_training", project="EmailApp", workload="conversations")
    url = PROVIDERS["azure_language_training"].request(src, "j1").url
    assert (
        url
        == "https://x.example/language/authoring/analyze-conversations/projects/EmailApp/train/jobs/j1?api-version=2023-04-01"
    )


# -- Azure Language analyze-text jobs ----------------------------------------------------------


def test_analyze_text_multiple_task_example() -> None:
    """Two tasks, both done: tasks by state, display name, 'lastUpdatedDateTime' spelling."""
    body = example_body(
        "azure_language_analyze_text",
        "2023-04-01_SuccessfulAnalyzeTextJobsMultipleTaskStatusRequest.json",
    )
    snap = parse("azure_language_analyze_text", body)
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
        "azure_language_analyze_text",
        "2023-04-01_SuccessfulConversationSummarizationTaskStatusRequest.json",
    )
    snap = parse("azure_language_analyze_text", body)
    assert (snap.state, snap.display_name) == (State.SUCCEEDED, "Analyze chat")
    assert snap.tasks == {"completed": 1, "failed": 0, "in_progress": 0, "cancelled": 0}
    assert snap.last_update == t("2022-04-01T15:00:49Z")
    assert snap.expiration == t("2022-04-02T15:00:45Z")


def test_analyze_text_seed_document_example() -> None:
    """The seed uses the older 'lastUpdateDateTime' spelling and millisecond timestamps."""
    snap = parse(
        "azure_language_analyze_text",
        fixture("azure_language_analyze_text", "seed-001-status.json"),
    )
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
    example = fixture("azure_language_analyze_text", name)
    params = example["parameters"]
    location = example["responses"]["202"]["headers"]["Operation-Location"]
    src = source(
        "azure_language_analyze_text", workload=workload, api_version=params["api-version"]
    )
    req = PROVIDERS["azure_language_analyze_text"].request(src, params["jobId"])
    expected = location.replace("{Endpoint}", "https://x.example").replace(
        "{jobId}", params["jobId"]
    )
    assert req.url == expected


# -- Text Analytics v3.x -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("v3.1_SuccessfulAnalyzeStatusRequest.json", "v3.1"),
        ("v3.2-preview.2_SuccessfulAnalyzeStatusRequest.json", "v3.2-preview.2"),
    ],
)
def test_text_analytics_examples(name: str, version: str) -> None:
    """A v3.x analyze job: tasks, display name, the version as a path segment."""
    example = fixture("azure_text_analytics_analyze", name)
    snap = parse("azure_text_analytics_analyze", example["responses"]["200"]["body"])
    assert (snap.state, snap.vendor_status) == (State.SUCCEEDED, "succeeded")
    assert snap.display_name == "Extracting Location & US Region"
    assert snap.tasks == {"completed": 2, "failed": 0, "in_progress": 0, "cancelled": 0}
    assert snap.last_update == t("2020-10-01T15:01:03Z")
    src = source(
        "azure_text_analytics_analyze", api_version=example["parameters"].get("ApiVersion")
    )
    url = PROVIDERS["azure_text_analytics_analyze"].request(src, "c0f2a446").url
    assert url == f"https://x.example/text/analytics/{version}/analyze/jobs/c0f2a446"


@pytest.mark.parametrize("status", ["404", "500"])
def test_text_analytics_error_bodies_are_parse_errors(status: str) -> None:
    body = example_body(
        "azure_text_analytics_analyze", "v3.1_SuccessfulAnalyzeStatusRequest.json", status
    )
    with pytest.raises(ParseError):
        parse("azure_text_analytics_analyze", body)


def test_text_analytics_seed_completed_means_succeeded() -> None:
    """The v3.2 preview's 'completed' maps to succeeded."""
    snap = parse(
        "azure_text_analytics_analyze",
        fixture("azure_text_analytics_analyze", "seed-002-status.json"),
    )
    assert (snap.state, snap.vendor_status) == (State.SUCCEEDED, "completed")
    assert snap.tasks == {"completed": 1, "failed": 0, "in_progress": 0, "cancelled": 0}
    assert snap.progress == {"overall": 1.0}
    assert snap.display_name == "MyJobName"


def test_text_analytics_rejected_means_failed() -> None:
    snap = parse(
        "azure_text_analytics_analyze", {"status": "Rejected", "tasks": {"failed": 1, "total": 1}}
    )
    assert snap.state is State.FAILED


# -- Translator document batches ---------------------------------------------------------------

FINISHED_BATCH_DOCUMENTS = {
    "succeeded": 9,
    "failed": 1,
    "in_progress": 0,
    "not_started": 0,
    "cancelled": 0,
}


@pytest.mark.parametrize(
    ("name", "expected_url"),
    [
        (
            "2024-05-01_operation.json",
            "https://x.example/translator/document/batches/727BF148-F327-47A0-9481-ABAE6362F11E?api-version=2024-05-01",
        ),
        (
            "v1.1_operation.json",
            "https://x.example/translator/text/batch/v1.1/batches/727BF148-F327-47A0-9481-ABAE6362F11E",
        ),
    ],
)
def test_translation_batch_examples(name: str, expected_url: str) -> None:
    """'translationId' (2024-05-01) and 'id' (v1.1) both parse; the route follows the version."""
    example = fixture("azure_document_translation", name)
    snap = parse("azure_document_translation", example["responses"]["200"]["body"])
    assert (snap.state, snap.vendor_status) == (State.SUCCEEDED, "Succeeded")
    assert snap.documents == FINISHED_BATCH_DOCUMENTS
    assert snap.characters_charged == 0
    assert snap.progress == {"overall": 1.0}
    assert snap.created == t("2020-03-26T00:00:00Z")
    assert snap.last_update == t("2020-03-26T01:00:00Z")
    assert snap.errors == 0
    params = example["parameters"]
    src = source("azure_document_translation", api_version=params["api-version"])
    job_id = params.get("translationId") or params["id"]
    assert PROVIDERS["azure_document_translation"].request(src, job_id).url == expected_url


@pytest.mark.parametrize("name", ["2024-05-01_operations.json", "v1.1_operations.json"])
def test_translation_batch_list_items(name: str) -> None:
    """Batches in a list parse one by one, with the characters charged (1000)."""
    body = example_body("azure_document_translation", name)
    (snap,) = [parse("azure_document_translation", item) for item in body["value"]]
    assert snap.characters_charged == 1000
    assert snap.documents == FINISHED_BATCH_DOCUMENTS
    assert snap.created == t("2021-03-23T07:03:30.013631Z")
    with pytest.raises(ParseError):
        parse("azure_document_translation", body)


@pytest.mark.parametrize("name", ["2024-05-01_documents.json", "v1.1_documents.json"])
def test_translation_document_items_are_not_batches(name: str) -> None:
    """A document status (no summary) is refused rather than read as an empty batch."""
    body = example_body("azure_document_translation", name)
    for payload in (body, *body["value"]):
        with pytest.raises(ParseError):
            parse("azure_document_translation", payload)


TRANSLATION_ERROR_EXAMPLES = [
    (name, status)
    for name in ("v1.1_operation.json", "v1.1_operations.json", "v1.1_documents.json")
    for status in fixture("azure_document_translation", name)["responses"]
    if status != "200"
]


@pytest.mark.parametrize(("name", "status"), TRANSLATION_ERROR_EXAMPLES)
def test_translation_error_bodies_are_parse_errors(name: str, status: str) -> None:
    """401/404/429/500/503/400 bodies carry no batch: refused, not misread."""
    body = example_body("azure_document_translation", name, status)
    assert body["error"]["code"]
    with pytest.raises(ParseError):
        parse("azure_document_translation", body)


def test_translation_error_examples_cover_every_status() -> None:
    statuses = {status for _, status in TRANSLATION_ERROR_EXAMPLES}
    assert statuses == {"400", "401", "404", "429", "500", "503"}


def test_translation_seed_document_examples() -> None:
    snap = parse(
        "azure_document_translation", fixture("azure_document_translation", "seed-003-status.json")
    )
    assert (snap.state, snap.documents) == (State.SUCCEEDED, FINISHED_BATCH_DOCUMENTS)
    with pytest.raises(ParseError):
        parse(
            "azure_document_translation",
            fixture("azure_document_translation", "seed-003-error-401.json"),
        )


def test_translation_region_header() -> None:
    src = source(
        "azure_document_translation", auth={"subscription_key": "k", "region": "westeurope"}
    )
    headers = PROVIDERS["azure_document_translation"].request(src, "b").headers
    assert headers == {
        "Ocp-Apim-Subscription-Key": "k",
        "Ocp-Apim-Subscription-Region": "westeurope",
    }


def test_translation_validation_failed_and_huge_counter() -> None:
    """ValidationFailed is a failure; a 64-bit character count survives intact."""
    payload = {
        "id": "b",
        "status": "ValidationFailed",
        "summary": {"total": 0, "totalCharacterCharged": 9_007_199_254_740_993},
        "error": {"code": "InvalidRequest", "message": "bad"},
    }
    snap = parse("azure_document_translation", payload)
    assert snap.state is State.FAILED
    assert snap.characters_charged == 9_007_199_254_740_993
    assert snap.errors == 1


# -- Stable Diffusion fine-tunes ---------------------------------------------------------------


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
    snap = parse("stable_diffusion_finetune", fixture("stable_diffusion_finetune", name))
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
    snap = parse("stable_diffusion_finetune", fixture("stable_diffusion_finetune", name))
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
    examples = fixture("stable_diffusion_finetune", "modelslab_error_examples.json")
    assert set(examples) - {"_source"} >= {key}
    with pytest.raises(ParseError) as caught:
        parse("stable_diffusion_finetune", examples[key])
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
    snap = parse(
        "stable_diffusion_finetune",
        {"status": "success", "messege": "training_success", "data": data},
    )
    assert snap.state is State.RUNNING
    assert snap.progress == {"overall": pytest.approx(2 / 6)}
    assert snap.estimated_completion == POLLED_AT + timedelta(minutes=15)


def test_stable_diffusion_request_sends_key_in_body_only() -> None:
    src = source("stable_diffusion_finetune", auth={"api_key": "sd-secret"})
    req = PROVIDERS["stable_diffusion_finetune"].request(src, "F5jvdzGnYi")
    assert (req.method, req.url) == ("POST", "https://x.example/api/v3/fine_tune_status/F5jvdzGnYi")
    assert req.json == {"key": "sd-secret"}
    assert "sd-secret" not in repr(req)


def test_stable_diffusion_default_endpoint() -> None:
    raw = {
        "name": "s",
        "provider": "stable_diffusion_finetune",
        "auth": {"api_key": "k"},
        "job_ids": ["j"],
    }
    src = PROVIDERS["stable_diffusion_finetune"].source_model.model_validate(raw)
    url = PROVIDERS["stable_diffusion_finetune"].request(src, "j").url
    assert url == "https://stablediffusionapi.com/api/v3/fine_tune_status/j"


# -- shared behaviour --------------------------------------------------------------------------


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_unrecognised_vendor_status_is_unknown(provider: str) -> None:
    payloads = {
        "azure_document_translation": {"id": "b", "status": "Teleporting", "summary": {}},
        "stable_diffusion_finetune": {"status": "success", "messege": "teleporting"},
    }
    snap = parse(provider, payloads.get(provider, {"status": "teleporting"}))
    assert snap.state is State.UNKNOWN
    assert snap.vendor_status.lower() == "teleporting"


@pytest.mark.parametrize("status", ["RUNNING", "Running", "running"])
def test_statuses_match_case_insensitively(status: str) -> None:
    assert parse("azure_language_analyze_text", {"status": status}).state is State.RUNNING


def test_job_ids_are_percent_encoded_into_one_segment() -> None:
    """Even an ID the config would refuse cannot add a path segment or a query."""
    src = source("azure_language_analyze_text")
    url = PROVIDERS["azure_language_analyze_text"].request(src, "a/../b?x=1").url
    assert (
        url
        == "https://x.example/language/analyze-text/jobs/a%2F..%2Fb%3Fx%3D1?api-version=2023-04-01"
    )


def test_secret_repr_is_masked() -> None:
    auth = AzureKeyAuth(subscription_key=SecretStr("super-secret-value"))
    assert "super-secret-value" not in repr(auth)
    assert "super-secret-value" not in str(auth)
