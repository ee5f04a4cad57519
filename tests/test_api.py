"""The jobs API over real HTTP: every answer code, Operation-Location for every provider, and
1,000 registrations from 20 concurrent clients with none lost."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
import requests
from conftest import Harness, Metrics, demo_raw_config, disk_full, wait_until

from exporter import logging as exporter_logging
from exporter import storage as storage_module
from exporter.storage import DATABASE, Storage

if TYPE_CHECKING:
    from pathlib import Path

    from exporter.simulator import Simulator

MakeHarness = Callable[..., Harness]


def slow(sim: Simulator) -> dict[str, Any]:
    """The demo sources, polled every hour: a poll soon after registering is the API's doing."""
    return demo_raw_config(sim, poll_interval="1h")


def jobs_url(h: Harness) -> str:
    return f"{h.url}/api/v1/jobs"


def post(h: Harness, body: Any, **kwargs: Any) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(jobs_url(h), data=data, timeout=10, **kwargs)


def error_of(response: requests.Response) -> str:
    assert response.headers["Content-Type"] == "application/json"
    message: str = response.json()["error"]
    return message


def test_disabled_api_answers_403_in_json(make_harness: MakeHarness) -> None:
    h = make_harness()
    for response in (post(h, {"source": "x", "job_id": "y"}), requests.get(jobs_url(h), timeout=5)):
        assert response.status_code == 403
        assert error_of(response) == "the jobs API is not enabled (--web.enable-jobs-api)"


def test_register_is_idempotent_and_polls_right_away(make_harness: MakeHarness) -> None:
    """201 with the job, then 200 for the same job; the first poll comes at once although the
    interval is an hour; GET lists it with its origin and what the poll learned."""
    h = make_harness(slow, jobs_api=True, start_polling=True)
    wait_until(lambda: len(h.sim.seen("analyze-ok")) == 1, what="the start-up poll")
    created = post(h, {"source": "language-analyze", "job_id": "ta-ok-2"})
    assert created.status_code == 201
    job = created.json()
    assert (job["source"], job["provider"], job["job_id"], job["origin"]) == (
        "language-analyze", "azure_language_analyze_text", "ta-ok-2", "api"
    )  # fmt: skip
    assert job["project"] is None
    again = post(h, {"source": "language-analyze", "job_id": "ta-ok-2"})
    assert (again.status_code, again.json()["job_id"]) == (200, "ta-ok-2")
    wait_until(lambda: h.sim.seen("ta-ok-2"), what="the registered job's first poll")
    assert len(h.sim.seen("ta-ok-2")) == 1  # one poll, not one per registration
    # A config-listed job is already tracked: 200, and its origin stays "config".
    listed = post(h, {"source": "language-analyze", "job_id": "analyze-ok"})
    assert (listed.status_code, listed.json()["origin"]) == (200, "config")
    jobs = {j["job_id"]: j for j in requests.get(jobs_url(h), timeout=5).json()["jobs"]}
    assert jobs["ta-ok-2"]["origin"] == "api"
    assert jobs["ta-ok-2"]["up"] is False  # the simulator has no such analyze job: 404
    assert jobs["analyze-ok"]["state"] == "running"
    assert set(jobs["analyze-ok"]) == {"source", "provider", "job_id", "project", "origin",
                                       "state", "progress", "up", "first_seen", "finished_at"}  # fmt: skip


TRAINING_URL = "{base}/language/authoring/analyze-text/projects/LoanAgreements/train/jobs/train-ok?api-version=2023-04-01"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "the body is not JSON"),
        (b"[1, 2]", "the body must be a JSON object"),
        ({"source": "nope", "job_id": "x"},
         "unknown source 'nope'; known: {known}"),  # every source of the config, in its order
        ({"source": "translator", "job_id": "../etc"},
         "'../etc' is not a valid job ID: use 1-128 letters, digits or -_.:"),
        ({"source": "translator"}, None),
        ({"source": "translator", "job_id": "a", "extra": 1}, None),
        ({"source": "translator", "job_id": 7}, None),
        ({"source": "translator", "job_id": "a", "project": "p"},
         "source 'translator' (azure_document_translation) has no projects; leave project out"),
        ({"operation_location": "https://elsewhere.example/language/analyze-text/jobs/x"},
         "operation_location matches no source's endpoint and job status path"),
        ({"operation_location": 42}, "give operation_location (a URL string) alone"),
        ({"operation_location": "{base}/translator/document/batches/b", "source": "translator"},
         "give operation_location (a URL string) alone"),
    ],
    ids=["bad-json", "not-an-object", "unknown-source", "bad-id", "no-job-id", "extra-key",
         "id-not-a-string", "project-where-none", "url-of-no-source", "url-not-a-string",
         "url-and-more"],
)  # fmt: skip
def test_bad_requests_get_400_with_the_reason(
    make_harness: MakeHarness, body: Any, message: str | None
) -> None:
    h = make_harness(slow, jobs_api=True)
    configured = len(h.exporter.store.jobs())
    if isinstance(body, dict):
        body = {k: v.format(base=h.sim.url) if isinstance(v, str) else v for k, v in body.items()}
    response = post(h, body)
    assert response.status_code == 400
    known = ", ".join(source.name for source in h.exporter.config.sources)
    expected = (
        message.format(known=known)
        if message
        else (
            'give {"source": ..., "job_id": ...} (strings, and "project" for a training source '
            'without one), or {"operation_location": "<the Operation-Location URL>"}'
        )
    )
    assert error_of(response) == expected
    assert len(requests.get(jobs_url(h), timeout=5).json()["jobs"]) == configured  # none added


def test_training_source_without_a_project_needs_the_jobs(make_harness: MakeHarness) -> None:
    def no_project(sim: Simulator) -> dict[str, Any]:
        raw = slow(sim)
        del raw["sources"][0]["project"]
        raw["sources"][0]["job_ids"] = []
        return raw

    h = make_harness(no_project, jobs_api=True, start_polling=True)
    refused = post(h, {"source": "language-training", "job_id": "train-ok"})
    assert refused.status_code == 400
    assert error_of(refused) == (
        "source 'language-training' has no project of its own: give the job's project"
    )
    created = post(h, {"source": "language-training", "job_id": "train-ok", "project": "Loans"})
    assert (created.status_code, created.json()["project"]) == (201, "Loans")
    wait_until(lambda: h.sim.seen("train-ok"), what="the poll")
    assert "/projects/Loans/train/jobs/train-ok" in h.sim.seen("train-ok")[0].path


def test_a_url_that_matches_two_sources_is_refused_by_name(make_harness: MakeHarness) -> None:
    def twins(sim: Simulator) -> dict[str, Any]:
        raw = slow(sim)
        raw["sources"].append({**raw["sources"][3], "name": "translator-twin"})
        return raw

    h = make_harness(twins, jobs_api=True)
    response = post(h, {"operation_location": f"{h.sim.url}/translator/document/batches/b1"})
    assert response.status_code == 400
    assert error_of(response) == (
        "operation_location matches more than one source (translator, translator-twin); "
        "give source instead"
    )


@pytest.mark.parametrize(
    ("url", "source", "job_id", "project"),
    [
        (TRAINING_URL, "language-training", "train-ok", "LoanAgreements"),
        ("{base}/language/analyze-text/jobs/analyze-ok?api-version=2023-04-01",
         "language-analyze", "analyze-ok", None),
        ("{base}/text/analytics/v3.2-preview.2/analyze/jobs/ta-ok", "text-analytics", "ta-ok", None),
        ("{base}/translator/document/batches/batch-ok?api-version=2024-05-01",
         "translator", "batch-ok", None),
        ("{base}/translator/text/batch/v1.1/batches/batch-partial", "translator", "batch-partial", None),
        ("{base}/api/v3/fine_tune_status/sd-ok", "stable-diffusion", "sd-ok", None),
    ],
    ids=["training", "analyze-text", "text-analytics", "translation", "translation-v1",
         "stable-diffusion"],
)  # fmt: skip
def test_operation_location_for_every_provider(
    make_harness: MakeHarness, url: str, source: str, job_id: str, project: str | None
) -> None:
    """The Operation-Location the API answered when the job started finds the source, the job
    and its project; the job is then polled at its own path."""

    def empty(sim: Simulator) -> dict[str, Any]:
        raw = slow(sim)
        for item in raw["sources"]:
            item["job_ids"] = []
        return raw

    h = make_harness(empty, jobs_api=True, start_polling=True)
    response = post(h, {"operation_location": url.format(base=h.sim.url)})
    assert response.status_code == 201, response.text
    job = response.json()
    assert (job["source"], job["job_id"], job["project"]) == (source, job_id, project)
    wait_until(lambda: h.sim.seen(job_id), what=f"the first poll of {job_id}")
    labels = {"source": source, "job_id": job_id, "provider": job["provider"]}
    wait_until(lambda: h.scrape().get("asyncjob_up", **labels) == 1, what="the job to be up")


def test_body_over_64_kib_is_413(make_harness: MakeHarness) -> None:
    h = make_harness(slow, jobs_api=True)
    padding = "x" * (64 * 1024)
    response = post(h, {"source": "translator", "job_id": "a", "pad": padding})
    assert response.status_code == 413
    assert error_of(response) == "the body is over 65536 bytes"


def test_wrong_methods_are_405(make_harness: MakeHarness) -> None:
    h = make_harness(slow, jobs_api=True)
    response = requests.delete(jobs_url(h), timeout=5)
    assert (response.status_code, error_of(response)) == (
        405, "DELETE is not allowed here; use GET, HEAD, POST"
    )  # fmt: skip
    response = requests.get(f"{jobs_url(h)}/translator/batch-ok", timeout=5)
    assert (response.status_code, error_of(response)) == (
        405, "GET is not allowed here; use DELETE"
    )  # fmt: skip


def test_delete_stops_tracking_api_jobs_only(make_harness: MakeHarness) -> None:
    h = make_harness(demo_raw_config, jobs_api=True, start_polling=True)
    assert post(h, {"source": "translator", "job_id": "extra-batch"}).status_code == 201
    wait_until(lambda: h.sim.seen("extra-batch"), what="its first poll")
    gone = requests.delete(f"{jobs_url(h)}/translator/extra-batch", timeout=5)
    assert (gone.status_code, gone.content) == (204, b"")
    polls = len(h.sim.seen("extra-batch"))
    healthy = len(h.sim.seen("batch-partial"))
    wait_until(lambda: len(h.sim.seen("batch-partial")) >= healthy + 5, what="five intervals")
    assert len(h.sim.seen("extra-batch")) <= polls + 1  # at most the one already in flight
    assert h.scrape().series("asyncjob_up", job_id="extra-batch") == []
    config_job = requests.delete(f"{jobs_url(h)}/translator/batch-ok", timeout=5)
    assert config_job.status_code == 409
    assert error_of(config_job) == "job 'batch-ok' is listed in the config file; remove it there"
    unknown = requests.delete(f"{jobs_url(h)}/translator/never-seen", timeout=5)
    assert unknown.status_code == 404
    assert error_of(unknown) == "no job 'never-seen' is tracked for source 'translator'"


def test_registrations_beyond_max_jobs_are_refused_counted_and_logged_once(
    make_harness: MakeHarness, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each refusal is counted; the log has one line when refusals start and one when the
    source takes a job again, however many were refused between."""

    def small(sim: Simulator) -> dict[str, Any]:
        raw = slow(sim)
        raw["sources"][3]["max_jobs"] = 3  # translator: two config jobs, room for one more
        return raw

    h = make_harness(small, jobs_api=True)
    assert post(h, {"source": "translator", "job_id": "third"}).status_code == 201
    exporter_logging.configure("info", "json")
    capsys.readouterr()
    for n in range(20):
        refused = post(h, {"source": "translator", "job_id": f"refused-{n}"})
        assert refused.status_code == 429
    assert error_of(refused) == (
        "source 'translator' tracks 3 jobs, its max_jobs; no more jobs are accepted"
    )
    m = h.scrape()
    labels = {"provider": "azure_document_translation", "source": "translator"}
    assert m.get("asyncjob_jobs_rejected_total", **labels, reason="limit") == 20
    assert m.get("asyncjob_tracked_jobs", **labels) == 3
    assert requests.delete(f"{jobs_url(h)}/translator/third", timeout=5).status_code == 204
    assert post(h, {"source": "translator", "job_id": "fourth"}).status_code == 201
    logged = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
    assert logged.count("job limit reached; refusing jobs until there is room") == 1  # not 20
    assert logged.count("job limit no longer reached") == 1


def test_a_thousand_registrations_from_twenty_clients_lose_none(
    make_harness: MakeHarness, tmp_path: Path
) -> None:
    """Every 201 is a job that is tracked, listed, exported and committed to storage."""
    storage = Storage.open(tmp_path / "data")
    try:
        h = make_harness(slow, jobs_api=True, storage=storage)
        configured = len(h.exporter.store.jobs())  # the demo config's, fewer than 1000
        ids = [f"batch-{n:04d}" for n in range(1000)]

        def register(batch: list[str]) -> list[int]:
            with requests.Session() as session:
                return [
                    session.post(jobs_url(h), json={"source": "translator", "job_id": job_id},
                                 timeout=30).status_code
                    for job_id in batch
                ]  # fmt: skip

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            codes = [
                c for batch in pool.map(register, [ids[i::20] for i in range(20)]) for c in batch
            ]
        assert codes == [201] * 1000
        answer = requests.get(jobs_url(h), timeout=30).json()
        # A page of the default 1000, then the rest.
        assert (len(answer["jobs"]), answer["total"]) == (1000, 1000 + configured)
        following = requests.get(f"{h.url}{answer['next']}", timeout=30).json()
        assert (len(following["jobs"]), following["next"]) == (configured, None)
        listed = answer["jobs"] + following["jobs"]
        assert {j["job_id"] for j in listed if j["origin"] == "api"} == set(ids)
        only = requests.get(jobs_url(h), params={"source": "translator", "state": "not_polled",
                                                 "limit": "5000"}, timeout=30).json()  # fmt: skip
        assert {j["job_id"] for j in only["jobs"]} <= set(ids) | {"batch-ok", "batch-partial"}
        bad = requests.get(jobs_url(h), params={"limit": "0"}, timeout=30)
        assert bad.status_code == 400
        assert "limit must be" in bad.json()["error"]
        m = Metrics(requests.get(f"{h.url}/metrics", timeout=30).text)
        tracked = m.get("asyncjob_tracked_jobs", provider="azure_document_translation",
                        source="translator")  # fmt: skip
        assert tracked == 1002
        assert storage.flush()
        stored = {job.job_id for job in storage.load() if job.origin == "api"}
        assert stored == set(ids)
    finally:
        storage.close()


def test_a_job_the_storage_cannot_commit_is_503_and_not_ready_until_it_can(
    make_harness: MakeHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No 201 without a commit: a full disk answers 503 naming the file and the reason, and
    /-/ready says so; the job stays tracked in memory and is written once the disk takes it,
    after which the same request answers 200."""
    monkeypatch.setattr(storage_module, "RETRY_FIRST", 0.05)
    monkeypatch.setattr(storage_module, "RETRY_MAX", 0.1)
    storage = Storage.open(tmp_path / "data")
    try:
        h = make_harness(slow, jobs_api=True, storage=storage, start_polling=True)
        assert requests.get(f"{h.url}/-/ready", timeout=5).status_code == 200
        disk_full(storage)
        body = {"source": "translator", "job_id": "batch-late"}
        for n in range(30):  # enough rows to need a page more than the file has
            if (refused := post(h, {**body, "job_id": f"batch-{n:02d}"})).status_code == 503:
                break
        assert refused.status_code == 503
        database = str(tmp_path / "data" / DATABASE)
        assert error_of(refused).startswith(
            "the job is not registered: the storage cannot commit it (cannot write storage file "
            f"{database!r}: database or disk is full"
        )
        assert post(h, body).status_code == 503  # while it fails, at once
        ready = requests.get(f"{h.url}/-/ready", timeout=5)
        assert ready.status_code == 503
        assert f"storage failing: cannot write storage file {database!r}" in ready.text
        errors = h.scrape().get("asyncjob_storage_errors_total", operation="write")
        assert errors is not None
        assert errors >= 1
        assert h.exporter.store.get("translator", "batch-late") is not None  # polled in memory
        disk_full(storage, full=False)
        wait_until(lambda: storage.problem is None, what="the storage to take writes again")
        assert post(h, body).status_code == 200  # tracked, and now committed
        assert requests.get(f"{h.url}/-/ready", timeout=5).status_code == 200
        assert "batch-late" in {job.job_id for job in storage.load()}
    finally:
        storage.close()


def test_a_finished_registered_job_leaves_when_its_retention_ends(
    make_harness: MakeHarness,
) -> None:
    """On the real clock, with a one-second retention: the finished batch is exported, then
    dropped (counted as retention); the config-listed finished batch stays."""

    def short(sim: Simulator) -> dict[str, Any]:
        raw = slow(sim)
        raw["sources"][3]["retention"] = {"succeeded": "1s"}
        raw["sources"][3]["job_ids"] = ["batch-ok"]
        return raw

    h = make_harness(short, at=1000.0, jobs_api=True, start_polling=True)
    assert post(h, {"source": "translator", "job_id": "batch-partial"}).status_code == 201
    labels = {"provider": "azure_document_translation", "source": "translator"}
    wait_until(
        lambda: h.scrape().get(
            "asyncjob_state", **labels, job_id="batch-partial", state="succeeded"
        ),
        what="the registered batch, finished",
    )
    m = wait_until(
        lambda: (
            (m := h.scrape()).get("asyncjob_jobs_dropped_total", **labels, reason="retention") and m
        ),
        what="its retention to end",
    )
    assert m.series("asyncjob_up", job_id="batch-partial") == []
    assert m.get("asyncjob_state", **labels, job_id="batch-ok", state="succeeded") == 1
    assert m.get("asyncjob_jobs_finished_total", **labels, state="succeeded") == 2
    assert "batch-partial" not in {
        j["job_id"] for j in requests.get(jobs_url(h), timeout=5).json()["jobs"]
    }


def test_a_registered_job_the_api_forgot_expires(make_harness: MakeHarness) -> None:
    """Three 404s in a row and it is dropped (expired); then it is polled no more."""
    h = make_harness(demo_raw_config, jobs_api=True, start_polling=True)
    assert post(h, {"source": "translator", "job_id": "long-gone"}).status_code == 201
    labels = {"provider": "azure_document_translation", "source": "translator"}
    wait_until(
        lambda: h.scrape().get("asyncjob_jobs_dropped_total", **labels, reason="expired") == 1,
        what="the job to expire",
    )
    polls = len(h.sim.seen("long-gone"))
    assert polls == 3
    healthy = len(h.sim.seen("batch-partial"))
    wait_until(lambda: len(h.sim.seen("batch-partial")) >= healthy + 5, what="five intervals")
    assert len(h.sim.seen("long-gone")) == polls
