"""The shared harness of tests/conftest.py (a simulator and an exporter over real HTTP), for
this folder's end-to-end tests, with the fixtures every test there runs under."""

from conftest import _quiet_logs, make_harness

__all__ = ["_quiet_logs", "make_harness"]
