"""`make bench` in its CI form runs to the end and prints every figure. Nothing here asserts a
time: the figures are for reading (see the README's Performance section)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
from conftest import REPO
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import prometheus_cost


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
        "what 1,000 jobs cost the Prometheus",
        "  defaults ",  # a row of the Prometheus table
        "  lean ",  # a row: the README's lean allowlist
        "series per job, by family",
    ):
        assert figure in result.stdout, (figure, result.stdout)


@pytest.mark.e2e
def test_the_prometheus_cost_counts_what_the_exposition_and_prometheus_hold() -> None:
    """At 200 jobs, the series per job are the job_id samples counted again here with
    client_python's parser, and the scraping Prometheus holds at least every sample."""
    cost = prometheus_cost.measure(200)

    samples, per_family = 0, Counter[str]()
    for family in text_string_to_metric_families(cost.exposition):
        samples += len(family.samples)
        if family.name.startswith("asyncjob_"):
            per_family[family.name] += sum("job_id" in s.labels for s in family.samples)
    # client_python names a counter's family without its `_total`; the bench keeps the TYPE name
    named = {name.removesuffix("_total"): count for name, count in cost.per_family.items()}
    assert named == +per_family
    assert cost.series_per_job == per_family.total() / 200 > 0
    assert cost.samples == samples
    assert cost.head.series >= cost.samples
    assert cost.baseline.series < cost.head.series
    assert cost.head.rss > 0
    assert cost.head.heap > 0
