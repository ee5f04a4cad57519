"""Validated value types shared by the config models: durations, names, job IDs, URLs, secrets.

A message about a bad value quotes it through the redactor: the value may be a key pasted into
the wrong field, and the config's secrets are registered before it is validated."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, SecretStr, WithJsonSchema

from exporter.logging import quoted

_DURATION_RE = re.compile(
    r"^(?:(?P<y>\d+)y)?(?:(?P<w>\d+)w)?(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?"
    r"(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?(?:(?P<ms>\d+)ms)?$"
)
_UNIT_SECONDS = {"y": 365 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(value: Any) -> float:
    """Parse a Prometheus-style duration (`500ms`, `30s`, `1h30m`) into positive seconds."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a duration such as 500ms, 30s, 5m or 1h, got {quoted(value)}")
    match = _DURATION_RE.match(value)
    if match is None:
        raise ValueError(
            f"invalid duration {quoted(value)}; use units ms, s, m, h, d, w, y (e.g. 30s)"
        )
    whole = sum(int(n) * _UNIT_SECONDS[u] for u, n in match.groupdict().items() if n and u != "ms")
    seconds = whole + int(match["ms"] or 0) / 1000
    if seconds <= 0:
        raise ValueError(f"duration {quoted(value)} must be greater than zero")
    return float(seconds)


def format_duration(seconds: float) -> str:
    """Render seconds back in the shortest Prometheus form (for HELP texts and logs)."""
    if seconds < 1 or seconds != int(seconds):
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    for unit in ("h", "m"):
        size = _UNIT_SECONDS[unit]
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(
            f"{quoted(value)} is not an http(s) URL with a host (e.g. https://x.example)"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"{quoted(value)} must not carry a query or fragment")
    return value.rstrip("/")


def read_secret_file(path: Any) -> SecretStr:
    """Read a secret from a file, dropping the trailing newline editors add."""
    if not isinstance(path, str) or not path:
        raise ValueError("expected the path of a file holding the secret")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {quoted(path)}: {exc.strerror or exc}") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise ValueError(f"secret file {quoted(path)} is empty")
    return SecretStr(secret)


FileSecret = Annotated[
    SecretStr,
    BeforeValidator(read_secret_file),
    WithJsonSchema({"type": "string", "description": "path of a file holding the secret"}),
]
"""Written in config as a path; holds the file's content. A reload reads the file again."""

DURATION_PATTERN = r"^([0-9]+(y|w|d|h|m|s|ms))+$"
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "a Prometheus duration: 500ms, 30s, 5m, 1h30m (units ms s m h d w y)",
        }
    ),
]
"""Seconds, written in config as a Prometheus duration string."""

_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def is_path_safe_id(value: str) -> bool:
    """Letters, digits and -_.: only (and not "." or ".."), so no ID can change a request path."""
    return bool(_ID_RE.match(value)) and set(value) != {"."}


def _check_id(value: str) -> str:
    if not is_path_safe_id(value):
        raise ValueError(f"{quoted(value)} is not a valid ID: use 1-128 letters, digits or -_.:")
    return value


def _check_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(f"{quoted(value)} is not a valid name: use 1-64 letters, digits, - or _")
    return value


SourceName = Annotated[str, AfterValidator(_check_name)]
PathSafeId = Annotated[str, AfterValidator(_check_id)]
HttpUrl = Annotated[str, AfterValidator(_check_url)]
