"""Microsoft Entra ID tokens for the Azure providers (`auth: {azure_ad: {...}}`).

`azure-identity` is an optional extra (`pip install 'asyncjob-exporter[azure]'`): its
`DefaultAzureCredential` tries managed identity, workload identity, environment variables and
the Azure CLI. Tokens are cached per client ID and fetched again REFRESH_MARGIN before they
expire. `EntraToken` is what a request carries: the HTTP layer asks it for headers on each
attempt, so getting a token is retried and counted like the request itself, and building a
request does no I/O. A cached token is taken on the poller's loop; getting one runs on a daemon
thread, so a token service that hangs holds up neither other sources nor the exit.
`credential_factory` is the seam: tests put a fake credential there.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

from exporter.upstream import AuthUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

SCOPE = "https://cognitiveservices.azure.com/.default"
REFRESH_MARGIN = 300.0  # seconds before expiry when a token is replaced


class TokenCredential(Protocol):
    """What azure-identity's credentials offer: get_token(scope) -> (token, expires_on)."""

    def get_token(self, *scopes: str) -> Any: ...


def _default_credential(client_id: str | None) -> TokenCredential:
    from azure.identity import DefaultAzureCredential  # noqa: PLC0415 - optional extra

    credential: TokenCredential = DefaultAzureCredential(
        managed_identity_client_id=client_id, workload_identity_client_id=client_id
    )
    return credential


credential_factory: Callable[[str | None], TokenCredential] | None = None
"""Replaces DefaultAzureCredential when set (tests)."""


def available() -> bool:
    """Whether azure_ad can work here: azure-identity installed (or a factory injected)."""
    if credential_factory is not None:
        return True
    try:
        return importlib.util.find_spec("azure.identity") is not None
    except ModuleNotFoundError:  # not even the "azure" namespace package is there
        return False


class _Tokens:
    def __init__(self, credential: TokenCredential) -> None:
        self._credential = credential
        self._lock = threading.Lock()
        self._current = ("", 0.0)  # the token and when it expires, replaced as one

    def at_hand(self) -> str | None:
        """The cached token if it is not due for refresh, without waiting for the lock."""
        token, expires_on = self._current
        return token if time.time() < expires_on - REFRESH_MARGIN else None

    def bearer(self) -> str:
        with self._lock:
            token = self.at_hand()
            if token is None:
                try:
                    access = self._credential.get_token(SCOPE)
                except Exception as exc:  # azure-identity raises many kinds; all mean "no token"
                    raise AuthUnavailable(f"no Entra ID token ({type(exc).__name__})") from None
                token = access.token
                self._current = (token, float(access.expires_on))
            return token


_cache: dict[str | None, _Tokens] = {}
_cache_lock = threading.Lock()


def _tokens(client_id: str | None) -> _Tokens:
    with _cache_lock:
        tokens = _cache.get(client_id)
        if tokens is None:
            factory = credential_factory or _default_credential
            tokens = _cache[client_id] = _Tokens(factory(client_id))
    return tokens


def bearer_token(client_id: str | None) -> str:
    """A valid token for Cognitive Services, from cache or fresh. Raises AuthUnavailable."""
    return _tokens(client_id).bearer()


class EntraToken:
    """The `Authenticator` of a request sent with an Entra ID token (see exporter.upstream)."""

    __slots__ = ("client_id",)

    def __init__(self, client_id: str | None) -> None:
        self.client_id = client_id

    def headers(self) -> Mapping[str, str]:
        return {"Authorization": f"Bearer {bearer_token(self.client_id)}"}

    def at_hand(self) -> Mapping[str, str] | None:
        with _cache_lock:
            tokens = _cache.get(self.client_id)
        token = None if tokens is None else tokens.at_hand()
        return None if token is None else {"Authorization": f"Bearer {token}"}

    def __repr__(self) -> str:
        return f"EntraToken(client_id={self.client_id!r})"


def reset() -> None:
    """Forget cached credentials and tokens (tests; a reload keeps them)."""
    with _cache_lock:
        _cache.clear()
