"""What every provider is made of (exporter/providers/base.py)."""

from __future__ import annotations

from pydantic import SecretStr

from exporter.providers.base import AzureKeyAuth


def test_secret_repr_is_masked() -> None:
    auth = AzureKeyAuth(subscription_key=SecretStr("super-secret-value"))
    assert "super-secret-value" not in repr(auth)
    assert "super-secret-value" not in str(auth)
