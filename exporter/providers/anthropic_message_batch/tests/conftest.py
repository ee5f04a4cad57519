"""The shared harness fixture of tests/conftest.py, for this provider's end-to-end tests."""

from conftest import make_harness

__all__ = ["make_harness"]
