"""Anthropic Message Batches: the provider `anthropic_message_batch`.

`api.py` asks for a batch's status, lists batches and reads the answers; `fixtures/` holds
published answers; `tests/` its own tests.
"""

from exporter.providers.anthropic_message_batch.api import PROVIDER

__all__ = ["PROVIDER"]
