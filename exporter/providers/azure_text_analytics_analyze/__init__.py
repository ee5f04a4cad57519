"""Legacy Text Analytics v3.x analyze jobs: the provider `azure_text_analytics_analyze`.

`api.py` asks for a job's status (and lists jobs, where the API can) and reads the answers;
`fixtures/` holds real answers.
"""

from exporter.providers.azure_text_analytics_analyze.api import PROVIDER

__all__ = ["PROVIDER"]
