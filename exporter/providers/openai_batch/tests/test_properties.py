"""Whatever the counts, a batch's tasks add up and its state follows them. (That no answer
crashes the parser or the listing's reading is tests/providers/test_parser_properties.py's, for
every provider.)"""

from __future__ import annotations

from fuzzing import POLLED_AT
from hypothesis import given
from hypothesis import strategies as st

from exporter.model import State
from exporter.providers.openai_batch import PROVIDER

STATUSES = ["validating", "in_progress", "finalizing", "completed", "failed", "expired",
            "cancelling", "cancelled"]  # fmt: skip


@given(
    status=st.sampled_from(STATUSES),
    completed=st.integers(0, 10**6),
    failed=st.integers(0, 10**6),
    left=st.integers(0, 10**6),
)
def test_the_tasks_add_up_to_the_total_and_the_state_follows_the_counts(
    status: str, completed: int, failed: int, left: int
) -> None:
    total = completed + failed + left
    counts = {"total": total, "completed": completed, "failed": failed}
    snap = PROVIDER.parse({"status": status, "request_counts": counts}, POLLED_AT)
    ended = status in {"completed", "failed"}
    assert sum(snap.tasks.values()) == (completed + failed if ended else total)
    if status in {"completed", "expired"}:
        if completed == total and (total or status == "completed"):
            assert snap.state is State.SUCCEEDED
        elif completed:
            assert snap.state is State.PARTIALLY_SUCCEEDED
        else:
            assert snap.state is State.FAILED
