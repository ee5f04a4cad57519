"""The fine-tuning provider read from the vendors' published answers: every status, the finish
and estimated times, trained tokens, errors; the newest metrics event of a running job (its
step, losses and progress), the request, the listing, locating a job and the webhook's job.

Expected values are read off the fixture files by hand, not produced by the parser.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from exporter.model import JobSnapshot, State
from exporter.providers.base import ListQuery, Located, ParseError
from exporter.providers.openai_batch.api import Source
from exporter.providers.openai_fine_tuning import PROVIDER
from exporter.providers.openai_fine_tuning.api import read_events

FIXTURES = Path(__file__).parents[1] / "fixtures"
POLLED_AT = datetime(2026, 3, 2, 11, 30, tzinfo=UTC)
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


def fixture(name: str) -> Any:
    data = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data["responses"]["200"]["body"] if "responses" in data else data


def parse(name_or_answer: str | dict[str, Any]) -> JobSnapshot:
    answer = fixture(name_or_answer) if isinstance(name_or_answer, str) else name_or_answer
    return PROVIDER.parse(answer, POLLED_AT)


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def source(**keys: Any) -> Source:
    raw = {"name": "s", "provider": "openai_fine_tuning", "auth": {"api_key": "sk-test"}, **keys}
    return Source.model_validate(raw)


# -- statuses ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "state"),
    [
        ("openai-openapi_createFineTuningJob_validating_files.json", State.NOT_STARTED),
        ("openai-openapi_createFineTuningJob_queued.json", State.NOT_STARTED),
        ("openai-openapi_resumeFineTuningJob_queued.json", State.NOT_STARTED),
        ("gpt-fine-tuner-readme_job_created.derived.json", State.NOT_STARTED),  # 2023: created
        ("synthetic-azure-pending.json", State.NOT_STARTED),
        ("synthetic-running.json", State.RUNNING),
        ("openai-openapi_pauseFineTuningJob_paused.json", State.RUNNING),
        ("azure-rest-api-specs_2025-04-01-preview_pause_finetuning_job_paused.json", State.RUNNING),
        ("openai-openapi_retrieveFineTuningJob_succeeded.json", State.SUCCEEDED),
        ("azure-rest-api-specs_2025-04-01-preview_get_finetuning_job_succeeded.json",
         State.SUCCEEDED),
        ("synthetic-failed.json", State.FAILED),
        ("openai-openapi_cancelFineTuningJob_cancelled.json", State.CANCELLED),
        ("azure-rest-api-specs_2025-04-01-preview_cancel_finetuning_job_cancelled.json",
         State.CANCELLED),
    ],
)  # fmt: skip
def test_every_status_maps_to_its_state(name: str, state: State) -> None:
    snap = parse(name)
    assert snap.state is state
    assert snap.vendor_status == fixture(name)["status"]


def test_a_succeeded_job_is_complete_with_its_trained_tokens_and_finish() -> None:
    snap = parse("openai-openapi_retrieveFineTuningJob_succeeded.json")
    assert snap.progress == {"overall": 1.0}
    assert snap.tokens == {"trained": 5768}
    assert snap.created == at(1692661014)
    assert snap.finished == at(1692661190)
    assert snap.last_update == at(1692661190)
    assert snap.estimated_completion is None  # estimated_finish: 0
    assert snap.errors == 0
    assert snap.training_step is None


@pytest.mark.parametrize(
    ("name", "tokens", "finished"),
    [
        ("gpt-fine-tuner-readme_job_succeeded.derived.json", 48460, 1693157615),
        ("azure-rest-api-specs_2025-04-01-preview_get_finetuning_job_succeeded.json", 2342,
         1646127311),
    ],
)  # fmt: skip
def test_real_succeeded_jobs(name: str, tokens: int, finished: int) -> None:
    snap = parse(name)
    assert snap.tokens == {"trained": tokens}
    assert snap.finished == at(finished)


def test_a_paused_job_has_no_finish_time_whatever_it_carries() -> None:
    """Azure's pause answer has a finished_at: the job is held, not finished."""
    snap = parse("azure-rest-api-specs_2025-04-01-preview_pause_finetuning_job_paused.json")
    assert snap.finished is None
    assert snap.progress == {}  # held while running: how far, only its events could say


def test_a_failed_job_counts_its_error() -> None:
    snap = parse("synthetic-failed.json")
    assert snap.errors == 1
    assert snap.finished == at(1721765400)
    assert snap.progress == {"overall": 0.0}


@pytest.mark.parametrize(
    "error", [None, {}, {"code": None, "message": None, "param": None}, {"message": ""}]
)
def test_an_empty_error_is_none(error: Any) -> None:
    assert parse({"status": "running", "error": error}).errors == 0


def test_a_running_job_has_its_estimated_finish_and_name() -> None:
    snap = parse("synthetic-running.json")
    assert snap.estimated_completion == at(1721768400)
    assert snap.display_name == "custom_suffix"
    assert snap.tokens == {}
    assert snap.progress == {}  # the job says no step: the events do


@pytest.mark.parametrize(
    ("status", "estimate", "expected"),
    [
        ("running", 1721768400, 1721768400),
        ("running", 1721760000, None),  # before the job was created: a placeholder
        ("running", 0, None),
        ("queued", 1721768400, 1721768400),
        ("succeeded", 1721768400, None),  # finished: what it says is no estimate
        ("succeeded", 0, None),
    ],
)
def test_estimated_finish_is_kept_only_while_the_job_has_not_finished(
    status: str, estimate: int, expected: int | None
) -> None:
    """Past it, a running job is overdue (AsyncJobOverdue): a past estimate is kept while the
    job runs, and dropped once it finished."""
    snap = parse({"status": status, "created_at": 1721764800, "estimated_finish": estimate})
    assert snap.estimated_completion == (None if expected is None else at(expected))


@pytest.mark.parametrize(
    "answer",
    [
        [],
        {"object": "fine_tuning.job"},
        {"status": "running", "created_at": "2024-07-23"},
        {"status": "succeeded", "trained_tokens": -3},
        {"status": "failed", "error": "boom"},
        {"error": {"message": "No such fine-tuning job", "type": "invalid_request_error"}},
    ],
)
def test_what_is_not_a_job_is_a_parse_error(answer: Any) -> None:
    with pytest.raises(ParseError):
        PROVIDER.parse(answer, POLLED_AT)


# -- the events of a running job ----------------------------------------------------------------


def running() -> JobSnapshot:
    return parse("synthetic-running.json")


def test_a_running_job_asks_for_its_newest_events() -> None:
    assert PROVIDER.follow_up is not None
    then = PROVIDER.follow_up(source(), "ftjob-abc123", None, running())
    assert then is not None
    url = urlsplit(then.request.url)
    assert url.path == "/v1/fine_tuning/jobs/ftjob-abc123/events"
    assert parse_qs(url.query) == {"limit": ["50"]}
    assert then.request.headers["Authorization"] == "Bearer sk-test"


@pytest.mark.parametrize(
    "name",
    [
        "openai-openapi_createFineTuningJob_queued.json",
        "openai-openapi_retrieveFineTuningJob_succeeded.json",
        "synthetic-failed.json",
        "openai-openapi_cancelFineTuningJob_cancelled.json",
    ],
)
def test_a_job_that_does_not_run_asks_nothing_more(name: str) -> None:
    assert PROVIDER.follow_up is not None
    assert PROVIDER.follow_up(source(), "ftjob-abc123", None, parse(name)) is None


def test_a_paused_job_still_reads_its_events() -> None:
    """Its step and loss stay shown while it is held."""
    assert PROVIDER.follow_up is not None
    paused = parse("openai-openapi_pauseFineTuningJob_paused.json")
    assert PROVIDER.follow_up(source(), "ftjob-abc123", None, paused) is not None


def test_openai_events_give_the_step_of_a_known_total_and_the_loss() -> None:
    """Step 20/100 (the newest of the real answer's metrics events): progress 0.2."""
    snap = read_events(fixture("synthetic-events-openai-step20.json"), running(), POLLED_AT)
    assert snap.training_step == 20
    assert snap.training_loss == {"train": 0.152922585606575}
    assert snap.progress == {"overall": 0.2}
    assert snap.last_update == at(1721764800)  # the job's own creation is later than its events
    assert snap.state is State.RUNNING


def test_azure_events_without_a_total_give_the_step_but_no_progress() -> None:
    """Step 100: ... with no total, oldest first: the highest step, both losses, progress 0."""
    job = parse("synthetic-azure-pending.json")
    snap = read_events(fixture("synthetic-events-azure-no-total.json"), job, POLLED_AT)
    assert snap.training_step == 100
    assert snap.training_loss == {"train": 0.478, "valid": 10.112}
    assert snap.progress == {"overall": 0.0}
    assert snap.last_update == at(1646126190)  # the newest event


def test_the_guides_metrics_event_is_the_last_step() -> None:
    event = fixture("openai-guide_metrics_event.json")
    snap = read_events({"data": [event]}, running(), POLLED_AT)
    assert (snap.training_step, snap.progress["overall"]) == (100, 1.0)
    assert snap.training_loss == {"train": pytest.approx(1.805623287509661e-5)}


def test_events_without_metrics_change_nothing_but_the_last_update() -> None:
    """Azure's events example: enqueued, started, succeeded; OpenAI's: messages only."""
    job = parse("synthetic-azure-pending.json")
    azure = fixture("azure-rest-api-specs_2025-04-01-preview_get_finetuning_job_events.json")
    snap = read_events(azure, job, POLLED_AT)
    assert (snap.training_step, snap.training_loss) == (None, {})
    assert snap.last_update == at(1646126192)
    openai = fixture("openai-openapi_listFineTuningEvents_page.json")
    assert read_events(openai, running(), POLLED_AT).training_step is None


@pytest.mark.parametrize(
    "events",
    [
        [{"type": "metrics", "message": "Step 3/10: x", "data": {"step": 3, "train_loss": "NaN"}}],
        [{"type": "metrics", "message": "Step 3/10: x", "data": {"train_loss": 0.5}}],
        [{"message": "Step 3/10: x", "data": {"step": 3, "train_loss": 0.5}}],  # no type
    ],
)
def test_odd_metrics_events_give_what_they_can(events: list[dict[str, Any]]) -> None:
    """A loss that is not a number is no loss; the step may come from the message alone."""
    snap = read_events({"data": events}, running(), POLLED_AT)
    assert (snap.training_step, snap.progress["overall"]) == (3, 0.3)


@pytest.mark.parametrize("answer", [[], {"data": {"step": 1}}, {"object": "list"}])
def test_an_events_answer_without_a_list_is_a_parse_error(answer: Any) -> None:
    with pytest.raises(ParseError):
        read_events(answer, running(), POLLED_AT)


# -- listing, locate, webhook --------------------------------------------------------------------


def first_listing(since: datetime = LONG_AGO) -> Any:
    assert PROVIDER.lister is not None
    (ask,) = PROVIDER.lister(source(discovery={}), ListQuery(since, since))
    return ask


def test_the_listing_is_the_poll_of_each_job_and_pages_after_the_last_job() -> None:
    """OpenAI's list example: one queued job, has_more, and no last_id."""
    ask = first_listing()
    assert urlsplit(ask.request.url).path == "/v1/fine_tuning/jobs"
    assert parse_qs(urlsplit(ask.request.url).query) == {"limit": ["100"]}
    page = ask.read(fixture("openai-openapi_listPaginatedFineTuningJobs_page.json"), POLLED_AT)
    (job,) = page.listed
    assert job.job_id == "ftjob-abc123"
    assert job.snapshot is not None
    assert job.snapshot.state is State.NOT_STARTED
    (follow,) = page.follow
    assert parse_qs(urlsplit(follow.request.url).query) == {
        "limit": ["100"], "after": ["ftjob-abc123"]
    }  # fmt: skip


def test_a_running_job_is_listed_without_its_status_to_be_polled_with_its_events() -> None:
    failed = {**fixture("synthetic-failed.json"), "id": "ftjob-def456"}
    body = {"has_more": False, "data": [fixture("synthetic-running.json"), failed]}
    page = first_listing().read(body, POLLED_AT)
    assert [(job.job_id, job.snapshot is None) for job in page.listed] == [
        ("ftjob-abc123", True), ("ftjob-def456", False)
    ]  # fmt: skip
    assert page.follow == ()


def test_the_listing_reads_azures_list_and_stops_at_the_lookback() -> None:
    body = fixture("azure-rest-api-specs_2025-04-01-preview_get_finetuning_jobs_list.json")
    page = first_listing().read(body, POLLED_AT)
    assert [job.job_id for job in page.listed] == ["ft-72a2792ef7d24ba7b82c7fe4a37e379f"]
    assert first_listing(since=at(1646126128)).read(body, POLLED_AT).listed == ()


@pytest.mark.parametrize(
    ("url", "found"),
    [
        ("https://api.openai.com/v1/fine_tuning/jobs/ftjob-abc123", Located("ftjob-abc123")),
        ("https://api.openai.com/v1/batches/batch_abc123", None),
        ("https://api.openai.com/v1/fine_tuning/jobs/ftjob-abc123/events", None),
    ],
)
def test_a_job_url_names_its_job(url: str, found: Located | None) -> None:
    assert PROVIDER.locate(source(), url) == found


@pytest.mark.parametrize(
    ("name", "job_id"),
    [
        ("openai-openapi_WebhookFineTuningJobSucceeded.json", "ftjob_abc123"),
        ("openai-openapi_WebhookFineTuningJobFailed.json", "ftjob_abc123"),
        ("openai-openapi_WebhookFineTuningJobCancelled.json", "ftjob_abc123"),
    ],
)
def test_a_fine_tuning_event_names_its_job(name: str, job_id: str) -> None:
    assert PROVIDER.webhook is not None
    assert (PROVIDER.webhook.slug, PROVIDER.webhook.signed) == ("openai", True)
    assert PROVIDER.webhook.job_id(fixture(name)) == job_id


def test_a_batch_event_names_no_fine_tuning_job() -> None:
    assert PROVIDER.webhook is not None
    assert PROVIDER.webhook.job_id({"type": "batch.completed", "data": {"id": "b"}}) is None
