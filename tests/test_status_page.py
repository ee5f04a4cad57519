"""The status page at / in a real headless browser (Debian's chromium), against the simulator."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import timedelta
from html.parser import HTMLParser
from typing import TYPE_CHECKING

import pytest
from conftest import REPO, Harness

from exporter.simulator import DEMO_JOBS, Fault

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

ARTIFACTS = REPO / "test-artifacts"
DEMO_JOB_IDS = [job.job_id for job in DEMO_JOBS]


def chromium(*args: str, user_data: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium not found: run `make tools` (Debian package chromium)")
    flags = [
        "--headless",
        "--no-sandbox",  # tests run as root in CI
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={user_data}",
    ]
    return subprocess.run(
        [binary, *flags, *args], capture_output=True, text=True, timeout=90, check=True
    )


@dataclass
class Row:
    job_id: str
    state: str
    cells: list[str] = field(default_factory=list)
    progress: str = ""


class Rows(HTMLParser):
    """Collects each table row's data attributes and cell texts from the rendered DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[Row] = []
        self.links: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        if tag == "tr" and "data-job-id" in attributes:
            self.rows.append(Row(attributes["data-job-id"], attributes["data-state"]))
        elif tag == "td" and self.rows:
            self._cell = []
        elif tag == "a":
            self.links.append(attributes.get("href", ""))
        elif tag == "span" and attributes.get("role") == "progressbar" and self.rows:
            self.rows[-1].progress = attributes["aria-valuenow"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows[-1].cells.append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_status_page_in_headless_chromium(
    make_harness: Callable[..., Harness], tmp_path: Path
) -> None:
    """Each job is a row with its state, progress, ETA and last error; a screenshot is kept."""
    h = make_harness(at=60.0)
    h.exporter.poll_once()
    h.sim.set_fault("batch-ok", Fault(status=404))
    h.exporter.poll_once()
    url = f"{h.url}/"
    dom = chromium("--dump-dom", url, user_data=tmp_path / "profile-dom").stdout
    page = Rows()
    page.feed(dom)
    rows = {r.job_id: r for r in page.rows}
    assert set(rows) == set(DEMO_JOB_IDS)
    assert "/metrics" in page.links
    source, provider, _job, state, progress, eta, last_poll, error = rows["train-fail"].cells
    assert (source, provider, state, progress) == (
        "language-training",
        "azure_language_training",
        "failed",
        "25%",
    )
    assert rows["train-fail"].state == "failed"
    assert error == "-"
    assert rows["train-ok"].progress == "19"
    # The simulator's estimate is 185 s after it started (wall clock); the page is read seconds
    # after the start, so the job is due in about three minutes.
    due = h.sim.started_at + timedelta(seconds=185)
    assert rows["train-ok"].cells[5] == f"{due:%Y-%m-%d %H:%M} UTC (in 3 min)"
    assert rows["batch-ok"].cells[7] == "not_found"  # failing now, last values kept
    assert rows["batch-ok"].state == "running"
    assert rows["batch-partial"].cells[4] == "50%"
    assert last_poll.endswith("s ago")
    assert eta == "-"

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "status-page.png"
    screenshot.unlink(missing_ok=True)
    chromium(
        f"--screenshot={screenshot}",
        "--window-size=1400,700",
        url,
        user_data=tmp_path / "profile-shot",
    )
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
