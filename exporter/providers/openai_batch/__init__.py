"""OpenAI and Azure OpenAI batches: the provider `openai_batch`.

`api.py` asks for a batch's status (and lists batches) and reads the answers, with the source
and auth model the fine-tuning provider shares; `simulator.py` is its part of the simulator,
written from the vendor's documents and SDK models and not from `api.py`, so that it is an
independent oracle; `fixtures/` holds real answers.
"""

from exporter.providers.openai_batch.api import PROVIDER

__all__ = ["PROVIDER"]
