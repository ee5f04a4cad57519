"""The provider registry: the one place that names every upstream API.

Adding a provider is one module (see `base.py` for what it holds) and one line here.
"""

from __future__ import annotations

from typing import Any

from exporter.providers import (
    anthropic_message_batch,
    azure_document_translation,
    azure_language_analyze_text,
    azure_language_training,
    azure_text_analytics_analyze,
    stable_diffusion_finetune,
)
from exporter.providers.base import ParseError, Provider, SourceBase, UpstreamRequest

PROVIDERS: dict[str, Provider[Any]] = {
    p.name: p
    for p in (
        azure_language_training.PROVIDER,
        azure_language_analyze_text.PROVIDER,
        azure_text_analytics_analyze.PROVIDER,
        azure_document_translation.PROVIDER,
        stable_diffusion_finetune.PROVIDER,
        anthropic_message_batch.PROVIDER,
    )
}

__all__ = ["PROVIDERS", "ParseError", "Provider", "SourceBase", "UpstreamRequest"]
