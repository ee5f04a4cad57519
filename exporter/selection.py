"""Which `asyncjob_` metric families are exported: `--metric-allowlist` and `--metric-denylist`,
as kube-state-metrics has them.

Each flag is a comma-separated list of regular expressions over family names (blanks around an
entry are dropped; an empty list is no list); the two are mutually exclusive. With an allowlist
only the families some pattern matches are exported, with a denylist all but those. Unlike
kube-state-metrics, whose patterns match anywhere in a name, a pattern here matches a whole
name, as if written `^(...)$`: `asyncjob_state` keeps `asyncjob_state` and nothing longer.

A family answers to its name as the README's metric table writes it, which for a counter is
its samples' name: `asyncjob_requests_total`; and to client_python's name for it too,
`asyncjob_requests`. A histogram answers to its own name only (`asyncjob_job_duration_seconds`,
not its `_bucket` samples'). Only `asyncjob_` families are ever left out: client_python's
`process_` and `python_` ones are always exported.

A pattern that matches no family is refused, and named, so that a typo in an allowlist cannot
keep nothing, nor one in a denylist silently keep everything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

PREFIX = "asyncjob_"
ALLOW = "--metric-allowlist"
DENY = "--metric-denylist"


def names_of(name: str, kind: str) -> tuple[str, ...]:
    """The names a family of `kind` answers to, the README's first."""
    return (f"{name}_total", name) if kind == "counter" else (name,)


def parse_patterns(value: str, families: Iterable[tuple[str, str]]) -> tuple[re.Pattern[str], ...]:
    """One flag's patterns, each checked: a regular expression that matches a family of
    `families` ((name, type) pairs). ValueError names every one that does not."""
    patterns, problems, unmatched = [], [], False
    known = [names_of(name, kind) for name, kind in families]
    for text in (entry.strip() for entry in value.split(",")):
        if not text:
            continue
        try:
            pattern = re.compile(text)
        except re.error as exc:
            problems.append(f'"{text}" is not a regular expression: {exc}')
            continue
        if not any(pattern.fullmatch(name) for names in known for name in names):
            problems.append(f'"{text}" matches no metric family')
            unmatched = True
        patterns.append(pattern)
    if problems:
        message = "; ".join(problems)
        if unmatched:  # say what there is to match
            message += f" (families: {', '.join(names[0] for names in known)})"
        raise ValueError(message)
    return tuple(patterns)


@dataclass(frozen=True, slots=True)
class Selection:
    """The families to export. The default, no list, is every one."""

    patterns: tuple[re.Pattern[str], ...] = ()
    allow: bool = False  # True: keep what the patterns match; False: drop it

    @classmethod
    def of(
        cls, allowlist: Sequence[re.Pattern[str]] | None, denylist: Sequence[re.Pattern[str]] | None
    ) -> Selection:
        """From the two flags' patterns (None where a flag is not given)."""
        if allowlist and denylist:
            raise ValueError(f"{ALLOW} and {DENY} are mutually exclusive: give one of them")
        return cls(tuple(allowlist or denylist or ()), allow=bool(allowlist))

    def keeps(self, name: str, kind: str) -> bool:
        """Whether the family `name` of type `kind` (client_python's: "counter", "gauge",
        "histogram"...) is exported."""
        if not self.patterns or not name.startswith(PREFIX):
            return True
        names = names_of(name, kind)
        matched = any(pattern.fullmatch(n) for pattern in self.patterns for n in names)
        return matched == self.allow
