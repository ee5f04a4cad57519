"""The batches' part of the simulator, against what the live service sends."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from exporter.providers.azure_document_translation.simulator import PART
from exporter.simulator import SimJob, render


@pytest.mark.parametrize("version", ["", "v1.1"])
def test_a_batch_carries_id_in_every_api_version(version: str) -> None:
    """The live service says "id" in 2024-05-01 too (the Azure SDK's recorded tests); the REST
    spec example's "translationId" is what the simulator used to send, and SDKs read None."""
    batch = render(SimJob("b-1", PART.name), 60.0, datetime(2026, 1, 1, tzinfo=UTC), version)
    assert batch["id"] == "b-1"
    assert "translationId" not in batch
