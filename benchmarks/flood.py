"""The attackers and the observers of `python -m benchmarks.attack`, on 127.0.0.1 only.

The floods (`trickle`, `loop`) run in a child process of their own, so that their sockets and
threads do not compete with the probes for the measuring process's interpreter: the probes'
latencies are the exporter's, not the attacker's. Every flood stops by itself at its deadline.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import resource
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from collections.abc import Callable

HOST = "127.0.0.1"
PROBE_TIMEOUT = 5.0  # a probe that takes longer has failed
PROBE_EVERY = 0.2  # seconds between one probe's requests
SAMPLE_EVERY = 0.2  # seconds between two readings of the exporter's threads and RSS


def raise_open_files() -> int:
    """Raise the flood process's soft limit of open files to the hard limit. Only there: the
    exporters are started by the measuring process, so they do not inherit it, and must raise
    their own."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


@dataclass(frozen=True, slots=True)
class Trickled:
    """What a trickle flood saw: how long the server held each connection it let go of
    (answered or closed), and the age of each still open when the flood ended."""

    held: tuple[float, ...]
    still_open: tuple[float, ...]
    peak_open: int


@dataclass(slots=True)
class _Conn:
    sock: socket.socket
    opening: bytes
    connected_at: float = 0.0  # 0: the connect is under way
    sent: int = 0  # bytes of the drip sent so far


def trickle(
    port: int,
    connections: int,
    seconds: float,
    openings: tuple[bytes, ...],
    drip: bytes,
    every: float,
) -> Trickled:
    """Hold `connections` connections for `seconds`: each sends its opening (taken in turn from
    `openings`) at once, then the next byte of `drip` every `every` seconds. A connection the
    server lets go of is replaced at the next drip, so the pressure stays on; one event loop
    drives them all."""
    with contextlib.closing(_Trickle(port, openings, drip)) as flood:
        return flood.run(connections, seconds, every)


class _Trickle:
    def __init__(self, port: int, openings: tuple[bytes, ...], drip: bytes) -> None:
        self.port, self.openings, self.drip = port, openings, drip
        self.selector = selectors.DefaultSelector()
        self.held: list[float] = []
        self.started = 0

    def run(self, connections: int, seconds: float, every: float) -> Trickled:
        deadline = time.monotonic() + seconds
        next_drip = time.monotonic()
        peak = 0
        while (now := time.monotonic()) < deadline:
            if now >= next_drip:
                self.drip_all(now)
                for _ in range(connections - len(self.selector.get_map())):
                    self.connect()
                peak = max(peak, len(self.selector.get_map()))
                next_drip = now + every
            for key, _ in self.selector.select(timeout=max(0.0, min(next_drip, deadline) - now)):
                self.ready(key.data, time.monotonic())
        end = time.monotonic()
        ages = tuple(end - conn.connected_at for conn in self.conns() if conn.connected_at)
        return Trickled(tuple(self.held), ages, peak)

    def conns(self) -> list[_Conn]:
        return [key.data for key in self.selector.get_map().values()]

    def connect(self) -> None:
        sock = socket.socket()
        sock.setblocking(False)  # noqa: FBT003 - the socket API's own positional flag
        if sock.connect_ex((HOST, self.port)) not in {0, errno.EINPROGRESS}:
            sock.close()
            return
        opening = self.openings[self.started % len(self.openings)]
        self.selector.register(sock, selectors.EVENT_WRITE, _Conn(sock, opening))
        self.started += 1

    def drop(self, conn: _Conn, now: float) -> None:
        if conn.connected_at:
            self.held.append(now - conn.connected_at)
        self.selector.unregister(conn.sock)
        conn.sock.close()

    def drip_all(self, now: float) -> None:
        for conn in self.conns():
            if conn.connected_at:
                at = conn.sent % len(self.drip)
                try:
                    conn.sock.send(self.drip[at : at + 1])
                except OSError:
                    self.drop(conn, now)
                else:
                    conn.sent += 1

    def ready(self, conn: _Conn, now: float) -> None:
        if conn.connected_at:  # an answer or a close: either way the server let go
            self.drop(conn, now)
            return
        if conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):  # the connect failed
            self.drop(conn, now)
            return
        conn.connected_at = now
        try:
            conn.sock.send(conn.opening)
        except OSError:
            self.drop(conn, now)
            return
        self.selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def close(self) -> None:
        for conn in self.conns():
            conn.sock.close()
        self.selector.close()


def loop(port: int, clients: int, seconds: float, path: str) -> tuple[int, int]:
    """`clients` clients each request `path` over and over on a kept-alive connection for
    `seconds`; returns (answers, failures)."""
    deadline = time.monotonic() + seconds
    counts = [0, 0]
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        while time.monotonic() < deadline:
            ok = _got(conn, path)
            if not ok:
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=10)
            with lock:
                counts[0 if ok else 1] += 1
        conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    return counts[0], counts[1]


def _got(conn: http.client.HTTPConnection, path: str) -> bool:
    """Whether a GET of `path` on `conn` was answered 200 (the whole answer read)."""
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        answer.read()
    except (OSError, http.client.HTTPException):
        return False
    return answer.status == 200


def timed_get(port: int, path: str, timeout: float = PROBE_TIMEOUT) -> tuple[float, bool]:
    """(seconds, answered 200) of one GET on a new connection, as a kubelet probes."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        ok = _got(conn, path)
    finally:
        conn.close()
    took = time.perf_counter() - started
    return took, ok and took < timeout


def first_answer(port: int, request: bytes, cap: float) -> float | None:
    """Seconds until the server answers `request` (sent whole, and no more); None: not within
    `cap` seconds."""
    with socket.create_connection((HOST, port), timeout=cap) as sock:
        started = time.perf_counter()
        sock.sendall(request)
        try:
            got = sock.recv(1)
        except TimeoutError:
            return None
        except OSError:
            got = b""
        took = time.perf_counter() - started
        return took if got or took < cap else None


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] if ordered else 0.0


@dataclass
class Watch:
    """Probes (one thread per path, a GET on a new connection every PROBE_EVERY seconds) and
    a sampler of the exporter's threads and RSS, from `start()` to `stop()`."""

    port: int
    paths: tuple[str, ...]
    sample: Callable[[], tuple[int, int]]  # (threads, RSS bytes) of the exporter now
    latencies: dict[str, list[tuple[float, bool]]] = field(default_factory=dict)
    samples: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._probe, args=(p,)) for p in self.paths]
        self._threads.append(threading.Thread(target=self._sampler))
        self.latencies = {path: [] for path in self.paths}

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(PROBE_TIMEOUT * 4)

    def _probe(self, path: str) -> None:
        while not self._stop.is_set():
            self.latencies[path].append(timed_get(self.port, path))
            self._stop.wait(PROBE_EVERY)

    def _sampler(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, KeyError):
                self.samples.append(self.sample())
            self._stop.wait(SAMPLE_EVERY)

    def summary(self) -> tuple[str, bool]:
        """'path p99 X s (F/N failed)' for each path, and whether all were under 1 s, unfailed."""
        parts, ok = [], True
        for path, results in self.latencies.items():
            failed = sum(1 for _, good in results if not good)
            worst = p99([took for took, _ in results])
            ok = ok and bool(results) and not failed and worst < 1.0
            parts.append(f"{path} p99 {worst:.2f} s ({failed}/{len(results)} failed)")
        return ", ".join(parts), ok
