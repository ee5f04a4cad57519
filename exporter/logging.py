"""structlog set-up, in one function: level, console or JSON rendering, and redaction.

Redaction is by key (anything named like a key, token, secret or password) and by value: every
secret the config holds is registered here, so one that reaches an exception message is masked
too.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import TYPE_CHECKING, Any

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
_SECRET_KEY = re.compile(r"key|token|secret|password|authorization|sig$", re.IGNORECASE)
_SAS_SIG = re.compile(r"(?i)(sig=)[^&\s\"']+")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


class Redactor:
    """A structlog processor that masks secrets by key and by value."""

    def __init__(self) -> None:
        self._secrets: tuple[str, ...] = ()

    def register(self, secrets: Iterable[str]) -> None:
        """Add secrets to mask; earlier ones stay masked (a rotated key can still be in flight)."""
        known = set(self._secrets) | {s for s in secrets if len(s) >= 4}
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = tuple(sorted(known, key=len, reverse=True))

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        text = _SAS_SIG.sub(rf"\1{REDACTED}", text)
        text = _BEARER.sub(rf"\1{REDACTED}", text)
        return _JWT.sub(REDACTED, text)

    def __call__(
        self, _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event.items():
            if key != "event" and _SECRET_KEY.search(key) and value is not None:
                event[key] = REDACTED
            elif isinstance(value, str):
                event[key] = self.mask(value)
            elif isinstance(value, BaseException):
                event[key] = self.mask(repr(value))
        return event


redactor = Redactor()


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
