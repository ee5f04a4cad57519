"""The status page at / in a real headless browser (Debian's chromium), against the simulator."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any

import pytest
import requests
from conftest import REPO, Harness
from prometheus_client import CollectorRegistry

from exporter import status_page
from exporter.model import STATE_COLOURS, ErrorReason, JobSnapshot, State
from exporter.server import HttpServer, make_app
from exporter.simulator import DEMO_JOBS, Fault
from exporter.store import JobRecord

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
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
    attention: str
    cells: list[str] = field(default_factory=list)
    progress: str = ""
    fill: str = ""


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
            self.rows.append(
                Row(
                    attributes["data-job-id"],
                    attributes["data-state"],
                    attributes["data-attention"],
                )
            )
        elif tag == "td" and self.rows:
            self._cell = []
        elif tag == "a":
            self.links.append(attributes.get("href", ""))
        elif tag == "span" and attributes.get("role") == "progressbar" and self.rows:
            self.rows[-1].progress = attributes["aria-valuenow"]
        elif tag == "span" and attributes.get("class") == "fill" and self.rows:
            style = dict(p.split(":", 1) for p in attributes["style"].split(";") if p)
            self.rows[-1].fill = style["background"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows[-1].cells.append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def record(job_id: str, snap: JobSnapshot | None, **fields: Any) -> JobRecord:
    base = {"up": snap is not None, "last_poll_success": NOW - timedelta(seconds=5)}
    seen = NOW - timedelta(days=4)
    return JobRecord("azure_document_translation", "translator", job_id, seen, snapshot=snap,
                     **{**base, **fields})  # fmt: skip


def snapshot(state: State, overall: float, **fields: Any) -> JobSnapshot:
    return JobSnapshot(
        state=state, vendor_status=state.value, progress={"overall": overall}, **fields
    )


DOCS = {"succeeded": 8, "failed": 2, "in_progress": 0, "not_started": 0, "cancelled": 0}
CRAFTED = [
    record("ok-clean", snapshot(State.SUCCEEDED, 1.0), finished_at=NOW - timedelta(seconds=100)),
    record(
        "ok-with-failures",
        snapshot(State.SUCCEEDED, 1.0, documents=DOCS),
        finished_at=NOW - timedelta(hours=2, minutes=5),
    ),
    record(
        "stalled",
        snapshot(State.RUNNING, 0.3),
        last_progress_change=NOW - timedelta(minutes=35),
    ),
    record(
        "moving",
        snapshot(State.RUNNING, 0.6, estimated_completion=NOW + timedelta(minutes=3, seconds=20)),
        last_progress_change=NOW - timedelta(minutes=29),
    ),
    record(
        "broken",
        snapshot(State.FAILED, 0.4, errors=1),
        finished_at=NOW - timedelta(days=3, hours=4),
    ),
    record(
        "failing-poll",
        snapshot(State.RUNNING, 0.5),
        up=False,
        last_error=ErrorReason.THROTTLED,
        last_progress_change=NOW - timedelta(minutes=1),
        last_poll_success=NOW - timedelta(minutes=1, seconds=40),
    ),
]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (45, "45s"), (100, "1m40s"), (120, "2m"), (3600, "1h"), (7500, "2h5m"),
     (3 * 86400 + 4 * 3600 + 59, "3d4h"), (-5, "0s")],
)  # fmt: skip
def test_durations_use_one_style(seconds: float, text: str) -> None:
    assert status_page.duration(seconds) == text


def test_attention_notes_per_case() -> None:
    """Failed units of a finished job, a stall past 30 min, a failed job, a failing poll."""
    notes = {r.job_id: status_page.attention(r, NOW) for r in CRAFTED}
    assert notes == {
        "ok-clean": [],
        "ok-with-failures": [("failures", "2 failed documents")],
        "stalled": [("stalled", "stalled: no progress for 35m")],
        "moving": [],
        "broken": [("state", "job failed (1 error)")],
        "failing-poll": [("polling", "polling failing: throttled")],
    }


def serve_records(records: list[JobRecord], tmp_path: Path) -> Iterator[str]:
    registry = CollectorRegistry()
    app = make_app(registry, "/metrics", lambda: None, lambda: records, clock=lambda: NOW)
    server = HttpServer(app, "127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}/"
    finally:
        server.stop()


def test_what_needs_attention_in_headless_chromium(tmp_path: Path) -> None:
    """Each case reads right in the rendered DOM; the screenshot is kept for a person to see."""
    for url in serve_records(CRAFTED, tmp_path):
        dom = chromium("--dump-dom", url, user_data=tmp_path / "profile-dom").stdout
        page = Rows()
        page.feed(dom)
        rows = {r.job_id: r for r in page.rows}
        assert "4 jobs of 6 need attention" in " ".join(dom.split())
        # A batch that succeeded with 2 failed documents is not plain green.
        assert rows["ok-with-failures"].cells[3] == "succeeded"
        assert rows["ok-with-failures"].cells[7] == "2 failed documents"
        assert rows["ok-with-failures"].cells[6] == "finished 2h5m ago"
        assert rows["ok-clean"].cells[6] == "finished 1m40s ago"  # not a growing "last poll"
        assert rows["ok-clean"].cells[7] == "-"
        assert rows["stalled"].cells[7] == "stalled: no progress for 35m"
        assert rows["moving"].cells[7] == "-"
        assert rows["moving"].cells[5] == "2026-03-02 12:03 UTC (in 3m20s)"
        assert rows["moving"].cells[6] == "polled 5s ago"
        assert rows["failing-poll"].cells[6] == "polled 1m40s ago"
        assert rows["failing-poll"].cells[7] == "polling failing: throttled"
        assert rows["broken"].cells[6] == "finished 3d4h ago"
        assert rows["broken"].cells[7] == "job failed (1 error)"
        assert rows["ok-with-failures"].fill == STATE_COLOURS[State.PARTIALLY_SUCCEEDED]
        assert rows["ok-clean"].fill == STATE_COLOURS[State.SUCCEEDED]
        # A failed job's bar is red, a running job's blue.
        assert rows["broken"].fill == STATE_COLOURS[State.FAILED] == "#dc2626"
        assert rows["moving"].fill == STATE_COLOURS[State.RUNNING]
        assert "<script" not in dom
        assert "http" not in dom.replace(url, "").replace("http-equiv", "")  # no outside asset
        take_screenshot(url, "status-page-attention.png", tmp_path)


def take_screenshot(url: str, name: str, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / name
    screenshot.unlink(missing_ok=True)
    chromium(
        f"--screenshot={screenshot}",
        "--window-size=1400,700",
        url,
        user_data=tmp_path / f"profile-{name}",
    )
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_status_page_in_headless_chromium(
    make_harness: Callable[..., Harness], tmp_path: Path
) -> None:
    """The demo's jobs, polled for real: a row each with state, progress, ETA and last error."""
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
    source, provider, _job, state, progress, eta, updated, notes = rows["train-fail"].cells
    assert (source, provider, state, progress) == (
        "language-training",
        "azure_language_training",
        "failed",
        "25%",
    )
    assert rows["train-fail"].state == "failed"
    assert rows["train-fail"].attention == "state"
    assert notes == "job failed (1 error)"
    assert updated.startswith("finished ")
    assert updated.endswith("s ago")
    assert rows["train-ok"].progress == "19"
    # The training estimate is 149 s after the simulator started (wall clock); the page is read
    # seconds after the start, so it is due in 2m and some seconds.
    due = h.sim.started_at + timedelta(seconds=149)
    assert re.fullmatch(rf"{due:%Y-%m-%d %H:%M} UTC \(in 2m(\d+s)?\)", rows["train-ok"].cells[5])
    assert rows["batch-ok"].cells[7] == "polling failing: not_found"  # last values kept
    assert rows["batch-ok"].state == "running"
    assert rows["batch-partial"].cells[4] == "50%"
    assert eta == "-"
    take_screenshot(url, "status-page.png", tmp_path)


def many(n: int, failed_every: int) -> list[JobRecord]:
    """n finished batches over two sources; every `failed_every`-th failed."""
    return [
        replace(
            record(f"job-{i:05d}", snapshot(State.FAILED if i % failed_every == 0 else State.SUCCEEDED,
                                            1.0), finished_at=NOW - timedelta(minutes=5)),
            source="translator" if i % 2 else "translator-eu",
        )
        for i in range(n)
    ]  # fmt: skip


def test_at_scale_the_page_opens_on_what_needs_attention_a_page_at_a_time(tmp_path: Path) -> None:
    """250 jobs (over ATTENTION_FIRST): the attention view by default; `view=all` pages through
    every job 100 at a time, with working links; source and state filters narrow it, in the
    real browser's DOM."""
    jobs = many(250, failed_every=10)  # 25 failed
    for url in serve_records(jobs, tmp_path):
        page = Rows()
        page.feed(chromium("--dump-dom", url, user_data=tmp_path / "profile-1").stdout)
        assert len(page.rows) == 25
        assert {row.state for row in page.rows} == {"failed"}
        seen, link = [], "?view=all"
        for _ in range(3):  # following each page's "next" link: 100, 100, then 50
            page = Rows()
            page.feed(requests.get(f"{url}{html.unescape(link)}", timeout=10).text)
            seen += [row.job_id for row in page.rows]
            link = next((link for link in page.links if "page=" in link and "prev" not in link
                         and f"page={len(seen) // 100 + 1}" in link), "")  # fmt: skip
        assert not link  # the last page has no next
        assert seen == sorted(r.job_id for r in jobs if r.source == "translator") + sorted(
            r.job_id for r in jobs if r.source == "translator-eu"
        )
        page = Rows()
        page.feed(requests.get(f"{url}?view=all&source=translator&state=failed", timeout=10).text)
        expected = [r.job_id for r in jobs if r.source == "translator" and r.snapshot
                    and r.snapshot.state is State.FAILED]  # fmt: skip
        assert sorted(row.job_id for row in page.rows) == sorted(expected)
        page = Rows()
        page.feed(requests.get(f"{url}?view=all&page=999", timeout=10).text)  # past the end
        assert len(page.rows) == 50  # the last page
