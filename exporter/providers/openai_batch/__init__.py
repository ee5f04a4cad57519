"""OpenAI and Azure OpenAI batches (see `api.py`)."""

from exporter.providers.openai_batch.api import PROVIDER

__all__ = ["PROVIDER"]
