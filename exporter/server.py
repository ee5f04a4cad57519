"""The exporter's own HTTP endpoint: /metrics, the status page at /, /-/healthy and /-/ready.

A plain WSGI app on a threading server from the standard library. /metrics is one code path:
client_python's encoders chosen by `Accept` (text or OpenMetrics), gzip by `Accept-Encoding`,
`?name[]=` (percent-encoded or not) restricting the families, and concurrent scrapes sharing one
render. The server holds at most `max_connections` connections (beyond that they wait in the
listen backlog), and a client must send its request line and headers within HEADER_TIMEOUT in
all, however it trickles them: a watchdog cuts it off then.
"""

from __future__ import annotations

import contextlib
import heapq
import socket
import ssl
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import structlog
from prometheus_client.exposition import choose_encoder, gzip_accepted

from exporter import status_page
from exporter.api import Api
from exporter.exposition import Exposition
from exporter.logging import redactor
from exporter.webconfig import Verdict

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from prometheus_client.registry import CollectorRegistry

    from exporter.store import JobRecord
    from exporter.webconfig import WebConfig

StartResponse: TypeAlias = Any
Environ: TypeAlias = dict[str, Any]
App: TypeAlias = "Callable[[Environ, StartResponse], Iterable[bytes]]"
CONNECTION_TIMEOUT = 30.0  # idle: the longest wait for the next byte once the headers are in
HEADER_TIMEOUT = 10.0  # the request line and headers, in all
MAX_CONNECTIONS = 512  # as Prometheus's --web.max-connections

log = structlog.get_logger(__name__)


class _Watchdog:
    """One thread that shuts down connections whose headers are not in by their deadline.

    A per-read timeout restarts with every byte, so a client trickling a byte every few seconds
    would hold its thread for ever; this deadline is fixed when the connection is taken.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._heap: list[tuple[float, int, socket.socket]] = []
        self._armed: dict[int, int] = {}  # id(socket) -> sequence number of its live deadline
        self._sequence = 0
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="header-watchdog", daemon=True)
        self._thread.start()

    def arm(self, conn: socket.socket, seconds: float) -> None:
        with self._lock:
            self._sequence += 1
            self._armed[id(conn)] = self._sequence
            heapq.heappush(self._heap, (time.monotonic() + seconds, self._sequence, conn))
        self._wake.set()

    def disarm(self, conn: socket.socket) -> None:
        with self._lock:
            self._armed.pop(id(conn), None)

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def _run(self) -> None:
        while not self._stopped:
            with self._lock:
                now = time.monotonic()
                expired = []
                while self._heap and self._heap[0][0] <= now:
                    _, sequence, conn = heapq.heappop(self._heap)
                    if self._armed.get(id(conn)) == sequence:
                        del self._armed[id(conn)]
                        expired.append(conn)
                wait = self._heap[0][0] - now if self._heap else None
            for conn in expired:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)  # the blocked read returns; the thread ends
            self._wake.wait(wait)
            self._wake.clear()


class _Server(WSGIServer):
    """Connections are served by a pool of at most `max_connections` threads. At the limit the
    accept loop waits for a free slot, so further connections wait in the kernel's backlog
    rather than in memory, and the thread count never exceeds the limit."""

    allow_reuse_address = True
    # socketserver's default backlog is 5: a burst of scrapers would see dropped SYNs and
    # retransmits of 1, 3, 7... seconds. Let the kernel queue a burst instead.
    request_queue_size = 1024
    tls: ssl.SSLContext | None = None
    header_timeout = HEADER_TIMEOUT

    def limit(self, max_connections: int) -> None:
        self.slots = threading.BoundedSemaphore(max_connections)
        name = f"http-{self.server_address[1]}"  # per server: tests run several in one process
        self.pool = ThreadPoolExecutor(max_connections, thread_name_prefix=name)
        self.watchdog = _Watchdog()
        self.closing = False

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = self.socket.accept()
        conn.settimeout(CONNECTION_TIMEOUT)
        if self.tls is not None:
            # The handshake happens in the connection's own thread (finish_request), so a
            # client that never completes it cannot stall the accept loop.
            conn = self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, address

    def process_request(self, request: Any, client_address: Any) -> None:
        while not self.slots.acquire(timeout=0.5):
            if self.closing:
                self.shutdown_request(request)
                return
        try:
            self.pool.submit(self._serve_connection, request, client_address)
        except BaseException:
            self.slots.release()
            self.shutdown_request(request)
            raise

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.watchdog.disarm(request)
            self.shutdown_request(request)
            self.slots.release()

    def server_close(self) -> None:
        super().server_close()
        # In-flight requests finish (a scrape completes); CONNECTION_TIMEOUT and the header
        # deadline bound how long that can take. A bind that failed closes before limit()
        # made the pool: then there is nothing to wait for, and the OSError says why.
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.shutdown(wait=True)

    def finish_request(self, request: Any, client_address: Any) -> None:
        self.watchdog.arm(request, self.header_timeout)  # disarmed once the headers are read
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                log.debug("TLS handshake failed", client=client_address[0], error=str(exc))
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:  # noqa: ARG002
        # A client that hangs up mid-response is routine; no traceback on stderr.
        log.debug("connection error", client=client_address[0], error=repr(sys.exc_info()[1]))


class _DualStackServer(_Server):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class _QuietHandler(WSGIRequestHandler):
    server: _Server

    def parse_request(self) -> bool:
        ok = super().parse_request()  # reads the headers
        self.server.watchdog.disarm(self.connection)  # the request line and headers are in
        return ok

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # scrapes every few seconds are not news; errors are logged by the app


def parse_listen_address(address: str) -> tuple[str, int]:
    """`:9879`, `127.0.0.1:9879` or `[::1]:9879` -> (host, port); empty host = all interfaces."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid listen address {address!r}; expected [host]:port")
    return host.strip("[]"), int(port)


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


class ExporterApp:
    """The routes, behind basic auth (but for the probes, /-/healthy and /-/ready, which a
    kubelet calls without credentials and which say nothing but up or not) and with the
    configured headers."""

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
        self._telemetry_path = telemetry_path
        self._not_ready = not_ready
        self._jobs = jobs
        self._clock = clock  # what the status page calls "now"
        self._api = api or Api(None)  # None: no jobs API and no webhooks
        self._reload_config = reload  # None: --web.enable-lifecycle is off
        self._auth = web.auth if web else None
        self._headers = list(web.headers.items()) if web else []
        self._routes: dict[str, Callable[[Environ, StartResponse], Iterable[bytes]]] = {
            telemetry_path: self._metrics,
            "/-/healthy": self._healthy,
            "/-/ready": self._ready,
            "/-/reload": self._reload,
            "/": self._status,
        }

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == self._telemetry_path:  # labels are masked where they are made; not re-read
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
        if self._auth and path not in PROBES and not Api.open_path(path):
            verdict = self._auth.check(environ.get("HTTP_AUTHORIZATION"))
            if verdict is Verdict.BUSY:
                respond("429 Too Many Requests", [
                    ("Content-Type", "text/plain; charset=utf-8"), ("Retry-After", "1"),
                ])  # fmt: skip
                return [b"Too many password checks at once; retry later\n"]
            if verdict is not Verdict.ALLOWED:
                respond("401 Unauthorized", [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("WWW-Authenticate", 'Basic realm="asyncjob-exporter"'),
                ])  # fmt: skip
                return [b"Unauthorized\n"]
        if Api.serves(path):
            return self._api(environ, respond)
        return self._routes.get(path, _not_found)(environ, respond)

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
        return [status_page.render(self._jobs(), self._telemetry_path, self._clock(), view)]

    def _reload(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if self._reload_config is None:
            return _text(start_response, "403 Forbidden", "Lifecycle API is not enabled.\n")
        if environ.get("REQUEST_METHOD") not in {"POST", "PUT"}:
            return _text(
                start_response, "405 Method Not Allowed", "Only POST or PUT requests allowed.\n"
            )
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


class HttpServer:
    """The WSGI app on a background thread; `port` is the bound port (useful with :0)."""

    def __init__(
        self,
        app: App,
        address: str,
        tls: ssl.SSLContext | None = None,
        max_connections: int = MAX_CONNECTIONS,
        header_timeout: float = HEADER_TIMEOUT,
    ) -> None:
        host, port = parse_listen_address(address)
        server_class: type[_Server] = _Server
        if not host and socket.has_dualstack_ipv6():
            host, server_class = "::", _DualStackServer
        elif ":" in host:
            server_class = type("_V6Server", (_Server,), {"address_family": socket.AF_INET6})
        # ":9879" means every interface, as in Prometheus.
        self._server = server_class((host or "0.0.0.0", port), _QuietHandler)  # noqa: S104
        self._server.set_app(app)
        self._server.tls = tls
        self._server.header_timeout = header_timeout
        self._server.limit(max_connections)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.closing = True  # the accept loop stops waiting for a free slot
        self._server.shutdown()
        self._server.server_close()
        self._server.watchdog.stop()
