"""The job snapshot's read-only maps: shared where equal, so that 50,000 jobs do not hold
50,000 copies of {"overall": 1.0}, and never at the cost of a value written differently."""

from __future__ import annotations

import math

from exporter import model
from exporter.model import JobSnapshot, State


def snapshot(**fields: object) -> JobSnapshot:
    values: dict[str, object] = {"state": State.SUCCEEDED, "vendor_status": "Succeeded",
                                 "progress": {"overall": 1.0}, **fields}  # fmt: skip
    return JobSnapshot(**values)  # type: ignore[arg-type]


def test_equal_maps_are_one_object_and_empty_ones_too() -> None:
    """Two jobs with the same progress and counts share the maps; every empty map is one."""
    documents = {"succeeded": 4, "failed": 0}
    a, b = snapshot(documents=documents), snapshot(documents=dict(documents))
    assert a.progress is b.progress
    assert a.documents is b.documents
    assert a.tasks is b.tasks is a.tokens is b.training_loss
    assert dict(a.documents) == documents


def test_a_negative_zero_is_kept_as_it_was_given() -> None:
    """-0.0 equals 0.0 but is written "-0.0": a map holding it is never the shared 0.0 one."""
    zero = snapshot(state=State.RUNNING, vendor_status="Running", progress={"overall": 0.0})
    negative = snapshot(state=State.RUNNING, vendor_status="Running", progress={"overall": -0.0})
    assert negative.progress is not zero.progress
    assert math.copysign(1.0, negative.progress["overall"]) < 0
    assert math.copysign(1.0, zero.progress["overall"]) > 0


def test_the_table_of_shared_maps_stays_bounded() -> None:
    """Running jobs' fractions fill the table; it is emptied, not grown, and sharing goes on."""
    for i in range(model.SHARED_MAPPINGS + 10):
        snapshot(state=State.RUNNING, vendor_status="Running", progress={"overall": i / 1e6})
    assert len(model._SHARED) <= model.SHARED_MAPPINGS
    assert snapshot().progress is snapshot().progress
