"""OpenAI and Azure OpenAI fine-tuning jobs (see `api.py`)."""

from exporter.providers.openai_fine_tuning.api import PROVIDER

__all__ = ["PROVIDER"]
