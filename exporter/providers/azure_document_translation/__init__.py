"""Azure AI Translator document translation batches: the provider `azure_document_translation`.

`api.py` asks for a job's status (and lists jobs, where the API can) and reads the answers;
`simulator.py` is its part of the simulator, written from the vendor's documents and not from
`api.py`, so that it is an independent oracle; `fixtures/` holds real answers.
"""

from exporter.providers.azure_document_translation.api import PROVIDER

__all__ = ["PROVIDER"]
