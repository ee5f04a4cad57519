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

NAME = "azure_document_translation"
PROVIDER = PROVIDERS[NAME]
POLLED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
FINISHED_BATCH_DOCUMENTS = {
    "succeeded": 9,
    "failed": 1,
    "in_progress": 0,
    "not_started": 0,
    "cancelled": 0,
}


def t(text: str) -> datetime:
    return datetime.fromisoformat(text)


def parse(payload: Any) -> JobSnapshot:
    return PROVIDER.parse(payload, POLLED_AT)


def source(**keys: Any) -> Any:
    return source_of(NAME, **{"auth": {"subscription_key": "k"}, "job_ids": ["j"], **keys})


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
    example = fixture(NAME, name)
    snap = parse(example["responses"]["200"]["body"])
    assert (snap.state, snap.vendor_status) == (State.SUCCEEDED, "Succeeded")
    assert snap.documents == FINISHED_BATCH_DOCUMENTS
    assert snap.characters_charged == 0
    assert snap.progress == {"overall": 1.0}
    assert snap.created == t("2020-03-26T00:00:00Z")
    assert snap.last_update == t("2020-03-26T01:00:00Z")
    assert snap.errors == 0
    params = example["parameters"]
    src = source(api_version=params["api-version"])
    job_id = params.get("translationId") or params["id"]
    assert PROVIDER.request(src, job_id).url == expected_url


@pytest.mark.parametrize("name", ["2024-05-01_operations.json", "v1.1_operations.json"])
def test_translation_batch_list_items(name: str) -> None:
    """Batches in a list parse one by one, with the characters charged (1000)."""
    body = example_body(NAME, name)
    (snap,) = [parse(item) for item in body["value"]]
    assert snap.characters_charged == 1000
    assert snap.documents == FINISHED_BATCH_DOCUMENTS
    assert snap.created == t("2021-03-23T07:03:30.013631Z")
    with pytest.raises(ParseError):
        parse(body)


@pytest.mark.parametrize("name", ["2024-05-01_documents.json", "v1.1_documents.json"])
def test_translation_document_items_are_not_batches(name: str) -> None:
    """A document status (no summary) is refused rather than read as an empty batch."""
    body = example_body(NAME, name)
    for payload in (body, *body["value"]):
        with pytest.raises(ParseError):
            parse(payload)


TRANSLATION_ERROR_EXAMPLES = [
    (name, status)
    for name in ("v1.1_operation.json", "v1.1_operations.json", "v1.1_documents.json")
    for status in fixture(NAME, name)["responses"]
    if status != "200"
]


@pytest.mark.parametrize(("name", "status"), TRANSLATION_ERROR_EXAMPLES)
def test_translation_error_bodies_are_parse_errors(name: str, status: str) -> None:
    """401/404/429/500/503/400 bodies carry no batch: refused, not misread."""
    body = example_body(NAME, name, status)
    assert body["error"]["code"]
    with pytest.raises(ParseError):
        parse(body)


def test_translation_error_examples_cover_every_status() -> None:
    statuses = {status for _, status in TRANSLATION_ERROR_EXAMPLES}
    assert statuses == {"400", "401", "404", "429", "500", "503"}


def test_translation_seed_document_examples() -> None:
    snap = parse(fixture(NAME, "seed-003-status.json"))
    assert (snap.state, snap.documents) == (State.SUCCEEDED, FINISHED_BATCH_DOCUMENTS)
    with pytest.raises(ParseError):
        parse(fixture(NAME, "seed-003-error-401.json"))


def test_translation_region_header() -> None:
    src = source(auth={"subscription_key": "k", "region": "westeurope"})
    headers = PROVIDER.request(src, "b").headers
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
    snap = parse(payload)
    assert snap.state is State.FAILED
    assert snap.characters_charged == 9_007_199_254_740_993
    assert snap.errors == 1


def test_unrecognised_vendor_status_is_unknown() -> None:
    snap = parse({"id": "b", "status": "Teleporting", "summary": {}})
    assert snap.state is State.UNKNOWN
    assert snap.vendor_status.lower() == "teleporting"
