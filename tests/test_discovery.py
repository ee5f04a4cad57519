"""Discovery over real HTTP against the simulator: paging, projects, cost, failures, restarts."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from conftest import Harness, demo_raw_config, wait_until

from exporter.app import Exporter
from exporter.config import ConfigError, parse_config
from exporter.simulator import DEMO_KEY, LISTING, Fault, SimJob, Simulator, demo_config
from exporter.storage import Storage

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from exporter.simulator import Seen

TRANSLATOR, TRAINING, SD = 3, 0, 4  # the demo config's source indexes


def batches(n: int, *, running: int = 0, prefix: str = "b") -> tuple[SimJob, ...]:
    """n translation batches created a minute apart, the newest 10 minutes before the simulator
    started: the first `running` are still running at t=60 (the i-th ends at t=70+10*i), the
    others finished (one in five failed)."""
    return tuple(
        SimJob(f"{prefix}-{i}", "azure_document_translation", start_delay=0, units=2, created_at=-600 - 60 * i,
               duration=(70 + 10 * i) + (600 + 60 * i) if i < running else 5,  # end - creation
               outcome="failed" if i % 5 == 4 else "succeeded")
        for i in range(n)
    )  # fmt: skip


def discovering(index: int, *, interval: str = "200ms", **keys: Any) -> Callable[..., Any]:
    """The demo config where source `index` discovers its jobs instead of listing them."""

    def config_for(sim: Simulator) -> dict[str, Any]:
        raw = demo_raw_config(sim)
        source = raw["sources"][index]
        source.pop("job_ids", None)
        source.update({"discovery": {"interval": interval}, **keys})
        return raw

    return config_for


def query(seen: Seen) -> dict[str, str]:
    return {key: values[-1] for key, values in parse_qs(urlsplit(seen.path).query).items()}


def lists(sim: Simulator, path: str) -> list[Seen]:
    return [r for r in list(sim.requests) if urlsplit(r.path).path == path]


# -- paging and parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api_version", "path", "skip"),
    [
        ("2024-05-01", "/translator/document/batches", "skip"),
        ("v1.1", "/translator/text/batch/v1.1/batches", "$skip"),
    ],
)
def test_translator_listing_follows_every_page_in_both_link_spellings(
    make_harness: Callable[..., Harness], api_version: str, path: str, skip: str
) -> None:
    """25 batches, 10 a page: three pages, linked by `nextLink` (2024-05-01) or `@nextLink`
    (v1.x). Every batch is tracked from the listing alone, with its state."""
    jobs = batches(25)
    h = make_harness(discovering(TRANSLATOR, api_version=api_version), jobs=jobs, max_page_size=10)
    h.exporter.poll_once()
    pages = lists(h.sim, path)
    assert [query(p).get(skip) for p in pages] == [None, "10", "20"]
    assert query(pages[0])["createdDateTimeUtcStart"].endswith("Z")  # the lookback, in UTC
    records = {r.job_id: r for r in h.exporter.store.jobs_of("translator")}
    assert set(records) == {job.job_id for job in jobs}
    assert {r.origin for r in records.values()} == {"discovery"}
    assert records["b-4"].snapshot is not None
    assert records["b-4"].snapshot.state.value == "failed"
    assert records["b-3"].snapshot is not None
    assert records["b-3"].snapshot.state.value == "succeeded"
    assert not any(h.sim.seen(job.job_id) for job in jobs)  # the listing was their poll
    m = h.scrape()
    assert m.get("asyncjob_jobs_discovered_total", provider="azure_document_translation",
                 source="translator") == 25  # fmt: skip


def test_the_simulator_writes_each_link_spelling() -> None:
    """What the test above relies on, seen on the wire: the body's own link key."""
    with Simulator(jobs=batches(3), max_page_size=2) as sim:
        headers = {"Ocp-Apim-Subscription-Key": DEMO_KEY}
        new = requests.get(f"{sim.url}/translator/document/batches", headers=headers, timeout=5)
        old = requests.get(f"{sim.url}/translator/text/batch/v1.1/batches", headers=headers,
                           timeout=5)  # fmt: skip
    assert new.json()["nextLink"].startswith(sim.url)
    assert "nextLink" not in old.json()
    assert "$skip=2" in old.json()["@nextLink"]
    assert [b["id"] for b in old.json()["value"]] == ["b-2", "b-1"]  # oldest first, 2 a page
    assert [b["id"] for b in new.json()["value"]] == ["b-2", "b-1"]  # "id", as the live service


def test_training_discovery_lists_every_recent_project_and_keeps_each_jobs_project(
    make_harness: Callable[..., Harness],
) -> None:
    """No `project`: the resource's projects are listed, those idle for longer than the lookback
    are skipped, a project's jobs come over several pages, and each job keeps its project: on
    `asyncjob_info`, and in the path of its own poll when it drops off the listing."""
    jobs = (
        *(SimJob(f"loan-{i}", "azure_language_training", duration=600, start_delay=0, created_at=-i)
          for i in range(6)),
        SimJob("contract-1", "azure_language_training", duration=5, start_delay=0, project="Contracts"),
        SimJob("ancient", "azure_language_training", duration=5, start_delay=0, project="Archive",
               created_at=-3 * 86400),
    )  # fmt: skip
    h = make_harness(discovering(TRAINING, project=None), jobs=jobs, max_page_size=4)
    h.exporter.poll_once()
    root = "/language/authoring/analyze-text/projects"
    assert len(lists(h.sim, root)) == 1
    loan = lists(h.sim, f"{root}/LoanAgreements/train/jobs")
    assert [query(p).get("skip") for p in loan] == [None, "4"]  # 6 jobs, 4 a page
    assert len(lists(h.sim, f"{root}/Contracts/train/jobs")) == 1
    assert not lists(h.sim, f"{root}/Archive/train/jobs")  # last trained 3 days ago
    records = {r.job_id: r for r in h.exporter.store.jobs_of("language-training")}
    assert set(records) == {f"loan-{i}" for i in range(6)} | {"contract-1"}
    assert records["contract-1"].project == "Contracts"
    (info,) = h.scrape().series("asyncjob_info", job_id="contract-1")
    assert info["project"] == "Contracts"
    assert not any(h.sim.seen(job.job_id) for job in jobs)


def test_a_job_that_drops_off_the_listing_is_fetched_alone_once_at_its_project(
    make_harness: Callable[..., Harness],
) -> None:
    """A job the listing no longer names (deleted upstream, say) while unfinished is polled
    alone once, at its own project's path; the listing's jobs are not."""
    jobs = (SimJob("stays", "azure_language_training", duration=600, start_delay=0, project="Contracts"),
            SimJob("goes", "azure_language_training", duration=600, start_delay=0, project="Contracts"))  # fmt: skip
    h = make_harness(discovering(TRAINING, project=None), jobs=jobs, start_polling=True)
    wait_until(lambda: len(h.exporter.store.jobs_of("language-training")) == 2, what="discovery")
    h.sim.remove_jobs(["goes"])
    wait_until(lambda: h.sim.seen("goes"), what="the lone poll of the job that dropped off")
    (lone,) = h.sim.seen("goes")[:1]
    assert urlsplit(lone.path).path.endswith("/projects/Contracts/train/jobs/goes")
    rounds = len(lists(h.sim, "/language/authoring/analyze-text/projects"))
    wait_until(
        lambda: len(lists(h.sim, "/language/authoring/analyze-text/projects")) >= rounds + 3,
        what="three more listings",
    )
    assert not h.sim.seen("stays")  # listed every time: never polled alone


# -- arrival and cost ---------------------------------------------------------------------------


def test_a_new_upstream_job_is_tracked_by_the_next_listing(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(discovering(TRANSLATOR), jobs=batches(3), start_polling=True)
    wait_until(lambda: len(h.exporter.store.jobs_of("translator")) == 3, what="discovery")
    h.sim.add_jobs(
        [SimJob("fresh", "azure_document_translation", duration=600, start_delay=0, created_at=60)]
    )
    added_after = len(h.sim.requests)
    wait_until(lambda: h.exporter.store.get("translator", "fresh") is not None, what="fresh")
    later = [r for r in list(h.sim.requests)[added_after:] if "statuses=" in r.path]
    # Found by the first listing that began after it appeared (one already under way may miss
    # it): at most two listings.
    assert len(later) <= 2
    record = h.exporter.store.get("translator", "fresh")
    assert record is not None
    assert record.origin == "discovery"


@pytest.mark.parametrize("provider", ["translator", "training"])
def test_steady_state_costs_at_most_a_twentieth_of_a_request_per_job_per_interval(
    make_harness: Callable[..., Harness], provider: str
) -> None:
    """About 500 jobs, most finished, 20 running; some of the running ones finish during the
    test. Counted at the simulator: every request after the first listing, over the listings
    that follow, per tracked job and listing (the requests to this source's API: the other demo
    sources poll their own jobs meanwhile). Per-job polling would cost 1.0."""
    if provider == "translator":
        jobs = batches(500, running=20)
        config, first_page = discovering(TRANSLATOR), re.compile(r"statuses=(?!.*skip)")
        api = "/translator/"
    else:
        jobs = tuple(
            SimJob(f"t-{i}", "azure_language_training", start_delay=0, created_at=-i,
                   duration=10.0 * (i + 1) + 60 if i < 20 else 5, project=f"p{i % 5}")
            for i in range(500)
        )  # fmt: skip
        config, first_page = discovering(TRAINING, project=None), re.compile(r"/projects\?")
        api = "/language/authoring/"
    h = make_harness(config, jobs=jobs, start_polling=True)
    wait_until(lambda: len(h.exporter.store.jobs()) >= 500, what="the first listing", timeout=30)

    def rounds() -> int:
        return sum(1 for r in list(h.sim.requests) if first_page.search(r.path))

    def asked() -> int:
        return sum(1 for r in list(h.sim.requests) if r.path.startswith(api))

    wait_until(lambda: rounds() >= 2, what="a second listing")
    start, start_rounds = asked(), rounds()
    h.clock.now = 100.0  # four running jobs end: each dropped off (or listed finished)
    wait_until(lambda: rounds() >= start_rounds + 10, what="ten more listings", timeout=30)
    end, end_rounds = asked(), rounds()
    tracked = len(h.exporter.store.jobs())
    per_job = (end - start) / (end_rounds - start_rounds) / tracked
    assert per_job <= 0.05, f"{end - start} requests over {end_rounds - start_rounds} listings"
    ended = [job.job_id for job in jobs[:4]]
    if provider == "translator":  # off the active listing when they ended: fetched once each
        assert [len(h.sim.seen(job_id)) for job_id in ended] == [1, 1, 1, 1]
    else:  # the listing names every job, finished ones too: never fetched alone
        assert not any(h.sim.seen(job_id) for job_id in ended)
    finished = [r for r in h.exporter.store.jobs() if r.job_id in ended]
    assert all(r.finished for r in finished)
    assert not any(h.sim.seen(job.job_id) for job in jobs[20:])  # terminal: cost nothing


# -- failures -----------------------------------------------------------------------------------


def test_a_failing_listing_marks_the_jobs_it_polls_down_and_keeps_their_values(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(discovering(TRANSLATOR), jobs=batches(4, running=2), start_polling=True)
    wait_until(lambda: len(h.exporter.store.jobs_of("translator")) == 4, what="discovery")
    h.sim.set_fault(LISTING, Fault(status=401))
    job = {"provider": "azure_document_translation", "source": "translator", "job_id": "b-0"}
    wait_until(lambda: h.scrape().get("asyncjob_up", **job) == 0, what="b-0 down")
    m = h.scrape()
    assert m.get("asyncjob_last_poll_error_info", **job, reason="auth") == 1
    assert m.get("asyncjob_state", **job, state="running") == 1  # the last good values
    finished = {**job, "job_id": "b-3"}
    assert m.get("asyncjob_up", **finished) == 1  # finished: the listing no longer polls it
    errors = m.get("asyncjob_request_errors_total", provider="azure_document_translation",
                   source="translator", reason="auth")  # fmt: skip
    assert errors is not None
    assert errors >= 1
    h.sim.clear_fault(LISTING)
    wait_until(lambda: h.scrape().get("asyncjob_up", **job) == 1, what="b-0 back up")


def test_a_bad_page_entry_is_polled_alone_and_a_foreign_next_link_stays_on_our_host(
    make_harness: Callable[..., Harness],
) -> None:
    """Tolerant reading: an entry whose status cannot be parsed is still tracked (its own poll
    says what is wrong), and a nextLink naming another host is followed on the source's own
    host: the key is never sent elsewhere."""
    h = make_harness(discovering(TRANSLATOR), jobs=batches(2))
    body = (b'{"value": [{"id": "odd-1", "status": "Running", "summary": "not an object"}],'
            b' "nextLink": "https://elsewhere.example/translator/document/batches?skip=0"}')  # fmt: skip
    h.sim.set_fault(LISTING, Fault(body=body, times=1))
    h.exporter.poll_once()
    record = h.exporter.store.get("translator", "odd-1")
    assert record is not None
    assert record.origin == "discovery"
    assert h.sim.seen("odd-1")  # polled alone (the simulator does not know it: 404)
    followed = lists(h.sim, "/translator/document/batches")
    assert len(followed) == 2  # the foreign link, asked of the simulator itself
    assert query(followed[1]) == {"skip": "0"}
    assert h.exporter.store.get("translator", "b-0") is not None


def test_discovery_on_an_api_without_a_list_endpoint_is_a_config_error() -> None:
    raw = demo_config("http://127.0.0.1:1")
    raw["sources"][1]["discovery"] = {}
    raw["sources"][2]["discovery"] = {"interval": "1m"}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, env={})
    where = [where for where, _ in caught.value.problems]
    assert where == ["sources[1].discovery", "sources[2].discovery"]
    assert all("jobs API" in what for _, what in caught.value.problems)


def test_training_without_project_needs_discovery_or_no_job_ids() -> None:
    raw = demo_config("http://127.0.0.1:1")
    raw["sources"][0].pop("project")
    with pytest.raises(ConfigError, match="project"):
        parse_config(raw, env={})
    raw["sources"][0].update(job_ids=[], discovery={"lookback": "2d"})
    source = parse_config(raw, env={}).sources[0]
    assert source.discovery is not None
    assert source.discovery.lookback == 2 * 86400


# -- Stable Diffusion: IDs only -----------------------------------------------------------------


SD_JOBS = (
    SimJob("sd-done-1", "stable_diffusion_finetune", duration=5, start_delay=0, units=2),
    SimJob("sd-done-2", "stable_diffusion_finetune", duration=5, start_delay=0, units=2, outcome="failed",
           stop_at=0.5),
    SimJob("sd-busy", "stable_diffusion_finetune", duration=600, start_delay=0, units=6),
)  # fmt: skip


def run_on_storage(sim: Simulator, raw: dict[str, Any], directory: Path) -> Exporter:
    """An exporter on `directory`'s storage, until it polled sd-busy twice more and listed
    twice more; then stopped."""
    storage = Storage.open(directory)
    exporter = Exporter(parse_config(raw, env={}), storage=storage)
    busy, listings = len(sim.seen("sd-busy")), len(lists(sim, "/api/v3/finetune_list"))
    exporter.start()
    try:
        wait_until(lambda: len(sim.seen("sd-busy")) >= busy + 2, what="sd-busy polled")
        wait_until(lambda: len(lists(sim, "/api/v3/finetune_list")) >= listings + 2,
                   what="two more listings")  # fmt: skip
    finally:
        exporter.stop()
        storage.close()
    return exporter


def test_stable_diffusion_ids_are_polled_once_and_finished_ones_never_again_after_a_restart(
    tmp_path: Path,
) -> None:
    """finetune_list names IDs only: each new one is polled; a finished one never again, by
    this process or the next one on the same storage."""
    with Simulator(jobs=SD_JOBS, clock=lambda: 60.0) as sim:
        raw = demo_raw_config(sim)
        raw["sources"] = [{**raw["sources"][SD], "job_ids": [], "discovery": {"interval": "200ms"}}]
        for _ in range(2):  # a first run, then a restart on the same storage
            exporter = run_on_storage(sim, raw, tmp_path / "data")
            assert len(sim.seen("sd-done-1")) == 1
            assert len(sim.seen("sd-done-2")) == 1
        records = {r.job_id: r.origin for r in exporter.store.jobs()}
        assert records == dict.fromkeys(("sd-done-1", "sd-done-2", "sd-busy"), "discovery")
