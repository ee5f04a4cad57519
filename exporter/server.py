"""The exporter's own HTTP endpoint: /metrics, the status page at /, /-/healthy, /-/ready,
/-/reload and /api/v1/...

Two layers. `ExporterApp` is a WSGI app: the routes, their methods, basic auth and webhook
tokens (`guard`, asked before a body is read), the shared /metrics render. `HttpServer` is
the transport, event-driven on aiohttp's HTTP/1.1 protocol under an accept loop of our own, so
that a connection waiting for its request costs a little memory and no thread:

- a request's head and body must arrive within `read_timeout` (10 s) from the first byte (from
  the accept, for a new connection), however slowly they trickle; an idle keep-alive connection
  waits for its next request for at most IDLE_TIMEOUT;
- a body is read only after `guard` has let the request in (credentials, token, method, size);
- a response the client does not read is cut off after `write_timeout`;
- at most `max_connections` connections are open. When a new one arrives at the limit, the
  connection that has waited longest for its request is closed to make room; one whose
  request has arrived (head and body) is never closed for that. When every connection is busy
  serving, new ones wait in the kernel's listen backlog;
- the app runs on small fixed pools of threads ("lanes"): /metrics and /-/ready on their own,
  so that clients looping on the status page or the jobs API cannot delay a scrape; bcrypt on
  its own, MAX_CHECKS at a time; /-/healthy on the event loop itself;
- `stop()` gives in-flight responses a short grace, then closes every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import io
import json
import queue
import resource
import socket
import struct
import sys
import termios
import threading
import time
from collections import OrderedDict
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import parse_qs, unquote

import structlog
from aiohttp import web
from aiohttp.helpers import DEFAULT_CHUNK_SIZE
from aiohttp.http_parser import HttpRequestParserPy
from aiohttp.web_protocol import MAX_MSG_QUEUE_SIZE, RequestHandler, RequestPayloadError
from prometheus_client.exposition import choose_encoder, gzip_accepted

from exporter import status_page
from exporter.api import MAX_BODY, RAW_URI, Api
from exporter.exposition import Exposition
from exporter.logging import redactor
from exporter.webconfig import BasicAuth, Credentials, Verdict

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from prometheus_client.registry import CollectorRegistry

    from exporter.model import JobRecord
    from exporter.webconfig import WebConfig

StartResponse: TypeAlias = Any
Environ: TypeAlias = dict[str, Any]
App: TypeAlias = "Callable[[Environ, StartResponse], Iterable[bytes]]"
_Route: TypeAlias = "tuple[Callable[[Environ, StartResponse], Iterable[bytes]], tuple[str, ...]]"
TlsSource: TypeAlias = "ssl.SSLContext | Callable[[], ssl.SSLContext] | None"

READ_TIMEOUT = 10.0  # a request's head and body, in all, from its first byte
WRITE_TIMEOUT = 60.0  # a response, in all, however slowly the client reads
IDLE_TIMEOUT = 300.0  # an idle keep-alive connection, between requests
MAX_CONNECTIONS = 512  # as Prometheus's --web.max-connections
SHUTDOWN_GRACE = 1.0  # in-flight responses on stop, before every connection is closed
BACKLOG = 1024
SERVER = "asyncjob-exporter"  # the Server header: no library or version to fingerprint
MAX_LINE = 8190  # a request line or header, as aiohttp's and Go's defaults
SCRAPE_THREADS = 2  # /metrics and /-/ready
WORK_THREADS = 2  # the status page, the jobs API, webhooks, /-/reload

log = structlog.get_logger(__name__)


def parse_listen_address(address: str) -> tuple[str, int]:
    """`:9879`, `127.0.0.1:9879` or `[::1]:9879` -> (host, port); empty host = all interfaces."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid listen address {address!r}; expected [host]:port")
    return host.strip("[]"), int(port)


SWITCH_INTERVAL = 0.0005  # seconds, while the app works beside the loop; Python's is 0.005


class _ShortSwitches:
    """The GIL's switch interval, cut to SWITCH_INTERVAL while any lane runs app code.

    The event loop gives up the GIL at every system call (accept, recv, send, epoll); a lane
    thread rendering the status page keeps it until the interval forces a switch, so with
    Python's 5 ms each call could cost the loop 5 ms: with 400 clients looping on the status
    page a probe waited 3 s (`make attack`, the looping-clients row); at 0.5 ms, 0.1 s. The
    short interval costs the pollers about 15% more CPU per poll (`make bench`), so it is in
    force only while app code runs beside the loop, and Python's own interval otherwise.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._usual = sys.getswitchinterval()

    def __enter__(self) -> None:
        with self._lock:
            if not self._running:
                self._usual = sys.getswitchinterval()
                sys.setswitchinterval(SWITCH_INTERVAL)
            self._running += 1

    def __exit__(self, *_: object) -> None:
        with self._lock:
            self._running -= 1
            if not self._running:
                sys.setswitchinterval(self._usual)


_short_switches = _ShortSwitches()


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard limit, as Go programs do at start (each
    connection is a file); returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


class SharedRender:
    """/metrics rendered once for all the scrapes that arrive while a render is under way.

    A scrape is answered with a render that *started after the scrape arrived*, so it never sees
    the store older than when it asked; scrapes that queue behind a render share its result.
    100 scrapers hitting at once cost one render (and one compression), not 100.
    """

    def __init__(self, metrics: CollectorRegistry | Exposition) -> None:
        self._exposition = metrics if isinstance(metrics, Exposition) else Exposition(metrics)
        self._lock = threading.Lock()
        self._renders: dict[tuple[str, bool], tuple[float, list[bytes]]] = {}

    def get(
        self,
        accept: str,
        gzipped: bool,
        arrived: float | None = None,
        names: Sequence[str] = (),
    ) -> tuple[str, list[bytes]]:
        """The body, in parts, for a scrape that arrived at `arrived` (time.monotonic();
        default now). With `names` (`?name[]=`), only those families, for this scrape alone."""
        arrived = time.monotonic() if arrived is None else arrived
        _, content_type = choose_encoder(accept)
        openmetrics = content_type.startswith("application/openmetrics-text")
        if names:
            return content_type, self._exposition.render(openmetrics, gzipped, names)
        with self._lock:
            started, parts = self._renders.get((content_type, gzipped), (-1.0, []))
            if started < arrived:
                started = time.monotonic()
                parts = self._exposition.render(openmetrics, gzipped)
                self._renders[content_type, gzipped] = (started, parts)
        return content_type, parts


PROBES = frozenset({"/-/healthy", "/-/ready"})  # answered without basic auth
READ = ("GET", "HEAD")


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole response: what the app answered, or what `guard` refused a request with."""

    status: str
    headers: list[tuple[str, str]]
    body: list[bytes]


class ExporterApp:
    """The routes, behind basic auth (but for the probes, /-/healthy and /-/ready, which a
    kubelet calls without credentials and which say nothing but up or not, and the webhooks,
    which carry their own token) and with the configured headers. `guard` decides whether a
    request may go on before its body is read; the WSGI call serves one that may."""

    def __init__(
        self,
        metrics: CollectorRegistry | Exposition,
        telemetry_path: str,
        not_ready: Callable[[], str | None],
        jobs: Callable[[], Iterable[JobRecord]] = tuple,
        reload: Callable[[], list[tuple[str, str]]] | None = None,
        web: WebConfig | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        api: Api | None = None,
    ) -> None:
        self._shared = SharedRender(metrics)
        self.telemetry_path = telemetry_path
        self._not_ready = not_ready
        self._jobs = jobs
        self._clock = clock  # what the status page calls "now"
        self._api = api or Api(None)  # None: no jobs API and no webhooks
        self._reload_config = reload  # None: --web.enable-lifecycle is off
        self.auth: BasicAuth | None = web.auth if web else None
        self._headers = list(web.headers.items()) if web else []
        self._routes: dict[str, _Route] = {
            telemetry_path: (self._metrics, READ),
            "/-/healthy": (self._healthy, READ),
            "/-/ready": (self._ready, READ),
            "/-/reload": (self._reload, ("POST", "PUT")),  # as Prometheus
            "/": (self._status, READ),
        }

    def guard(
        self, environ: Environ, verdict: Verdict | None = None
    ) -> Answer | Credentials | None:
        """Whether a request may go on, from its head alone: None if so; else the answer that
        refuses it, or the credentials that must be verified first (then call again with the
        verdict). Nothing here blocks: the caller reads the body only after a None."""
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        if self.auth and path not in PROBES and not Api.open_path(path):
            if verdict is None:
                found = self.auth.cached(environ.get("HTTP_AUTHORIZATION"))
                if isinstance(found, Credentials):
                    return found
                verdict = found
            if verdict is Verdict.BUSY:
                return self.refusal(path, HTTPStatus.TOO_MANY_REQUESTS,
                                    "too many password checks at once; retry later",
                                    ("Retry-After", "1"))  # fmt: skip
            if verdict is not Verdict.ALLOWED:
                challenge = ("WWW-Authenticate", 'Basic realm="asyncjob-exporter"')
                return self.refusal(path, HTTPStatus.UNAUTHORIZED, "unauthorized", challenge)
        route = self._routes.get(path)
        allowed = route[1] if route else Api.methods(path)
        if allowed and method not in allowed:
            methods = ", ".join(allowed)
            message = f"{method} is not allowed here; use {methods}"
            return self.refusal(path, HTTPStatus.METHOD_NOT_ALLOWED, message, ("Allow", methods))
        length = environ.get("CONTENT_LENGTH") or "0"  # a number: the parser refuses others
        if int(length) > MAX_BODY:
            return self.too_large(path)
        refusal = self._api.refuse(environ) if Api.serves(path) else None
        return None if refusal is None else self.refusal(path, *refusal)

    def refusal(
        self, path: str, status: HTTPStatus, message: str, *headers: tuple[str, str]
    ) -> Answer:
        """A refusal in the path's own form: JSON under /api/v1, text elsewhere."""
        if Api.serves(path):
            body = json.dumps({"error": message}).encode() + b"\n"
            kind = "application/json"
        else:
            body, kind = (
                f"{message[:1].upper()}{message[1:]}\n".encode(),
                "text/plain; charset=utf-8",
            )
        status_line = f"{status.value} {status.phrase}"
        headers = (("Content-Type", kind), *headers, *self._headers)
        return Answer(status_line, list(headers), [redactor.scrub(body)])

    def too_large(self, path: str) -> Answer:
        return self.refusal(path, HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            f"the body is over {MAX_BODY} bytes")  # fmt: skip

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == self.telemetry_path:  # labels are masked where they are made; not re-read
            return self._route(path, environ, self._with_headers(start_response))
        return self._masked(path, environ, start_response)

    def _with_headers(self, start_response: StartResponse) -> StartResponse:
        def respond(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            return start_response(status, headers + self._headers, *exc_info)

        return respond

    def _masked(self, path: str, environ: Environ, start_response: StartResponse) -> list[bytes]:
        """Every other answer carries text that may quote what a client or an upstream sent
        (a reload's problems, a registration's refusal, a page field): the whole answer, body
        and headers, goes through the redactor before it leaves."""
        answer: list[Any] = []
        chunks: list[bytes] = []

        def hold(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            answer[:] = [status, headers, *exc_info]
            return chunks.append  # the WSGI write() callable, held with the rest

        chunks.extend(self._route(path, environ, hold))
        body: bytes = redactor.scrub(b"".join(chunks))
        status, headers, *exc_info = answer
        headers = [
            (name, str(len(body)) if name.lower() == "content-length" else redactor.mask(value))
            for name, value in headers
        ]
        start_response(status, headers + self._headers, *exc_info)
        return [body]

    def _route(self, path: str, environ: Environ, respond: StartResponse) -> Iterable[bytes]:
        if Api.serves(path):
            return self._api(environ, respond)
        route = self._routes.get(path)
        return (route[0] if route else _not_found)(environ, respond)

    def _metrics(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        # parse_qs decodes what clients send (name%5B%5D=...), as Prometheus's handler does.
        names = parse_qs(environ.get("QUERY_STRING", "")).get("name[]", [])
        gzipped = gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", ""))
        accept = environ.get("HTTP_ACCEPT", "")
        content_type, parts = self._shared.get(accept, gzipped, names=names)
        headers = [
            ("Content-Type", content_type),
            ("Content-Length", str(sum(len(part) for part in parts))),
        ] + ([("Content-Encoding", "gzip")] if gzipped else [])
        start_response("200 OK", headers)
        return parts

    @staticmethod
    def _healthy(_: Environ, start_response: StartResponse) -> Iterable[bytes]:
        return _text(start_response, "200 OK", "asyncjob-exporter is Healthy.\n")

    def _ready(self, _: Environ, start_response: StartResponse) -> Iterable[bytes]:
        reason = self._not_ready()
        if reason is None:
            return _text(start_response, "200 OK", "asyncjob-exporter is Ready.\n")
        return _text(start_response, "503 Service Unavailable", f"Service Unavailable: {reason}\n")

    def _status(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        view = status_page.View.from_query(environ.get("QUERY_STRING", ""))
        return [status_page.render(self._jobs(), self.telemetry_path, self._clock(), view)]

    def _reload(self, _: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if self._reload_config is None:
            return _text(start_response, "403 Forbidden", "Lifecycle API is not enabled.\n")
        problems = self._reload_config()
        if problems:
            lines = "".join(f"{where}: {what}\n" for where, what in problems)
            return _text(
                start_response, "500 Internal Server Error", f"failed to reload config:\n{lines}"
            )
        return _text(start_response, "200 OK", "")


make_app = ExporterApp


def _not_found(_: Environ, start_response: StartResponse) -> Iterable[bytes]:
    return _text(start_response, "404 Not Found", "Not Found\n")


def _text(start_response: StartResponse, status: str, body: str) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
    return [body.encode()]


class _Lane(Executor):
    """A fixed pool of daemon threads, started at once: the thread count never grows with
    the load, and a thread still busy at exit (a render, a forward) does not hold the exit."""

    def __init__(self, threads: int, name: str) -> None:
        self._work: queue.SimpleQueue[
            tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None
        ]
        self._work = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._work.put((future, functools.partial(fn, **kwargs), args))
        return future

    def _run(self) -> None:
        while (item := self._work.get()) is not None:
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                with _short_switches:
                    result = fn(*args)
                future.set_result(result)
            except BaseException as exc:  # handed to whoever awaits the future
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:  # noqa: ARG002
        for _ in self._threads:
            self._work.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


class _Connection:
    """One connection's place in the limit (its order in `_Front.waiting` says how long it has
    waited for its request), its deadline, and how to close it. Event loop thread only."""

    __slots__ = ("abort", "deadline", "idle")

    def __init__(self, abort: Callable[[], object]) -> None:
        self.abort = abort
        self.deadline: asyncio.TimerHandle | None = None
        self.idle = False  # between requests on a keep-alive connection


class _Protocol(RequestHandler):
    """aiohttp's HTTP/1.1 protocol, telling the server when the next request starts."""

    def __init__(self, manager: web.Server, connection: _Connection, front: _Front) -> None:
        super().__init__(
            manager,
            loop=front.loop,
            keepalive_timeout=IDLE_TIMEOUT,
            lingering_time=0.0,  # an unread body is not waited for: the connection closes
            access_log=None,  # type: ignore[arg-type]  # aiohttp takes None for none
            max_line_size=MAX_LINE,
            max_field_size=MAX_LINE,
        )
        # aiohttp's C parser refuses methods it does not know (FOO) with a 400 before any app
        # sees them; its Python parser takes any token, so the app answers 405 with Allow, as
        # Go's server does. The requests here are small: parsing them in Python costs little.
        self._parser = HttpRequestParserPy(
            self, front.loop, DEFAULT_CHUNK_SIZE, max_line_size=MAX_LINE, max_field_size=MAX_LINE,
            payload_exception=RequestPayloadError, max_msg_queue_size=MAX_MSG_QUEUE_SIZE,
        )  # fmt: skip
        self.connection = connection
        self._front = front

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connection.abort = functools.partial(_reset, transport)
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._front.closed(self.connection)
        super().connection_lost(exc)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,  # noqa: ARG002 - aiohttp's; it may quote the input
    ) -> web.StreamResponse:
        """A request aiohttp could not parse: one debug line, no traceback, and an answer that
        quotes nothing (aiohttp's own would echo the bad line or header, a token with it)."""
        log.debug("bad request", status=status, error=type(exc).__name__ if exc else None)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was under way")
        answer = web.Response(status=status, text=f"{HTTPStatus(status).phrase}\n")
        answer.headers["Server"] = SERVER
        answer.force_close()
        return answer

    def log_exception(self, *_: Any, **kwargs: Any) -> None:
        """aiohttp's other error reports, as one masked line, without the traceback."""
        log.error("HTTP protocol error", error=repr(kwargs.get("exc_info")))

    def data_received(self, data: bytes) -> None:
        if data and self.connection.idle:
            self._front.request_started(self.connection)
        super().data_received(data)


class _Front:
    """The open connections, in the order they began to wait for a request, and the limit."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int, read_timeout: float) -> None:
        self.loop = loop
        self.limit = limit
        self.read_timeout = read_timeout
        self.open: set[_Connection] = set()
        self.waiting: OrderedDict[_Connection, None] = OrderedDict()
        self.room = asyncio.Event()

    def accepted(self, connection: _Connection) -> None:
        self.open.add(connection)
        self.waiting[connection] = None
        self._arm(connection)

    def request_started(self, connection: _Connection) -> None:
        """The first byte of a keep-alive connection's next request: its deadline starts."""
        connection.idle = False
        self._arm(connection)

    def arrived(self, connection: _Connection) -> None:
        """The whole request is in (head and body, or a refusal from its head alone): its
        deadline ends, and the connection is serving, so it may not be evicted."""
        if connection.deadline is not None:
            connection.deadline.cancel()
            connection.deadline = None
        connection.idle = False
        self.waiting.pop(connection, None)

    def served(self, connection: _Connection) -> None:
        """The response is sent: the connection waits for its next request."""
        connection.idle = True
        if connection in self.open:
            self.waiting[connection] = None
            self.room.set()

    def closed(self, connection: _Connection) -> None:
        self.arrived(connection)
        self.open.discard(connection)
        self.room.set()

    def full(self) -> bool:
        return len(self.open) >= self.limit

    def evict(self) -> bool:
        """Close the connection that has waited longest for its request, if one waits."""
        if not self.waiting:
            return False
        oldest, _ = self.waiting.popitem(last=False)
        self.open.discard(oldest)
        oldest.abort()
        return True

    def _arm(self, connection: _Connection) -> None:
        if connection.deadline is not None:
            connection.deadline.cancel()
        connection.deadline = self.loop.call_later(self.read_timeout, self._expire, connection)

    def _expire(self, connection: _Connection) -> None:
        connection.deadline = None
        log.debug("request not in by its deadline; connection closed")
        connection.abort()


_LINGER_NONE = struct.pack("ii", 1, 0)


def _reset(transport: asyncio.BaseTransport) -> None:
    """Close a connection at once, with a reset: what the kernel still holds for a client that
    does not read is dropped rather than sent on after the close."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_NONE)
    transport.abort()  # type: ignore[attr-defined]


def _listening_socket(host: str, port: int) -> socket.socket:
    """Bound and listening, dual-stack for an empty host where the system has it."""
    if not host and socket.has_dualstack_ipv6():
        sock = socket.create_server(
            ("::", port), family=socket.AF_INET6, backlog=BACKLOG, dualstack_ipv6=True
        )
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # ":9879" means every interface, as in Prometheus.
        sock = socket.create_server(
            (host or "0.0.0.0", port),  # noqa: S104
            family=family,
            backlog=BACKLOG,
        )
    sock.setblocking(False)  # noqa: FBT003 - the stdlib's signature
    return sock


WRITE_CHUNK = 256 * 1024
WRITE_AS_IS = 64 * 1024


def _pieces(parts: Iterable[bytes], room: Callable[[], int]) -> Iterator[bytes | memoryview]:
    """The body in pieces, each written once the last has been taken. Small parts (a family's
    header, a deflate segment) are joined up to about WRITE_CHUNK, so that a scrape is not
    thousands of writes. Parts of WRITE_AS_IS or more go as they are, without a copy; what is
    left of one beyond WRITE_CHUNK is cut to what the socket takes now (`room`, asked for each
    such piece), and never below WRITE_CHUNK. A piece the kernel takes whole leaves nothing in
    the transport's buffer, so a reader that stops reading holds at most about WRITE_CHUNK of
    ours, while one that keeps up gets pieces as large as its socket's buffer: at 10,000 jobs,
    1.06-1.14x a static server's scrape where fixed 256 KiB pieces made 1.20-1.33x (and fixed
    1 MiB pieces held 1 MiB for each reader that stopped)."""
    pending: list[bytes] = []
    size = 0
    for part in parts:
        if len(part) >= WRITE_AS_IS:
            if pending:
                yield b"".join(pending)
                pending, size = [], 0
            view = memoryview(part)
            while view:
                cut = max(WRITE_CHUNK, room()) if len(view) > WRITE_CHUNK else WRITE_CHUNK
                yield view[:cut]
                view = view[cut:]
            continue
        pending.append(part)
        size += len(part)
        if size >= WRITE_CHUNK:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


def _room(transport: asyncio.BaseTransport | None) -> Callable[[], int]:
    """How many bytes the kernel takes now, whole, into the transport's socket: half of
    SO_SNDBUF (the kernel counts its own overhead in that) less what is queued and not yet
    acknowledged (SIOCOUTQ). Always 0 through TLS, whose layer keeps buffers of its own, and
    where the socket cannot tell."""
    if transport is None or transport.get_extra_info("sslcontext") is not None:
        return lambda: 0
    sock = transport.get_extra_info("socket")
    if sock is None:
        return lambda: 0

    def room() -> int:
        try:
            size: int = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            (queued,) = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4)))
        except OSError:
            return 0
        return max(0, size // 2 - int(queued))

    return room


def _environ(request: web.BaseRequest) -> Environ:
    """The WSGI environ of a request whose head has arrived (no body yet)."""
    environ: Environ = {
        "REQUEST_METHOD": request.method,
        "PATH_INFO": unquote(request.raw_path.partition("?")[0], "latin-1"),
        "QUERY_STRING": request.query_string,
        RAW_URI: request.raw_path,
        "SERVER_PROTOCOL": f"HTTP/{request.version.major}.{request.version.minor}",
        "wsgi.url_scheme": request.scheme,
        "wsgi.input": io.BytesIO(),
    }
    for name, value in request.headers.items():
        key = name.upper().replace("-", "_")
        if key in {"CONTENT_TYPE", "CONTENT_LENGTH"}:
            environ[key] = value
        else:
            key = f"HTTP_{key}"
            environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


class HttpServer:
    """The app served from an event loop on a background thread; `port` is the bound port
    (useful with :0). `tls` is a context, or a callable giving the current one for each new
    connection (rotated certificates)."""

    def __init__(
        self,
        app: ExporterApp,
        address: str,
        tls: TlsSource = None,
        max_connections: int = MAX_CONNECTIONS,
        read_timeout: float = READ_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
    ) -> None:
        host, port = parse_listen_address(address)
        self._app = app
        self._sock = _listening_socket(host, port)
        self.port: int = self._sock.getsockname()[1]
        self._tls = tls
        self._max_connections = max_connections
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._loop = asyncio.new_event_loop()  # run, then closed, by the server's thread
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self._scrapes = _Lane(SCRAPE_THREADS, f"http-{self.port}-scrape")
        self._work = _Lane(WORK_THREADS, f"http-{self.port}-work")
        self._checks = _Lane(BasicAuth.MAX_CHECKS, f"http-{self.port}-auth")
        self._busy = 0
        self._idle = asyncio.Event()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()

    @property
    def connections(self) -> tuple[int, int]:
        """(open, waiting for their request) connections, as the server counts them."""
        front = getattr(self, "_front", None)
        return (0, 0) if front is None else (len(front.open), len(front.waiting))

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._front = _Front(self._loop, self._max_connections, self._read_timeout)
        self._slots = asyncio.Semaphore(BasicAuth.MAX_CHECKS)
        self._server = web.Server(self._handle, loop=self._loop)
        self._accepting = self._loop.create_task(self._accept())
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()

    async def _accept(self) -> None:
        front = self._front
        failing = False  # accept() failing (out of file descriptors): logged once per streak
        while True:
            while front.full() and not front.waiting:
                front.room.clear()
                await front.room.wait()
            try:
                sock, _ = await self._loop.sock_accept(self._sock)
            except OSError as exc:  # out of file descriptors, say: wait, do not spin
                if not failing:
                    log.warning("cannot accept connections; retrying every 0.1 s",
                                error=exc.strerror or str(exc))  # fmt: skip
                failing = True
                await asyncio.sleep(0.1)
                continue
            if failing:
                log.warning("accepting connections again")
                failing = False
            if front.full() and not front.evict():
                # Every connection's request arrived meanwhile: this one waits its turn.
                while front.full():
                    front.room.clear()
                    await front.room.wait()
            # sock_accept returns at once while the backlog holds connections: without this,
            # a burst would be accepted (and would evict) before any head already sent is read.
            await asyncio.sleep(0)
            connection = _Connection(sock.close)
            front.accepted(connection)
            opening = self._loop.create_task(self._open(sock, connection))
            opening.add_done_callback(functools.partial(self._opened, sock, connection))
            connection.abort = opening.cancel  # until the protocol takes over

    async def _open(self, sock: socket.socket, connection: _Connection) -> None:
        """Serve a connection; its TLS handshake counts against its deadline."""
        tls = self._tls() if callable(self._tls) else self._tls
        await self._loop.connect_accepted_socket(
            lambda: _Protocol(self._server, connection, self._front),
            sock,
            ssl=tls,
            ssl_handshake_timeout=self._read_timeout if tls else None,
        )

    def _opened(
        self, sock: socket.socket, connection: _Connection, opening: asyncio.Task[None]
    ) -> None:
        """A connection that never got its protocol (evicted, cut at its deadline, or a failed
        handshake) is closed and leaves the limit."""
        failed = opening.cancelled() or opening.exception() is not None
        if failed:
            if not opening.cancelled():
                log.debug("connection not opened", error=type(opening.exception()).__name__)
            sock.close()
            self._front.closed(connection)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        protocol = request.protocol
        assert isinstance(protocol, _Protocol)
        connection = protocol.connection
        self._busy += 1
        self._idle.clear()
        try:
            try:
                answer = await self._answer(request, connection)
            except (ConnectionError, RequestPayloadError) as exc:
                # The body did not come whole: cut off at its deadline, or broken.
                log.debug("request body not read", error=type(exc).__name__)
                connection.abort()
                answer = self._app.refusal(request.path, HTTPStatus.BAD_REQUEST,
                                           "the body did not arrive")  # fmt: skip
            except Exception:
                log.exception("bug in the exporter's HTTP front end", path=request.path)
                answer = self._app.refusal(request.path, HTTPStatus.INTERNAL_SERVER_ERROR,
                                           "internal server error")  # fmt: skip
            return await self._send(request, answer, connection)
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.set()
            self._front.served(connection)

    async def _answer(self, request: web.BaseRequest, connection: _Connection) -> Answer:
        front = self._front
        if not request.can_read_body:
            front.arrived(connection)  # nothing more to come: checking it may take its time
        elif connection.deadline is None:
            front.request_started(connection)  # pipelined behind the last: its own deadline
        environ = _environ(request)
        check = self._app.guard(environ)
        if isinstance(check, Credentials):
            check = self._app.guard(environ, await self._verify(check))
            assert not isinstance(check, Credentials)  # given a verdict, it decides
        if check is None:
            try:
                body = await self._body(request)
            finally:
                front.arrived(connection)
            if isinstance(body, Answer):
                return body
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        front.arrived(connection)
        if check is not None:
            return check
        path = environ["PATH_INFO"]
        if path == "/-/healthy":
            return self._call(environ)  # nothing to wait for: answered on the loop
        lane = self._scrapes if path in {self._app.telemetry_path, "/-/ready"} else self._work
        return await self._loop.run_in_executor(lane, self._call, environ)

    async def _verify(self, credentials: Credentials) -> Verdict:
        auth = self._app.auth
        assert auth is not None
        try:
            async with asyncio.timeout(auth.CHECK_WAIT):
                await self._slots.acquire()
        except TimeoutError:
            return Verdict.BUSY
        try:
            verdict: Verdict = await self._loop.run_in_executor(
                self._checks, auth.verify, credentials
            )
        finally:
            self._slots.release()
        return verdict

    async def _body(self, request: web.BaseRequest) -> bytes | Answer:
        """The body (the guard has seen its length), read now that the request may go on;
        the request's deadline still runs. A chunked body is cut at MAX_BODY."""
        body = b""
        while chunk := await request.content.read(MAX_BODY + 1 - len(body)):
            body += chunk
            if len(body) > MAX_BODY:
                return self._app.too_large(request.path)
        return body

    def _call(self, environ: Environ) -> Answer:
        started: list[tuple[str, list[tuple[str, str]]]] = []

        def start_response(status: str, headers: list[tuple[str, str]], *_: Any) -> None:
            started.append((status, headers))

        try:
            body = list(self._app(environ, start_response))
        except Exception:
            log.exception("bug in the exporter's HTTP handler", path=environ.get("PATH_INFO"))
            path = environ.get("PATH_INFO") or "/"
            return self._app.refusal(
                path, HTTPStatus.INTERNAL_SERVER_ERROR, "internal server error"
            )
        status, headers = started[-1]
        return Answer(status, headers, body)

    async def _send(
        self, request: web.BaseRequest, answer: Answer, connection: _Connection
    ) -> web.StreamResponse:
        code, _, reason = answer.status.partition(" ")
        response = web.StreamResponse(status=int(code), reason=reason or None)
        for name, value in answer.headers:
            if name.lower() != "content-length":  # counted here, from the parts
                response.headers.add(name, value)
        response.headers["Server"] = SERVER
        length = sum(len(part) for part in answer.body)
        if int(code) not in {204, 304}:
            response.content_length = length
        try:
            async with asyncio.timeout(self._write_timeout):
                await response.prepare(request)
                if request.method != "HEAD":
                    for piece in _pieces(answer.body, _room(request.transport)):
                        await response.write(piece)
                await response.write_eof()
        except TimeoutError:
            log.debug("response not read by its deadline; connection closed")
            connection.abort()
        except ConnectionError:
            pass  # the client went away
        return response

    def stop(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop accepting; let in-flight responses run for `grace`; then close every
        connection. Returns within about grace + 2 s whatever the clients do."""
        if self._thread.is_alive():
            done = asyncio.run_coroutine_threadsafe(self._shutdown(grace), self._loop)
            with contextlib.suppress(Exception):
                done.result(grace + 1.0)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(1.0)
        elif not self._loop.is_closed():
            self._loop.close()  # never started
        self._sock.close()
        for lane in (self._scrapes, self._work, self._checks):
            lane.shutdown(wait=False)

    async def _shutdown(self, grace: float) -> None:
        self._accepting.cancel()
        front = self._front
        while front.waiting:
            front.evict()
        if self._busy:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._idle.wait()
        for connection in list(front.open):
            connection.abort()
        front.open.clear()
