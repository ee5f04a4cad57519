"""The training jobs' listing, read from the vendor's own list examples: what it asks and reads.

Expected values are read off the example JSON by hand.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from conftest import example_body, source_of

from exporter.model import State
from exporter.providers import PROVIDERS
from exporter.providers.base import ListQuery, ListRequest

NAME = "azure_language_training"
AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


def first(query: ListQuery | None = None, **keys: Any) -> tuple[ListRequest, ...]:
    lister = PROVIDERS[NAME].lister
    assert lister is not None
    src = source_of(NAME, auth={"subscription_key": "k"}, discovery={}, **keys)
    return lister(src, query or ListQuery(LONG_AGO, LONG_AGO))


def params(url: str) -> dict[str, str]:
    return {key: values[-1] for key, values in parse_qs(urlsplit(url).query).items()}


def test_training_lists_the_source_project_or_every_recently_active_project() -> None:
    (ask,) = first(project="LoanAgreements")
    assert urlsplit(ask.request.url).path == (
        "/language/authoring/analyze-text/projects/LoanAgreements/train/jobs"
    )
    assert params(ask.request.url) == {"api-version": "2023-04-01", "maxpagesize": "100"}
    since = datetime(2022, 4, 18, 14, 10, tzinfo=UTC)
    (projects,) = first(ListQuery(since, since))
    assert urlsplit(projects.request.url).path == "/language/authoring/analyze-text/projects"
    page = projects.read(example_body(NAME, "2022-05-01_SuccessfulListProjects.json"), AT)
    # LoanAgreements was trained at 14:14:28, after `since`; MoviesSummary was last modified at
    # 14:03:12 and never trained: skipped.
    assert [urlsplit(f.request.url).path.split("/")[-3] for f in page.follow] == ["LoanAgreements"]


def test_training_reads_the_list_example_with_each_jobs_project_and_the_lookback() -> None:
    since = datetime(2022, 4, 18, 17, 0, tzinfo=UTC)
    (ask,) = first(ListQuery(since, since), project="LoanAgreements")
    page = ask.read(example_body(NAME, "2022-05-01_SuccessfulListTrainingJobs.json"), AT)
    # Three jobs, created 15:44:44, 17:22:11 and 17:44:04: the first is before the lookback.
    assert [job.job_id for job in page.listed] == [
        "9145f93f-6f37-418c-8527-d2ded84cece0_637858368000000000",
        "ee23c900-354d-4b6d-96e1-8197db2bd5f7_637858368000000000",
    ]
    assert {job.project for job in page.listed} == {"LoanAgreements"}
    assert all(job.snapshot and job.snapshot.state is State.SUCCEEDED for job in page.listed)
    assert page.follow == ()  # "nextLink": null
