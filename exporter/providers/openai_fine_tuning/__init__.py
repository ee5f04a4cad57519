"""OpenAI and Azure OpenAI fine-tuning jobs: the provider `openai_fine_tuning`.

`api.py` asks for a job's status (and, while it runs, its newest events; and lists jobs) and
reads the answers, with the batch provider's source and auth model; `simulator.py` is its part
of the simulator, written from the vendor's documents and SDK models and not from `api.py`, so
that it is an independent oracle; `fixtures/` holds real answers.
"""

from exporter.providers.openai_fine_tuning.api import PROVIDER

__all__ = ["PROVIDER"]
