"""The exporter's own HTTP endpoint: /metrics, the status page at /, /-/healthy and /-/ready.

A plain WSGI app on a threading server from the standard library; /metrics is client_python's
own WSGI app, so content negotiation (OpenMetrics, gzip) works as in every Python exporter.
"""

from __future__ import annotations

import socket
import threading
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from exporter import status_page

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from prometheus_client.registry import CollectorRegistry

    from exporter.store import JobRecord

StartResponse = Any
Environ = dict[str, Any]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _DualStackServer(_Server):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # scrapes every few seconds are not news; errors are logged by the app


def parse_listen_address(address: str) -> tuple[str, int]:
    """`:9879`, `127.0.0.1:9879` or `[::1]:9879` -> (host, port); empty host = all interfaces."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid listen address {address!r}; expected [host]:port")
    return host.strip("[]"), int(port)


def make_app(
    registry: CollectorRegistry,
    telemetry_path: str,
    ready: Callable[[], bool],
    jobs: Callable[[], Iterable[JobRecord]] = tuple,
) -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == telemetry_path:
            body: Iterable[bytes] = metrics(environ, start_response)
            return body
        if path == "/-/healthy":
            return _text(start_response, "200 OK", "asyncjob-exporter is Healthy.\n")
        if path == "/-/ready":
            if ready():
                return _text(start_response, "200 OK", "asyncjob-exporter is Ready.\n")
            return _text(start_response, "503 Service Unavailable", "Service Unavailable\n")
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [status_page.render(jobs(), telemetry_path)]
        return _text(start_response, "404 Not Found", "Not Found\n")

    return app


def _text(start_response: StartResponse, status: str, body: str) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
    return [body.encode()]


class HttpServer:
    """The WSGI app on a background thread; `port` is the bound port (useful with :0)."""

    def __init__(
        self, app: Callable[[Environ, StartResponse], Iterable[bytes]], address: str
    ) -> None:
        host, port = parse_listen_address(address)
        server_class: type[_Server] = _Server
        if not host and socket.has_dualstack_ipv6():
            host, server_class = "::", _DualStackServer
        elif ":" in host:
            server_class = type("_V6Server", (_Server,), {"address_family": socket.AF_INET6})
        self._server = make_server(
            host or "0.0.0.0",  # noqa: S104 - ":9879" means every interface, as in Prometheus
            port,
            app,
            server_class=server_class,
            handler_class=_QuietHandler,
        )
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
