"""The provider registry: the one place that names every upstream API.

A provider is one folder, `exporter/providers/<name>/`, named as the provider, whose package
exports its `PROVIDER` (see `base.py` for what that holds); adding one is its folder and one line
in `FOLDERS`. The order of `FOLDERS` is the order providers are shown in.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from exporter.providers.base import ParseError, Provider, SourceBase, UpstreamRequest

FOLDERS = (
    "azure_language_training",
    "azure_language_analyze_text",
    "azure_text_analytics_analyze",
    "azure_document_translation",
    "stable_diffusion_finetune",
    "openai_batch",
    "openai_fine_tuning",
    "anthropic_message_batch",
)


def package(name: str) -> str:
    """The import path of provider `name`'s folder."""
    return f"{__name__}.{name}"


def _provider(name: str) -> Provider[Any]:
    provider = import_module(package(name)).PROVIDER
    if not isinstance(provider, Provider) or provider.name != name:
        raise TypeError(f"{package(name)}.PROVIDER is not the provider {name!r}")
    return provider


PROVIDERS: dict[str, Provider[Any]] = {name: _provider(name) for name in FOLDERS}

__all__ = [
    "FOLDERS",
    "PROVIDERS",
    "ParseError",
    "Provider",
    "SourceBase",
    "UpstreamRequest",
    "package",
]
