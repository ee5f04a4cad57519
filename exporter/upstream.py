"""What a request upstream is: the value a provider builds and the HTTP layer sends.

`UpstreamRequest` is plain data, so building one does no I/O. What does cost I/O to learn (an
Entra ID token) rides along as an `Authenticator`, which the HTTP layer asks for headers on each
attempt; it raises `AuthUnavailable` when it has none. These live here, below both the providers
(which build requests) and `exporter.http` (which sends them), so that neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping


class AuthUnavailable(Exception):  # noqa: N818 - reads as what happened
    """An authenticator could not produce credentials (no token); the message is safe to log."""


class Authenticator(Protocol):
    """Headers that cost I/O to obtain (an Entra ID bearer token). Raises AuthUnavailable."""

    def headers(self) -> Mapping[str, str]: ...

    def at_hand(self) -> Mapping[str, str] | None:
        """The headers if they need no I/O now (a cached token still valid), else None."""


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One HTTP request to an upstream API. Headers and body may hold secrets: not in repr."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    json: Mapping[str, Any] | None = field(default=None, repr=False)
    auth: Authenticator | None = None  # headers obtained per attempt, with I/O (a token)
