"""Sharding: the one predicate, the flags, and forwarding between real exporters on loopback."""

from __future__ import annotations

from datetime import UTC, datetime

import bcrypt
import pytest
import requests
from conftest import demo_raw_config
from test_e2e_sharding import consecutive_ports

from exporter.api import Api
from exporter.app import Exporter
from exporter.config import parse_config
from exporter.model import JobSnapshot, ListOutcome, State
from exporter.server import HttpServer, make_app
from exporter.sharding import Shard, ordinal, stable_hash
from exporter.simulator import ManualClock, Simulator, demo_config
from exporter.store import SourceJobs, Store
from exporter.webconfig import WebConfig, WebConfigFile

T0 = datetime(2026, 3, 2, tzinfo=UTC)


def test_the_hash_is_sha256_of_source_and_job_id_for_ever() -> None:
    """Pinned: `printf 'translator\\0b-1' | sha256sum` starts f50ebff61d47e9cf. A change here
    would move jobs between shards on upgrade."""
    assert stable_hash("translator", "b-1") == 0xF50EBFF61D47E9CF
    assert stable_hash("translator", "b-1") != stable_hash("translato", "rb-1")


def test_three_shards_split_jobs_evenly_and_each_job_has_one_owner() -> None:
    shards = [Shard(i, 3) for i in range(3)]
    ids = [f"job-{n}" for n in range(3000)]
    owners = [[s.index for s in shards if s.owns("translator", job_id)] for job_id in ids]
    assert all(len(found) == 1 for found in owners)
    counts = [sum(1 for found in owners if found == [i]) for i in range(3)]
    assert all(900 < n < 1100 for n in counts), counts
    assert all(Shard(0, 1).owns("translator", job_id) for job_id in ids)


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [("asyncjob-exporter-2", 2), ("asyncjob-exporter-0.asyncjob-exporter.ns.svc", 0),
     ("web-12", 12)],
)  # fmt: skip
def test_shard_auto_reads_the_statefulset_ordinal(hostname: str, expected: int) -> None:
    assert ordinal(hostname) == expected


def test_shard_auto_says_what_to_do_without_an_ordinal() -> None:
    with pytest.raises(ValueError, match="give --shard N"):
        ordinal("laptop")
    with pytest.raises(ValueError, match=r"not within 0\.\.2"):
        Shard(3, 3)


def test_config_listed_and_listed_jobs_are_kept_only_by_their_shard() -> None:
    """The same config on three stores: each keeps its share, the union is every job, and
    nothing owned elsewhere is counted as refused."""
    config = parse_config(demo_raw_config_for_ids([f"b-{n}" for n in range(30)]), env={})
    running = JobSnapshot(state=State.RUNNING, vendor_status="Running", progress={"overall": 0.5})
    kept: list[set[str]] = []
    for index in range(3):
        store = Store(owns=Shard(index, 3).owns)
        source = config.sources[3]
        store.replace([SourceJobs(source.provider, source.name, tuple(source.job_ids), None,
                                    source.max_jobs, (3600.0, 3600.0), discovery=True)])  # fmt: skip
        listing = ListOutcome(source.name, T0, (), tuple(
            (f"new-{n}", None, running) for n in range(30)))  # fmt: skip
        store.update(listing)
        kept.append({r.job_id for r in store.jobs()})
        assert all(Shard(index, 3).owns("translator", job_id) for job_id in kept[-1])
        assert sum(s.rejected for s in store.source_stats()) == 0
    assert set().union(*kept) == {f"b-{n}" for n in range(30)} | {f"new-{n}" for n in range(30)}
    assert sum(len(k) for k in kept) == 60


def demo_raw_config_for_ids(job_ids: list[str]) -> dict[str, object]:
    raw = demo_config("http://127.0.0.1:1")
    raw["sources"][3]["job_ids"] = job_ids
    return raw


def test_forwarding_carries_basic_auth_and_the_webhook_token() -> None:
    """Two shards behind basic auth, in this process, on loopback: a registration sent to the
    wrong shard reaches its owner with the caller's credentials (and without them is refused
    where it arrived); a webhook call is forwarded with its token and counted by the owner."""
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    web = WebConfig(WebConfigFile(basic_auth_users={"prometheus": hashed}))
    base = consecutive_ports(2)
    with Simulator(clock=ManualClock(60.0)) as sim:
        raw = demo_raw_config(sim)
        raw["sources"][4]["webhook_token"] = "hook-token-0123"
        servers, exporters = [], []
        try:
            for index in range(2):
                shard = Shard(index, 2, f"http://127.0.0.1:{base // 10}{{shard}}")
                exporter = Exporter(parse_config(raw, env={}), shard=shard)
                app = make_app(exporter.exposition, "/metrics", exporter.not_ready,
                               exporter.store.jobs, web=web, api=Api(exporter, jobs=True))  # fmt: skip
                server = HttpServer(app, f"127.0.0.1:{base + index}")
                server.start()
                servers.append(server)
                exporters.append(exporter)
            job_id = next(
                f"x-{n}" for n in range(100) if Shard(0, 2).owner("language-analyze", f"x-{n}") == 1
            )
            url = f"http://127.0.0.1:{base}/api/v1/jobs"
            body = {"source": "language-analyze", "job_id": job_id}
            assert requests.post(url, json=body, timeout=10).status_code == 401
            answer = requests.post(url, json=body, auth=("prometheus", "pw"), timeout=10)
            assert (answer.status_code, answer.json()["job_id"]) == (201, job_id)
            assert exporters[1].store.get("language-analyze", job_id) is not None
            assert exporters[0].store.get("language-analyze", job_id) is None
            model = next(
                f"m-{n}" for n in range(100) if Shard(0, 2).owner("stable-diffusion", f"m-{n}") == 1
            )
            hook = f"http://127.0.0.1:{base}/api/v1/webhooks/stable-diffusion/stable-diffusion"
            called = requests.post(hook, json={"model_id": model}, timeout=10,
                                   headers={"X-Webhook-Token": "hook-token-0123"})  # fmt: skip
            assert (called.status_code, called.json()) == (200, {"result": "registered"})
            assert exporters[1].store.get("stable-diffusion", model) is not None
            wrong = requests.post(hook, json={"model_id": model}, timeout=10,
                                  headers={"X-Webhook-Token": "nope"})  # fmt: skip
            assert wrong.status_code == 401  # refused where it arrived: never forwarded
            # A forwarded path keeps its percent-encoding: decoded, "#" would cut the ID short
            # (and the rest would belong to this shard, which would answer 421).
            odd = next(
                f"z-{n}#q" for n in range(1000)
                if Shard(0, 2).owner("language-analyze", f"z-{n}#q") == 1
                and Shard(0, 2).owner("language-analyze", f"z-{n}") == 0
            )  # fmt: skip
            encoded = odd.replace("#", "%23")
            gone = requests.delete(f"{url}/language-analyze/{encoded}", auth=("prometheus", "pw"),
                                   timeout=10)  # fmt: skip
            assert (gone.status_code, gone.json()["error"]) == (
                404, f"no job {odd!r} is tracked for source 'language-analyze'"
            )  # fmt: skip
        finally:
            for server in servers:
                server.stop()
            for exporter in exporters:
                exporter.stop()
