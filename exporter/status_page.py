"""The status page at `/`: every job in one server-rendered table. No script, no external asset.

It reads the same immutable records as the collector, so what a person sees here is what
Prometheus scrapes. Every value from an upstream API is HTML-escaped.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from exporter import __version__
from exporter.model import State

if TYPE_CHECKING:
    from collections.abc import Iterable

    from exporter.store import JobRecord

STATE_COLOURS = {
    State.NOT_STARTED: "#6b7280",
    State.RUNNING: "#2563eb",
    State.CANCELLING: "#d97706",
    State.SUCCEEDED: "#16a34a",
    State.PARTIALLY_SUCCEEDED: "#d97706",
    State.FAILED: "#dc2626",
    State.CANCELLED: "#6b7280",
    State.UNKNOWN: "#7c3aed",
}
NOT_POLLED_COLOUR = "#9ca3af"

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#111827}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.4rem .6rem;border-bottom:1px solid #e5e7eb;vertical-align:middle}
td:nth-child(-n+2),td:nth-child(5){white-space:nowrap}
th{background:#f3f4f6}
.state{color:#fff;border-radius:.3rem;padding:.1rem .45rem;font-size:.85rem;white-space:nowrap}
.bar{background:#e5e7eb;border-radius:.3rem;width:10rem;height:.8rem;display:inline-block}
.fill{background:#2563eb;border-radius:.3rem;height:100%}
.error{color:#dc2626}
.muted{color:#6b7280}
"""


def _ago(when: datetime | None, now: datetime) -> str:
    if when is None:
        return '<span class="muted">never</span>'
    seconds = max(0, int((now - when).total_seconds()))
    text = f"{seconds}s ago" if seconds < 120 else f"{seconds // 60}m ago"
    return f'<time datetime="{when.isoformat()}">{text}</time>'


def _eta(when: datetime | None, now: datetime) -> str:
    if when is None:
        return '<span class="muted">-</span>'
    minutes = round((when - now).total_seconds() / 60)
    relative = f"in {minutes} min" if minutes >= 0 else f"{-minutes} min overdue"
    return f'<time datetime="{when.isoformat()}">{when:%Y-%m-%d %H:%M} UTC ({relative})</time>'


def _row(record: JobRecord, now: datetime) -> str:
    snap = record.snapshot
    e = html.escape
    if snap is None:
        state, colour, progress, eta = "not polled yet", NOT_POLLED_COLOUR, 0.0, None
    else:
        state, colour = snap.state.value, STATE_COLOURS[snap.state]
        progress, eta = snap.progress["overall"], snap.estimated_completion
    percent = round(progress * 100)
    error = (
        f'<span class="error">{e(record.last_error.value)}</span>'
        if record.last_error is not None
        else '<span class="muted">-</span>'
    )
    title = e(snap.vendor_status) if snap else ""
    name = e(snap.display_name) if snap else ""
    bar = (
        f'<span class="bar" role="progressbar" aria-valuenow="{percent}" aria-valuemin="0" '
        f'aria-valuemax="100"><span class="fill" style="display:block;width:{percent}%">'
        "</span></span>"
    )
    cells = (
        e(record.source),
        e(record.provider),
        f"{e(record.job_id)}<br><span class='muted'>{name}</span>",
        f'<span class="state" style="background:{colour}" title="{title}">{e(state)}</span>',
        f"{bar} {percent}%",
        _eta(eta, now),
        _ago(record.last_poll_success, now),
        error,
    )
    tds = "".join(f"<td>{cell}</td>" for cell in cells)
    return f'<tr data-job-id="{e(record.job_id)}" data-state="{e(state)}">{tds}</tr>'


def render(records: Iterable[JobRecord], telemetry_path: str, now: datetime | None = None) -> bytes:
    now = now or datetime.now(UTC)
    rows = "".join(_row(r, now) for r in sorted(records, key=lambda r: (r.source, r.job_id)))
    path = html.escape(telemetry_path)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta http-equiv='refresh' content='15'>"
        f"<title>asyncjob-exporter</title><style>{_STYLE}</style></head><body>"
        f"<h1>asyncjob-exporter <small class='muted'>{html.escape(__version__)}</small></h1>"
        f"<p><a href='{path}'>Metrics</a> · <a href='/-/healthy'>Health</a> · "
        "<a href='/-/ready'>Readiness</a></p>"
        "<table><thead><tr><th>Source</th><th>Provider</th><th>Job</th><th>State</th>"
        "<th>Progress</th><th>ETA</th><th>Last successful poll</th><th>Last error</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        f"<p class='muted'>Page rendered {now:%Y-%m-%d %H:%M:%S} UTC; it refreshes every 15 s.</p>"
        "</body></html>"
    ).encode()
