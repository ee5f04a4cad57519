"""asyncjob-exporter: Prometheus metrics for long-running AI jobs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("asyncjob-exporter")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
