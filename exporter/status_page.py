"""The status page at `/`: the jobs in a server-rendered table. No script, no external asset.

It reads the same immutable records as /metrics, so what a person sees here is what Prometheus
scrapes. It answers "what needs my attention?" first: a summary line, then per job a note for a
failed job, failed documents or tasks of a finished job, a running job with no progress for
STALL_AFTER (the threshold of the AsyncJobStalled alert), and a failing poll: the kinds of
`Attention` in the vocabulary (exporter/model.py), whose states, colours and words it shows.
Every value from an upstream API is HTML-escaped.

At scale it shows a page of PAGE_SIZE jobs at a time, filtered by source and state (`?source=`,
`?state=`, a state as the jobs API names it, `?page=`), and `?view=attention` (only the jobs
that need attention) or `?view=all`. With more than ATTENTION_FIRST jobs the attention view is
the default.
"""

from __future__ import annotations

import html
import string
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlencode

from exporter import __version__
from exporter.model import (
    ATTENTION_STATES,
    RECORD_STATES,
    STALL_AFTER,
    STATE_COLOURS,
    Attention,
    State,
    state_of,
    state_words,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from exporter.model import JobRecord

PAGE_SIZE = 100
ATTENTION_FIRST = 200  # with more jobs than this, the page opens on those needing attention

_STYLE = string.Template("""
body{font-family:system-ui,sans-serif;margin:2rem;color:#111827}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.4rem .6rem;border-bottom:1px solid #e5e7eb;vertical-align:middle}
td:nth-child(-n+2),td:nth-child(5),td:nth-child(7){white-space:nowrap}
th{background:#f3f4f6}
.state{color:#fff;border-radius:.3rem;padding:.1rem .45rem;font-size:.85rem;white-space:nowrap}
.note{border:1px solid $warn;color:#92400e;background:#fffbeb;border-radius:.3rem;
padding:.05rem .4rem;font-size:.8rem;white-space:nowrap;display:inline-block;margin:.1rem 0}
.note.bad{border-color:$bad;color:#991b1b;background:#fef2f2}
.bar{background:#e5e7eb;border-radius:.3rem;width:10rem;height:.8rem;display:inline-block}
.fill{border-radius:.3rem;height:100%;display:block}
.summary{padding:.5rem .8rem;border-radius:.3rem;background:#f3f4f6;display:inline-block}
.muted{color:#6b7280}
.controls{margin:.8rem 0 .2rem}
.pages{margin:.8rem 0}
""").substitute(warn=STATE_COLOURS[State.PARTIALLY_SUCCEEDED], bad=STATE_COLOURS[State.FAILED])


def duration(seconds: float) -> str:
    """One style for every span of time: 45s, 1m40s, 2h5m, 3d4h (two units at most)."""
    total = max(0, round(seconds))
    for size, unit, next_size, next_unit in (
        (86400, "d", 3600, "h"),
        (3600, "h", 60, "m"),
        (60, "m", 1, "s"),
    ):
        if total >= size:
            rest = (total % size) // next_size
            return f"{total // size}{unit}" + (f"{rest}{next_unit}" if rest else "")
    return f"{total}s"


def _time(when: datetime, text: str) -> str:
    return f'<time datetime="{when.isoformat()}">{text}</time>'


def _ago(when: datetime | None, now: datetime) -> str:
    if when is None:
        return '<span class="muted">never</span>'
    return _time(when, f"{duration((now - when).total_seconds())} ago")


def _eta(when: datetime | None, now: datetime) -> str:
    if when is None:
        return '<span class="muted">-</span>'
    left = (when - now).total_seconds()
    relative = f"in {duration(left)}" if left >= 0 else f"{duration(-left)} overdue"
    return _time(when, f"{when:%Y-%m-%d %H:%M} UTC ({relative})")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def attention(record: JobRecord, now: datetime) -> list[tuple[Attention, str]]:
    """(kind, text) of everything about this job a person should look at; [] when nothing."""
    notes: list[tuple[Attention, str]] = []
    snap = record.snapshot
    if record.last_error is not None:
        notes.append((Attention.POLLING, f"polling failing: {record.last_error.value}"))
    if snap is None:
        return notes
    if snap.state in ATTENTION_STATES:
        text = f"job {state_words(snap.state)}"
        if snap.errors:
            text += f" ({_plural(snap.errors, 'error')})"
        notes.append((Attention.STATE, text))
    if snap.state.terminal:
        failed_units = (
            ("document", snap.documents.get("failed", 0)),
            ("task", snap.tasks.get("failed", 0)),
        )
        for unit, failed in failed_units:
            if failed:
                notes.append((Attention.FAILURES, f"{_plural(failed, 'failed ' + unit)}"))
    elif (
        snap.state is State.RUNNING
        and snap.shows_progress  # else no stall can be told, as on /metrics
        and record.last_progress_change is not None
    ):
        still = now - record.last_progress_change
        if still >= STALL_AFTER:
            notes.append(
                (Attention.STALLED, f"stalled: no progress for {duration(still.total_seconds())}")
            )
    return notes


_BAD = frozenset({Attention.POLLING, Attention.STATE})  # red notes; the others are amber
_SUMMARY = {
    Attention.STATE: "failed or partly failed",
    Attention.FAILURES: "finished with failed documents or tasks",
    Attention.STALLED: "stalled",
    Attention.POLLING: "polling failing",
}


def _row(record: JobRecord, now: datetime) -> str:
    snap = record.snapshot
    e = html.escape
    state = state_of(snap)
    colour = STATE_COLOURS[state]
    progress = 0.0 if snap is None else snap.progress.get("overall")
    eta = None if snap is None else snap.estimated_completion
    percent = 0 if progress is None else round(progress * 100)
    notes = attention(record, now)
    note_html = "<br>".join(
        f'<span class="note{" bad" if kind in _BAD else ""}">{e(text)}</span>'
        for kind, text in notes
    )
    failures = any(kind is Attention.FAILURES for kind, _ in notes)
    fill = STATE_COLOURS[State.PARTIALLY_SUCCEEDED] if failures else colour  # not plain green
    if snap is not None and snap.state.terminal and record.finished_at is None:
        updated = 'finished <span class="muted">before it was first seen</span>'
    elif snap is not None and snap.state.terminal:
        updated = f"finished {_ago(record.finished_at, now)}"
    else:
        updated = f"polled {_ago(record.last_poll_success, now)}"
    title = e(snap.vendor_status) if snap else ""
    name = e(snap.display_name) if snap else ""
    bar = (
        f'<span class="bar" role="progressbar" aria-valuenow="{percent}" aria-valuemin="0" '
        f'aria-valuemax="100"><span class="fill" style="width:{percent}%;background:{fill}">'
        "</span></span>"
    )
    cells = (
        e(record.source),
        e(record.provider),
        f"{e(record.job_id)}<br><span class='muted'>{name}</span>",
        (
            f'<span class="state" style="background:{colour}" title="{title}">'
            f"{e(state_words(state))}</span>"
        ),
        f"{bar} {percent}%" if progress is not None else '<span class="muted">not reported</span>',
        _eta(eta, now),
        updated,
        note_html or '<span class="muted">-</span>',
    )
    tds = "".join(f"<td>{cell}</td>" for cell in cells)
    kinds = " ".join(kind for kind, _ in notes)
    return (
        f'<tr data-job-id="{e(record.job_id)}" data-state="{e(state)}" '
        f'data-attention="{kinds}">{tds}</tr>'
    )


def _summary(records: list[JobRecord], now: datetime) -> str:
    counts: dict[Attention, int] = {}
    for record in records:
        for kind, _ in attention(record, now):
            counts[kind] = counts.get(kind, 0) + 1
    needing = sum(1 for r in records if attention(r, now))
    if not needing:
        return f"<p class='summary'>{_plural(len(records), 'job')}; none needs attention.</p>"
    parts = ", ".join(f"{n} {_SUMMARY[kind]}" for kind, n in counts.items())
    verb = "needs" if needing == 1 else "need"
    return (
        f"<p class='summary'><strong>{_plural(needing, 'job')} of {len(records)} {verb} "
        f"attention</strong>: {html.escape(parts)}.</p>"
    )


@dataclass(frozen=True, slots=True)
class View:
    """Which jobs the page shows: a source, a state, only those needing attention, a page."""

    source: str = ""
    state: str = ""
    attention: bool | None = None  # None: the default for the number of jobs
    page: int = 1

    @classmethod
    def from_query(cls, query: str) -> View:
        """From a query string; what cannot be read is left at its default."""
        q = {key: values[-1] for key, values in parse_qs(query).items()}
        view = q.get("view")
        page = q.get("page", "1")
        return cls(
            source=q.get("source", ""),
            state=q.get("state", ""),
            attention={"attention": True, "all": False}.get(view or ""),
            page=int(page) if page.isdigit() and int(page) > 0 else 1,
        )

    def query(self, **changes: object) -> str:
        view = replace(self, **changes)  # type: ignore[arg-type]
        pairs = [("source", view.source), ("state", view.state)]
        if view.attention is not None:
            pairs.append(("view", "attention" if view.attention else "all"))
        if view.page > 1:
            pairs.append(("page", str(view.page)))
        return "?" + urlencode([(key, value) for key, value in pairs if value])


def _controls(view: View, sources: list[str], attention_only: bool, shown: str) -> str:
    e = html.escape

    def options(name: str, values: list[tuple[str, str]], chosen: str) -> str:
        opts = [f"<option value=''>every {name}</option>"] + [
            f"<option value='{e(v)}'{' selected' if v == chosen else ''}>{e(text)}</option>"
            for v, text in values
        ]
        return f"<select name='{name}' aria-label='{name}'>{''.join(opts)}</select>"

    states = [(state, state_words(state)) for state in RECORD_STATES]
    views = [
        ("attention", "needing attention", attention_only),
        ("all", "all jobs", not attention_only),
    ]
    radios = "".join(
        f"<label><input type='radio' name='view' value='{v}'{' checked' if on else ''}> "
        f"{text}</label> "
        for v, text, on in views
    )
    return (
        "<form method='get' class='controls'>"
        f"{options('source', [(s, s) for s in sources], view.source)} "
        f"{options('state', states, view.state)} "
        f"{radios}<button type='submit'>Show</button></form><p class='muted'>{shown}</p>"
    )


def _pages(view: View, page: int, pages: int) -> str:
    if pages <= 1:
        return ""
    links = []
    if page > 1:
        links.append(f"<a rel='prev' href='{html.escape(view.query(page=page - 1))}'>previous</a>")
    links.append(f"page {page} of {pages}")
    if page < pages:
        links.append(f"<a rel='next' href='{html.escape(view.query(page=page + 1))}'>next</a>")
    return f"<p class='pages'>{' · '.join(links)}</p>"


def render(
    records: Iterable[JobRecord],
    telemetry_path: str,
    now: datetime | None = None,
    view: View | None = None,
) -> bytes:
    now = now or datetime.now(UTC)
    view = view or View()
    every = list(records)
    attention_only = view.attention if view.attention is not None else len(every) > ATTENTION_FIRST
    chosen = [
        r for r in every
        if (not view.source or r.source == view.source)
        and (not view.state or state_of(r.snapshot) == view.state)
        and (not attention_only or attention(r, now))
    ]  # fmt: skip
    chosen.sort(key=lambda r: (r.source, r.job_id))
    pages = max(1, -(-len(chosen) // PAGE_SIZE))
    page = min(view.page, pages)
    shown_records = chosen[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    rows = "".join(_row(r, now) for r in shown_records)
    what = "needing attention" if attention_only else "in all"
    shown = (
        f"Showing {len(shown_records)} of {_plural(len(chosen), 'job')} {what}"
        f"{' matching the filter' if view.source or view.state else ''}."
    )
    sources = sorted({r.source for r in every})
    path = html.escape(telemetry_path)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta http-equiv='refresh' content='15'>"
        f"<title>asyncjob-exporter</title><style>{_STYLE}</style></head><body>"
        f"<h1>asyncjob-exporter <small class='muted'>{html.escape(__version__)}</small></h1>"
        f"<p><a href='{path}'>Metrics</a> · <a href='/-/healthy'>Health</a> · "
        "<a href='/-/ready'>Readiness</a></p>"
        f"{_summary(every, now)}"
        f"{_controls(view, sources, attention_only, shown)}"
        "<table><thead><tr><th>Source</th><th>Provider</th><th>Job</th><th>State</th>"
        "<th>Progress</th><th>ETA</th><th>Updated</th><th>Needs attention</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        f"{_pages(view, page, pages)}"
        f"<p class='muted'>Page rendered {now:%Y-%m-%d %H:%M:%S} UTC; it refreshes every 15 s. "
        f"A running job is stalled after {duration(STALL_AFTER.total_seconds())} "
        "without progress.</p>"
        "</body></html>"
    ).encode()
