"""The step line of a fine-tune's log, generated in every wording we know of."""

from __future__ import annotations

import pytest
from conftest import FUZZ_EXAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.providers.stable_diffusion_finetune import parse_step

words = st.lists(st.sampled_from(["Training", "Done", "Model", "Uploading", "Started", "Stage"]),
                 max_size=3).map(" ".join)  # fmt: skip
eta_units = st.sampled_from([("minutes", 1.0), ("minute", 1.0), ("min", 1.0), ("mins", 1.0),
                             ("hours", 60.0), ("hour", 60.0), ("seconds", 1 / 60), ("", 1.0)])  # fmt: skip
suffixes = st.lists(
    st.sampled_from(
        ["Time Elapsed : 905 seconds", "GPU : A100", "loss : 0.07", "ETA2 : 9 minutes"]
    ),
    max_size=3,
)


@st.composite
def step_lines(draw: st.DrawFn) -> tuple[str, int, int, float | None]:
    """(line, steps done, steps left, ETA minutes): Step N, optional words, M [More] Steps to
    go, an optional ETA in any unit, any trailing | fields."""
    done, left = draw(st.integers(0, 10_000)), draw(st.integers(0, 10_000))
    separator = draw(st.sampled_from([":", ": ", " : ", " "]))
    more = draw(st.sampled_from(["", "More ", "more "]))
    steps = draw(st.sampled_from(["Steps to go", "Step to go", "steps left", "steps remaining"]))
    line = f"Step{separator}{done} {draw(words)}, {left} {more}{steps}"
    eta = draw(st.none() | st.tuples(st.integers(0, 600), eta_units))
    minutes = None
    if eta is not None:
        eta_separator = draw(st.sampled_from([" : ETA : ", " ETA: ", ", ETA ", " | ETA : "]))
        line += f"{eta_separator}{eta[0]} {eta[1][0]}".rstrip()
        minutes = eta[0] * eta[1][1]
    line += "".join(f" | {field}" for field in draw(suffixes))
    return line, done, left, minutes


@settings(max_examples=FUZZ_EXAMPLES, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(case=step_lines())
def test_step_lines_parse_in_every_wording(case: tuple[str, int, int, float | None]) -> None:
    """Every generated wording of a step line gives its step, steps left and ETA."""
    line, done, left, minutes = case
    parsed = parse_step(line)
    assert parsed is not None, line
    assert parsed[:2] == (done, left), line
    if minutes is None:
        assert parsed[2] is None, line
    else:
        assert parsed[2] == pytest.approx(minutes), line
