"""What the live service sends where it differs from its documents (../fixtures/real-*).

Expected values are read off the fixture files by hand, not produced by the parser.
"""

from __future__ import annotations

from datetime import UTC, datetime

from conftest import fixture

from exporter.model import State
from exporter.providers import PROVIDERS

NAME = "azure_document_translation"
POLLED_AT = datetime(2026, 3, 2, 11, 30, tzinfo=UTC)


def test_cancelled_batch_progress_counts_only_finished_documents() -> None:
    """3 succeeded + 1 failed of 10, 6 cancelled: progress 0.4, not 1.0."""
    snap = PROVIDERS[NAME].parse(fixture(NAME, "real-cancelled-batch.json"), POLLED_AT)
    assert snap.state is State.CANCELLED
    assert snap.progress == {"overall": 0.4}
    assert snap.documents == {
        "succeeded": 3,
        "failed": 1,
        "in_progress": 0,
        "not_started": 0,
        "cancelled": 6,
    }
    assert snap.characters_charged == 4200
