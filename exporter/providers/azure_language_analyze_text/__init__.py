"""Azure Language analyze-text (and analyze-conversations) jobs: `azure_language_analyze_text`.

`api.py` asks for a job's status (and lists jobs, where the API can) and reads the answers;
`fixtures/` holds real answers.
"""

from exporter.providers.azure_language_analyze_text.api import PROVIDER

__all__ = ["PROVIDER"]
