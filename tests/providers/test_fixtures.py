"""Every provider's fixtures: where tests/fixtures/README.md says, and the vendor examples among
them exact copies of ../shared/reference/api-examples/, none missing."""

from __future__ import annotations

import filecmp
import os
import re

import pytest
from conftest import FIXTURES, REPO, SHARED_REFERENCE

from exporter.providers import PROVIDERS

TABLE = re.compile(r"^\| `([a-z0-9_]+)` \| `([^`]+)` \| (.*) \|$", re.MULTILINE)


def readme_rows() -> dict[str, tuple[str, list[str]]]:
    """provider: (its fixtures folder, the shared example folders it copies), as the README
    table says."""
    text = (REPO / "tests" / "fixtures" / "README.md").read_text(encoding="utf-8")
    return {
        provider: (folder, re.findall(r"`([^`]+)/`", shared))
        for provider, folder, shared in TABLE.findall(text)
    }


def test_the_readme_names_every_providers_fixtures_folder() -> None:
    rows = readme_rows()
    assert set(rows) == set(PROVIDERS)
    for provider, (folder, _) in rows.items():
        assert REPO / folder.rstrip("/") == FIXTURES[provider], provider
        assert FIXTURES[provider].is_dir(), provider


def test_every_shared_example_has_an_identical_fixture_copy() -> None:
    """The fixtures are exactly the vendor examples in ../shared/reference, none missing."""
    examples = SHARED_REFERENCE / "api-examples"
    if not examples.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{examples} is missing; CI must have shared/ beside the repo")
        pytest.skip("../shared/reference is not beside this checkout")
    copied = {shared: provider for provider, (_, folders) in readme_rows().items()
              for shared in folders}  # fmt: skip
    compared = 0
    for shared, provider in copied.items():
        for original in sorted((examples / shared).iterdir()):
            copy = FIXTURES[provider] / original.name
            assert copy.is_file(), f"{original} has no fixture copy at {copy}"
            assert filecmp.cmp(original, copy, shallow=False), f"{copy} differs from {original}"
            compared += 1
    assert {p.name for p in examples.iterdir()} == set(copied)
    assert compared == 25
