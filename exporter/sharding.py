"""Which jobs are this exporter's: one predicate, as kube-state-metrics shards its objects.

With `--total-shards M` and `--shard N`, a job belongs to shard `stable_hash(source, job_id)
mod M`. Every shard reads the same config and lists the same APIs (discovery), but keeps and
polls only its own jobs, config-listed ones too; so no series is exported twice, and the shards'
union is every job. The hash is SHA-256 of the source and job ID: the same in every process,
Python version and release (Python's own `hash()` is salted per process).

A request for a job another shard owns (the jobs API, a webhook) is forwarded to that shard
(`--shard.peer-url`, a template with `{shard}`), and its answer is passed back.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_ORDINAL = re.compile(r"-(\d+)$")


def stable_hash(source: str, job_id: str) -> int:
    """A 64-bit hash of a job's identity that never changes between processes or versions."""
    digest = hashlib.sha256(f"{source}\0{job_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def ordinal(hostname: str) -> int:
    """The number at the end of a StatefulSet pod's name (`asyncjob-exporter-2` gives 2)."""
    match = _ORDINAL.search(hostname.split(".", maxsplit=1)[0])
    if match is None:
        raise ValueError(
            f"--shard auto: hostname {hostname!r} does not end in -N (a StatefulSet pod's "
            "ordinal); give --shard N"
        )
    return int(match[1])


@dataclass(frozen=True, slots=True)
class Shard:
    """This exporter's share of the jobs: shard `index` of `total`."""

    index: int = 0
    total: int = 1
    peer_url: str | None = None  # e.g. "http://asyncjob-exporter-{shard}.asyncjob-exporter:9879"

    def __post_init__(self) -> None:
        if self.total < 1 or not 0 <= self.index < self.total:
            raise ValueError(f"--shard {self.index} is not within 0..{self.total - 1}")

    def owner(self, source: str, job_id: str) -> int:
        return stable_hash(source, job_id) % self.total

    def owns(self, source: str, job_id: str) -> bool:
        """Whether the job is this shard's: the one predicate every route of a job goes by."""
        return self.total == 1 or self.owner(source, job_id) == self.index

    def peer(self, shard: int) -> str | None:
        """The base URL of another shard, or None without --shard.peer-url."""
        return None if self.peer_url is None else self.peer_url.format(shard=shard).rstrip("/")
