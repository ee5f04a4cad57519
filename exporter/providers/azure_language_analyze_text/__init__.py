"""Azure Language analyze-text (and analyze-conversations) jobs: `azure_language_analyze_text`.

`api.py` asks for a job's status (and lists jobs, where the API can) and reads the answers;
`simulator.py` is its part of the simulator, written from the vendor's documents and not from
`api.py`, so that it is an independent oracle; `fixtures/` holds real answers.
"""

from exporter.providers.azure_language_analyze_text.api import PROVIDER

__all__ = ["PROVIDER"]
