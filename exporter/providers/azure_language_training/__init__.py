"""Azure AI Language custom-model training jobs: the provider `azure_language_training`.

`api.py` asks for a job's status (and lists jobs, where the API can) and reads the answers;
`fixtures/` holds real answers.
"""

from exporter.providers.azure_language_training.api import PROVIDER

__all__ = ["PROVIDER"]
