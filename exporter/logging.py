"""structlog set-up, in one function: level, console or JSON rendering, and the redactor.

The redactor is the one place secrets are masked, and every exit goes through it: log events,
config problems and --config.check output, HTTP answers but /metrics, and what upstream says
before it becomes a label, a page field or a stored value. It masks by key (anything named like
a key, token, secret or password, in log events) and by value: every secret of the running
config, and of any config being loaded (registered before it is validated, so that a config
that fails still has its secrets masked), in the spellings an exit may give it (JSON, HTML,
`repr`, a label value, a URL).
"""

from __future__ import annotations

import html
import json
import logging
import re
import sys
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus

import structlog

if TYPE_CHECKING:
    from collections.abc import Iterable, MutableMapping

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
REDACTED = "<redacted>"
MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words; no real key is that short
_SECRET_KEY = re.compile(r"key|token|secret|password|authorization|sig$", re.IGNORECASE)
_SAS_SIG = re.compile(r"(?i)(sig=)[^&\s\"']+")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_SHAPES = (_SAS_SIG, _BEARER, _JWT)  # secrets known by their shape, not their value


def _quoted(text: str) -> set[str]:
    """`text` and how a `repr` writes it, whichever quote the repr around it chose."""
    return {text, repr(text)[1:-1], repr(text + "'\"")[1:-4]}


def _encoded(text: str) -> set[str]:
    """`text` as an answer encodes it: JSON (ASCII or not), HTML, a label value, a URL."""
    return {
        text,
        json.dumps(text)[1:-1],
        json.dumps(text, ensure_ascii=False)[1:-1],
        html.escape(text),
        html.escape(text, quote=False),
        text.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n"),
        quote(text, safe=""),
        quote_plus(text, safe=""),
    }


def spellings(secret: str) -> set[str]:
    """The secret as each exit may write it: as is or as WSGI hands over a request's path and
    headers (UTF-8 read as Latin-1), quoted by a `repr` or not, and then encoded for JSON,
    HTML, a label value or a URL."""
    wsgi = secret.encode("utf-8").decode("latin-1")
    return {
        encoded
        for plain in (secret, wsgi)
        for in_repr in _quoted(plain)
        for encoded in _encoded(in_repr)
    }


def _any_of(masked: re.Pattern[str] | None) -> re.Pattern[str]:
    """One pattern that finds what any of the masks would (the secrets, then each shape)."""
    patterns = ([] if masked is None else [masked]) + list(_SHAPES)
    return re.compile("|".join(
        f"(?{'i' if p.flags & re.IGNORECASE else ''}:{p.pattern.removeprefix('(?i)')})"
        for p in patterns
    ))  # fmt: skip


class Redactor:
    """Masks secrets by value in anything an exit sends, and by key in log events."""

    def __init__(self) -> None:
        self._secrets: frozenset[str] = frozenset()
        self._masked: re.Pattern[str] | None = None  # every spelling of every secret
        # Whether a text holds anything to mask: one search, where masking is four passes.
        # Most texts hold nothing (IDs, states, messages), and every snapshot string is masked.
        self._any = _any_of(None)
        self._lock = threading.Lock()

    def register(self, secrets: Iterable[str]) -> None:
        """Add secrets to mask; earlier ones stay masked (a rotated key can still be in flight,
        and a config that failed to load may still be quoted somewhere)."""
        with self._lock:
            known = self._secrets | {s for s in secrets if len(s) >= MIN_SECRET_LENGTH}
            if known == self._secrets:
                return
            masked = {spelled for s in known for spelled in spellings(s)}
            self._secrets = known
            # One pattern, one pass over the text (a page can be megabytes). Longest first, so
            # that a secret that contains another is masked whole.
            ordered = sorted(masked, key=len, reverse=True)
            self._masked = re.compile("|".join(re.escape(spelled) for spelled in ordered))
            self._any = _any_of(self._masked)

    def mask(self, text: str) -> str:
        if self._any.search(text) is None:
            return text
        if self._masked is not None:
            text = self._masked.sub(REDACTED, text)
        text = _SAS_SIG.sub(rf"\1{REDACTED}", text)
        text = _BEARER.sub(rf"\1{REDACTED}", text)
        return _JWT.sub(REDACTED, text)

    def clip(self, text: str, limit: int) -> str:
        """Mask, then cut to `limit` characters: a cut first could leave a fragment no longer
        recognisable as the secret."""
        return self.mask(text)[:limit]

    def quote(self, value: Any, limit: int | None = None) -> str:
        """`repr` of a value for a message, masked (and cut to `limit` characters) first."""
        if isinstance(value, str):
            return repr(self.mask(value)[:limit])
        return self.mask(repr(value))[:limit]

    def scrub(self, value: Any) -> Any:
        """`value` masked throughout: strings and bytes, inside lists, tuples and dicts (keys
        too); an exception becomes its masked repr. Anything else is returned as it is."""
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, bytes):
            return self.mask(value.decode("utf-8", "surrogateescape")).encode(
                "utf-8", "surrogateescape"
            )
        if isinstance(value, list | tuple):
            items = [self.scrub(item) for item in value]
            return items if isinstance(value, list) else tuple(items)
        if isinstance(value, dict):
            return {self.scrub(key): self.scrub(item) for key, item in value.items()}
        if isinstance(value, BaseException):
            return self.mask(repr(value))
        return value

    def __call__(
        self, _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event.items():
            if key != "event" and _SECRET_KEY.search(key) and value is not None:
                event[key] = REDACTED
            else:
                event[key] = self.scrub(value)
        return event


redactor = Redactor()


def quoted(value: Any, limit: int | None = None) -> str:
    """How a message quotes a value it was given (a config value, a request's field, what
    upstream said): masked, cut to `limit`, then `repr`."""
    return redactor.quote(value, limit)


class _Stderr:
    """sys.stderr as it is at each write, not as it was when a logger was first cached."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


_METHOD_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
}


class _Output:
    """Level and renderer, read on every event: loggers cached before a re-configure obey it."""

    def __init__(self) -> None:
        self.level = logging.INFO
        self.renderer: Any = structlog.processors.JSONRenderer()

    def drop_below_level(
        self, _logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if _METHOD_LEVELS.get(method, logging.INFO) < self.level:
            raise structlog.DropEvent
        return event

    def render(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        return self.renderer(logger, method, event)


_output = _Output()


def logs_debug() -> bool:
    """Whether debug events are written: a hot path skips building one that would be dropped."""
    return _output.level <= logging.DEBUG


def configure(level: str = "info", fmt: str | None = None, stream: Any = None) -> None:
    """Configure structlog for the process. `fmt` None: console on a terminal, JSON otherwise."""
    stream = stream or _Stderr()
    if fmt is None:
        fmt = "console" if stream.isatty() else "json"
    _output.level = LEVELS[level]
    if fmt == "json":
        _output.renderer = structlog.processors.JSONRenderer()
    else:
        _output.renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    structlog.configure(
        processors=[
            _output.drop_below_level,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redactor,  # after format_exc_info, so tracebacks are masked too
            _output.render,
        ],
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
