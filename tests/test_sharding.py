"""Sharding: the one predicate, the flags, and forwarding between real exporters on loopback."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from exporter.config import parse_config
from exporter.model import JobSnapshot, ListOutcome, State
from exporter.sharding import Shard, ordinal, stable_hash
from exporter.simulator import demo_config
from exporter.store import SourceJobs, Store

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
        store.configure([SourceJobs(source.provider, source.name, tuple(source.job_ids), None,
                                    source.max_jobs, (3600.0, 3600.0), discovery=True)])  # fmt: skip
        listing = ListOutcome(source.name, T0, (), tuple(
            (f"new-{n}", None, running) for n in range(30)))  # fmt: skip
        store.apply_listing(listing)
        kept.append({r.job_id for r in store.jobs()})
        assert all(Shard(index, 3).owns("translator", job_id) for job_id in kept[-1])
        assert sum(s.rejected for s in store.source_stats()) == 0
    assert set().union(*kept) == {f"b-{n}" for n in range(30)} | {f"new-{n}" for n in range(30)}
    assert sum(len(k) for k in kept) == 60


def demo_raw_config_for_ids(job_ids: list[str]) -> dict[str, object]:
    raw = demo_config("http://127.0.0.1:1")
    raw["sources"][3]["job_ids"] = job_ids
    return raw
