"""The HTTP front end: the shared /metrics render, and a transport that slow or hostile clients
cannot blind (deadlines, the connection limit, credentials before bodies, methods)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import bcrypt
import pytest
import requests
import trustme
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from exporter import server as server_module
from exporter.api import Api
from exporter.server import (
    WRITE_AS_IS,
    WRITE_CHUNK,
    ExporterApp,
    HttpServer,
    SharedRender,
    _pieces,
    _room,
    make_app,
)
from exporter.webconfig import load_web_config

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from conftest import Harness
    from prometheus_client.metrics_core import Metric

    from exporter.webconfig import WebConfig


class Counting(Collector):
    def __init__(self) -> None:
        self.renders = 0

    def collect(self) -> Iterator[Metric]:
        self.renders += 1
        yield GaugeMetricFamily(
            "renders", "How many times the registry was collected.", value=self.renders
        )


def test_a_scrape_is_answered_by_a_render_started_after_it_arrived() -> None:
    registry = CollectorRegistry()
    counting = Counting()
    registry.register(counting)
    shared = SharedRender(registry)
    queued_earlier = time.monotonic()
    _, parts = shared.get("", gzipped=False)
    first = b"".join(parts)
    assert b"renders 1.0" in first
    # A scrape that arrived before that render started (it queued behind it) shares it...
    assert shared.get("", gzipped=False, arrived=queued_earlier) == (
        "text/plain; version=0.0.4; charset=utf-8",
        parts,
    )
    assert counting.renders == 1
    # ...one that arrives now gets a fresh render.
    _, again = shared.get("", gzipped=False)
    assert b"renders 2.0" in b"".join(again)
    # The compressed variant is rendered (and compressed) once for the scrapes that share it:
    # gzip members, one valid stream.
    arrived = time.monotonic()
    _, zipped = shared.get("", gzipped=True)
    assert b"renders 3.0" in gzip.decompress(b"".join(zipped))
    assert shared.get("", gzipped=True, arrived=arrived)[1] is zipped
    assert counting.renders == 3
    content_type, body = shared.get("application/openmetrics-text; version=1.0.0", gzipped=False)
    assert content_type.startswith("application/openmetrics-text")
    assert b"".join(body).endswith(b"# EOF\n")


@pytest.mark.parametrize(
    "query",
    ["name[]=asyncjob_up&name[]=asyncjob_build_info", "name%5B%5D=asyncjob_up&name%5B%5D=asyncjob_build_info"],
    ids=["raw", "percent-encoded"],
)  # fmt: skip
@pytest.mark.parametrize("gzipped", [False, True])
@pytest.mark.parametrize("openmetrics", [False, True])
def test_name_filter_in_every_form(
    make_harness: Callable[..., Harness], query: str, gzipped: bool, openmetrics: bool
) -> None:
    """?name[]= restricts the families, however the brackets are written, with gzip and in
    OpenMetrics too: one code path for every scrape."""
    h = make_harness()
    headers = {"Accept-Encoding": "gzip" if gzipped else "identity"}
    if openmetrics:
        headers["Accept"] = "application/openmetrics-text; version=1.0.0"
    response = requests.get(f"{h.url}/metrics?{query}", headers=headers, timeout=5)
    assert response.status_code == 200
    assert (response.headers.get("Content-Encoding") == "gzip") == gzipped
    text = response.text  # requests undoes the gzip
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert families == {"asyncjob_up", "asyncjob_build_info"}
    assert text.endswith("# EOF\n") == openmetrics


def _serve(app: ExporterApp | None = None, **options: Any) -> HttpServer:
    server = HttpServer(app or make_app(CollectorRegistry(), "/metrics", lambda: None),
                        "127.0.0.1:0", **options)  # fmt: skip
    server.start()
    return server


def _http_threads(server: HttpServer) -> int:
    return sum(t.name.startswith(f"http-{server.port}") for t in threading.enumerate())


def _in_flight(
    server: HttpServer, get: Callable[[], requests.Response]
) -> tuple[threading.Thread, list[requests.Response]]:
    """Send one request from a thread, and wait until the server holds it: one connection
    open, not waiting for its request. The answer is appended to the list."""
    answer: list[requests.Response] = []
    thread = threading.Thread(target=lambda: answer.append(get()))
    thread.start()
    for _ in range(50):
        if server.connections == (1, 0):
            break
        time.sleep(0.05)
    return thread, answer


def _tls_web_config(tmp_path: Path) -> tuple[WebConfig, Path]:
    """A web config serving TLS with a certificate for 127.0.0.1, and the CA file to trust."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config: {{cert_file: {cert_file}, key_file: {key_file}}}\n")
    return load_web_config(str(web)), ca_file


def _closed(conn: socket.socket, within: float) -> bool:
    """Whether the server closes this connection within `within` seconds (reads what it sent)."""
    conn.settimeout(within)
    try:
        while conn.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True  # reset
    return True


def test_slow_clients_cannot_blind_the_server() -> None:
    """A bounded slowloris (60 clients trickling a byte every 0.3 s, for at most 4 s) against a
    limit of 20 connections and a 1 s read deadline: every scrape is answered, the server never
    holds more than 20 connections, each trickler is cut off, and no thread is started for any
    of them."""
    server = _serve(max_connections=20, read_timeout=1.0)
    threads = _http_threads(server)
    clients = []
    try:
        for _ in range(60):
            conn = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            conn.sendall(b"GET /metrics HTTP/1.1\r\n")
            clients.append(conn)
        peak = 0
        scrapes: list[int] = []
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            for conn in clients:
                with contextlib.suppress(OSError):
                    conn.sendall(b"X")
            scrapes.append(
                requests.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).status_code
            )
            peak = max(peak, server.connections[0])
            time.sleep(0.3)
        assert scrapes
        assert set(scrapes) == {200}
        assert peak <= 20
        assert _http_threads(server) == threads
        assert all(_closed(conn, 0.5) for conn in clients)
    finally:
        for conn in clients:
            conn.close()
        server.stop()


def test_a_trickled_body_is_cut_at_the_deadline_of_the_whole_request() -> None:
    """Headers promising 60,000 bytes, then a byte every 0.2 s: the connection is closed once
    the request's 1 s deadline (head and body together) has passed, however steady the trickle."""
    registry = CollectorRegistry()
    app = make_app(registry, "/metrics", lambda: None, api=Api(None, jobs=False))
    server = _serve(app, read_timeout=1.0)
    try:
        conn = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        conn.sendall(b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n")
        started, cut = time.monotonic(), None
        for _ in range(25):  # 5 s at most
            try:
                conn.sendall(b"x")
            except OSError:
                cut = time.monotonic() - started
                break
            if _closed(conn, 0.2):
                cut = time.monotonic() - started
                break
        conn.close()
        assert cut is not None, "the trickling body was never cut off"
        assert cut < 3.0
    finally:
        server.stop()


def test_credentials_are_checked_before_the_body_is_read(tmp_path: Path) -> None:
    """With basic auth, a request without credentials that announces a body it never sends is
    answered 401 at once: the server did not wait for the body."""
    web = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    web.write_text(f"basic_auth_users: {{prometheus: '{hashed}'}}\n")
    app = make_app(CollectorRegistry(), "/metrics", lambda: None, web=load_web_config(str(web)))
    server = _serve(app, read_timeout=30.0)
    try:
        conn = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        conn.sendall(b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n")
        conn.settimeout(5)
        assert conn.recv(100).startswith(b"HTTP/1.1 401")
        conn.close()
    finally:
        server.stop()


def test_a_connection_whose_request_arrived_is_never_evicted() -> None:
    """Limit 2: while one request is being served (a slow status page) and new connections keep
    arriving, the idle ones make room, and the request being served gets its whole answer."""
    release = threading.Event()

    def slow_jobs() -> tuple[()]:
        release.wait(5)
        return ()

    app = make_app(CollectorRegistry(), "/metrics", lambda: None, slow_jobs)
    server = _serve(app, max_connections=2, read_timeout=5.0)
    try:
        page = f"http://127.0.0.1:{server.port}/"
        busy, answer = _in_flight(server, lambda: requests.get(page, timeout=10))
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(5)]
        scrape = requests.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5)
        assert scrape.status_code == 200
        release.set()
        busy.join(10)
        assert answer
        assert answer[0].status_code == 200
        assert b"</html>" in answer[0].content
        assert sum(_closed(conn, 0.5) for conn in idle) >= 4  # made room
        for conn in idle:
            conn.close()
    finally:
        release.set()
        server.stop()


class Big(Collector):
    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("big", "Many samples.", labels=["n"])
        for n in range(200_000):
            family.add_metric([f"{n:040d}"], n)
        yield family


def test_a_response_the_client_does_not_read_is_cut_off() -> None:
    """A client asks for 10 MB of metrics and reads nothing: after the 1 s write deadline the
    server closes the connection and counts it no more."""
    registry = CollectorRegistry()
    registry.register(Big())
    server = _serve(make_app(registry, "/metrics", lambda: None), write_timeout=1.0)
    try:
        conn = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(100):  # 5 s at most
            time.sleep(0.05)
            if server.connections[0] == 0:
                break
        assert server.connections[0] == 0
        conn.close()
    finally:
        server.stop()


def test_a_body_is_cut_to_the_room_in_the_socket_and_never_below_a_write_chunk() -> None:
    """Large parts go out as views of themselves: what is left of one beyond WRITE_CHUNK is cut
    to the room the socket reports (asked for each such piece), or to WRITE_CHUNK when there is
    less; small parts are joined up to WRITE_CHUNK; nothing is lost or reordered."""
    mib = 1024 * 1024
    big = bytes(range(256)) * (3 * mib // 256)  # 3 MiB
    small = [b"# HELP x\n", b"# TYPE x gauge\n"] * 20_000  # 460 KB of small parts
    block = bytes(WRITE_CHUNK)  # as large as a piece: sent whole, the socket not asked
    parts = [b"head\n", big, *small, big, block, b"tail\n"]
    rooms = iter([0, 2 * mib, 5 * mib] + [0] * 11)  # asked 3 times for one part, 11 for the other

    pieces = list(_pieces(parts, lambda: next(rooms)))

    assert b"".join(pieces) == b"".join(parts)
    sizes = [len(piece) for piece in pieces]
    assert sizes[:4] == [5, WRITE_CHUNK, 2 * mib, mib - WRITE_CHUNK]  # room 0, 2 MiB, 5 MiB
    assert all(isinstance(p, memoryview) and p.obj is big for p in pieces[1:4])
    joined = sizes[4:6]  # the small parts, joined: 460 KB in two pieces
    assert joined[0] >= WRITE_CHUNK > joined[1]
    assert sizes[6:-2] == [WRITE_CHUNK] * 12  # the second big part, with no room reported
    assert sizes[-2:] == [WRITE_CHUNK, 5]
    whole = pieces[-2]
    assert isinstance(whole, memoryview)
    assert whole.obj is block
    assert next(rooms, None) is None


def test_the_room_a_socket_reports_is_taken_whole_until_none_is_left() -> None:
    """The kernel takes each piece cut to the room `_room` reports whole, without waiting, while
    the reader reads nothing: so what the server writes is never left in the transport's
    buffer, beyond a piece of WRITE_CHUNK when there is no room."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        reader = socket.create_connection(listener.getsockname())
        writer, _ = listener.accept()
        with reader, writer:
            writer.settimeout(0.0)
            room = _room(asyncio.BaseTransport({"socket": writer}))
            assert room() > WRITE_AS_IS
            for _ in range(1000):
                free = room()
                if not free:
                    break
                assert writer.send(bytes(free)) == free
            assert room() == 0


def test_through_tls_a_body_goes_in_write_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS keeps buffers of its own, so the socket's room says nothing there: a TLS connection
    claims none and its body goes in WRITE_CHUNK pieces, while a plain one on the same server
    reports the room in its socket."""
    claimed: list[int] = []

    def spied(transport: asyncio.BaseTransport | None) -> Callable[[], int]:
        room = _room(transport)
        claimed.append(room())
        return room

    monkeypatch.setattr(server_module, "_room", spied)
    loaded, ca_file = _tls_web_config(tmp_path)
    registry = CollectorRegistry()
    registry.register(Big())
    tls = _serve(make_app(registry, "/metrics", lambda: None, web=loaded), tls=loaded.tls)
    plain = _serve(make_app(registry, "/metrics", lambda: None))
    try:
        got = requests.get(f"https://127.0.0.1:{tls.port}/metrics", verify=str(ca_file),
                           headers={"Accept-Encoding": "identity"}, timeout=30)  # fmt: skip
        assert got.status_code == 200
        assert got.content.count(b"\nbig{") == 200_000
        assert claimed == [0]
        requests.get(f"http://127.0.0.1:{plain.port}/metrics", timeout=30)
        assert claimed[1] > 0
    finally:
        tls.stop()
        plain.stop()


def test_stop_ends_in_time_whatever_the_clients_do() -> None:
    """stop() returns within grace + 1 s while a client has requested 10 MB and reads nothing,
    and another trickles its headers."""
    registry = CollectorRegistry()
    registry.register(Big())
    server = _serve(make_app(registry, "/metrics", lambda: None))
    stuck = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    slow.sendall(b"GET / HTTP/1.1\r\n")
    time.sleep(1.0)  # the render is done and the response stuck in the socket
    started = time.monotonic()
    server.stop(grace=0.5)
    took = time.monotonic() - started
    assert _closed(stuck, 2.0)
    assert _closed(slow, 2.0)
    stuck.close()
    slow.close()
    assert took < 1.5 + 1.0


@pytest.mark.parametrize("path", ["/metrics", "/", "/-/healthy", "/-/ready"])
def test_read_endpoints_take_get_and_head_and_refuse_the_rest(path: str) -> None:
    """GET and HEAD are served (HEAD without a body, with the length GET would have); any other
    method gets 405 with an Allow header."""
    server = _serve()
    base = f"http://127.0.0.1:{server.port}{path}"
    try:
        plain = {"Accept-Encoding": "identity"}
        got = requests.get(base, headers=plain, timeout=5)
        head = requests.head(base, headers=plain, timeout=5)
        assert got.status_code == head.status_code == 200
        assert head.content == b""
        assert head.headers["Content-Length"] == str(len(got.content))
        for method in ("DELETE", "POST", "FOO"):
            refused = requests.request(method, base, timeout=5)
            assert refused.status_code == 405, method
            assert refused.text == f"{method} is not allowed here; use GET, HEAD\n"
            assert refused.headers["Allow"] == "GET, HEAD"
    finally:
        server.stop()


def test_reload_takes_post_only_where_the_readme_says_post() -> None:
    """/-/reload takes POST (and PUT, as Prometheus does); GET gets 405 with Allow."""
    server = _serve()
    try:
        refused = requests.get(f"http://127.0.0.1:{server.port}/-/reload", timeout=5)
        assert refused.status_code == 405
        assert refused.headers["Allow"] == "POST, PUT"
        assert (
            requests.post(f"http://127.0.0.1:{server.port}/-/reload", timeout=5).status_code == 403
        )
    finally:
        server.stop()


def test_name_filter_selects_process_and_python_families(
    make_harness: Callable[..., Harness],
) -> None:
    """?name[]= finds the families client_python adds (process_, python_), not only ours."""
    h = make_harness()
    wanted = ["process_cpu_seconds_total", "python_info", "python_gc_objects_collected_total"]
    query = "&".join(f"name[]={name}" for name in wanted)
    text = requests.get(f"{h.url}/metrics?{query}", timeout=5).text
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert families == set(wanted)


def test_a_tls_connection_that_never_handshakes_is_cut_at_the_deadline(tmp_path: Path) -> None:
    """A client that connects to the TLS port and sends nothing holds its place only until the
    read deadline: the handshake counts against it."""
    loaded, _ = _tls_web_config(tmp_path)
    server = _serve(make_app(CollectorRegistry(), "/metrics", lambda: None, web=loaded),
                    tls=loaded.tls, read_timeout=1.0)  # fmt: skip
    try:
        silent = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        assert _closed(silent, 3.0)
        silent.close()
        # The client sees the close a moment before the server's books do: wait for them.
        for _ in range(40):
            if server.connections == (0, 0):
                break
            time.sleep(0.05)
        assert server.connections == (0, 0)
    finally:
        server.stop()


def test_connections_trickling_bodies_make_room_for_a_scrape() -> None:
    """Limit 3, and three connections whose heads are in but whose bodies trickle: their
    requests have not arrived, so a scrape still gets served, the oldest making room."""
    server = _serve(max_connections=3, read_timeout=30.0)
    tricklers = []
    try:
        for _ in range(3):
            conn = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            conn.sendall(b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n{")
            tricklers.append(conn)
        for _ in range(50):  # until all three are taken in
            if server.connections[0] == 3:
                break
            time.sleep(0.05)
        scrape = requests.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5)
        assert scrape.status_code == 200
        assert _closed(tricklers[0], 1.0)  # the longest waiting made room
    finally:
        for conn in tricklers:
            conn.close()
        server.stop()


def test_a_request_being_checked_is_not_evicted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Limit 2, basic auth: a scrape whose credentials are still being checked (bcrypt held
    back here) has arrived whole, so the connections that come meanwhile do not evict it."""
    web = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    web.write_text(f"basic_auth_users: {{prometheus: '{hashed}'}}\n")
    release = threading.Event()
    real = bcrypt.checkpw

    def held(password: bytes, hashed: bytes) -> bool:
        release.wait(5)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", held)
    app = make_app(CollectorRegistry(), "/metrics", lambda: None, web=load_web_config(str(web)))
    server = _serve(app, max_connections=2, read_timeout=5.0)
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        scrape, answer = _in_flight(
            server, lambda: requests.get(url, auth=("prometheus", "pw"), timeout=10)
        )
        others = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(5)]
        time.sleep(0.3)
        release.set()
        scrape.join(10)
        assert answer
        assert answer[0].status_code == 200
        for conn in others:
            conn.close()
    finally:
        release.set()
        server.stop()


def test_a_pipelined_request_has_its_own_deadline() -> None:
    """A request sent right behind another on the same connection, whose body never comes, is
    cut at the read deadline too."""
    server = _serve(read_timeout=1.0)
    try:
        conn = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        conn.sendall(
            b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
        )
        started = time.monotonic()
        assert _closed(conn, 4.0)
        assert time.monotonic() - started < 3.0
        conn.close()
    finally:
        server.stop()


def test_a_request_the_parser_refuses_is_answered_without_quoting_it(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A malformed header (here a control character in a token) gets a bare 400: aiohttp's own
    answer and log would quote the line, and with it the token."""
    server = _serve()
    try:
        conn = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        conn.sendall(
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Webhook-Token: tok-123456789\x01\r\n\r\n"
        )
        conn.settimeout(5)
        answer = conn.recv(4096)
        conn.close()
        assert answer.split(b" ")[1] == b"400"
        assert b"tok-123456789" not in answer
        assert b"aiohttp" not in answer
        assert answer.endswith(b"\r\n\r\nBad Request\n")
    finally:
        server.stop()
    captured = capfd.readouterr()
    assert "tok-123456789" not in captured.err + captured.out
    assert "Traceback" not in captured.err
