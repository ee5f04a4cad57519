"""`make bench` in its CI form runs to the end and prints every figure. Nothing here asserts a
time: the figures are for reading (see the README's Performance section)."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_the_quick_bench_prints_every_figure() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for figure in (
        "exporter RSS tracking no job",
        "  5,000 ",  # a row of the scale table
        "x static",
        "CPU per poll:",
        "first cycle, 2,000 jobs",
        "listed (discovery)",
        "scrape, 20 at once",
    ):
        assert figure in result.stdout, (figure, result.stdout)
