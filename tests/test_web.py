"""--web.config.file: real TLS (a CA and certificates made here), mTLS, basic auth, headers."""

from __future__ import annotations

import base64
import threading
import time
from typing import TYPE_CHECKING, Any

import bcrypt
import pytest
import requests
import trustme
import yaml

from exporter.config import ConfigError
from exporter.server import HttpServer, make_app
from exporter.webconfig import BasicAuth, TlsFiles, Verdict, _decode_basic, load_web_config

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from conftest import Harness

PASSWORD = "s3cret-scrape-pass"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


class Pki:
    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        self.ca_file = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.cert_file, self.key_file = directory / "server.pem", directory / "server.key"
        server.cert_chain_pems[0].write_to_path(str(self.cert_file))
        server.private_key_pem.write_to_path(str(self.key_file))
        client = self.ca.issue_cert("scraper@example.test")
        self.client = (str(directory / "client.pem"), str(directory / "client.key"))
        client.cert_chain_pems[0].write_to_path(self.client[0])
        client.private_key_pem.write_to_path(self.client[1])
        stranger = trustme.CA().issue_cert("intruder@example.test")
        self.stranger = (str(directory / "stranger.pem"), str(directory / "stranger.key"))
        stranger.cert_chain_pems[0].write_to_path(self.stranger[0])
        stranger.private_key_pem.write_to_path(self.stranger[1])


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture
def serve_with(
    make_harness: Callable[..., Harness], tmp_path: Path
) -> Iterator[Callable[[dict[str, Any]], str]]:
    """Serve the exporter with a web config built from `web`; returns the base URL (no scheme)."""
    servers: list[HttpServer] = []

    def start(web: dict[str, Any]) -> str:
        h = make_harness()
        path = tmp_path / "web.yml"
        path.write_text(yaml.safe_dump(web))
        loaded = load_web_config(str(path))
        app = make_app(
            h.exporter.exposition, "/metrics", h.exporter.not_ready, h.exporter.store.jobs,
            web=loaded,
        )  # fmt: skip
        server = HttpServer(app, "127.0.0.1:0", loaded.tls)
        server.start()
        servers.append(server)
        return f"127.0.0.1:{server.port}"

    yield start
    for server in servers:
        server.stop()


def test_tls_serves_https_and_refuses_plain_http(serve_with: Callable[..., str], pki: Pki) -> None:
    address = serve_with(
        {"tls_server_config": {"cert_file": str(pki.cert_file), "key_file": str(pki.key_file)}}
    )
    response = requests.get(f"https://{address}/metrics", verify=str(pki.ca_file), timeout=5)
    assert response.status_code == 200
    assert "asyncjob_up" in response.text
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://{address}/metrics", timeout=5)
    with pytest.raises(requests.exceptions.SSLError):  # a client that does not trust the CA
        requests.get(f"https://{address}/metrics", timeout=5)


def test_a_rotated_certificate_is_served_without_a_restart(
    serve_with: Callable[..., str], pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New certificate and key files (another CA's) are picked up for new connections, as
    exporter-toolkit reads them for each connection; the old CA is no longer trusted."""
    monkeypatch.setattr(TlsFiles, "CHECK_EVERY", 0.0)
    address = serve_with(
        {"tls_server_config": {"cert_file": str(pki.cert_file), "key_file": str(pki.key_file)}}
    )
    assert requests.get(f"https://{address}/-/healthy", verify=str(pki.ca_file), timeout=5).ok
    rotated = trustme.CA()
    issued = rotated.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(pki.cert_file))
    issued.private_key_pem.write_to_path(str(pki.key_file))
    new_ca = pki.ca_file.parent / "rotated-ca.pem"
    rotated.cert_pem.write_to_path(str(new_ca))
    assert requests.get(f"https://{address}/-/healthy", verify=str(new_ca), timeout=5).ok
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"https://{address}/-/healthy", verify=str(pki.ca_file), timeout=5)


def test_an_unknown_user_costs_what_a_wrong_password_costs() -> None:
    """The dummy hash an unknown user is checked against has the users' own bcrypt cost, so
    timing cannot tell which users exist (make attack measures the times themselves)."""
    costly = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=6)).decode()
    auth = BasicAuth({"a": HASH, "b": costly})
    assert auth._dummy.split(b"$")[2] == b"06"


def test_mtls_requires_a_certificate_from_the_client_ca(
    serve_with: Callable[..., str], pki: Pki
) -> None:
    address = serve_with(
        {
            "tls_server_config": {
                "cert_file": str(pki.cert_file),
                "key_file": str(pki.key_file),
                "client_auth_type": "RequireAndVerifyClientCert",
                "client_ca_file": str(pki.ca_file),
                "min_version": "TLS13",
            }
        }
    )
    ok = requests.get(
        f"https://{address}/metrics", verify=str(pki.ca_file), cert=pki.client, timeout=5
    )
    assert ok.status_code == 200
    for cert in (None, pki.stranger):
        with pytest.raises((requests.exceptions.SSLError, requests.ConnectionError)):
            requests.get(
                f"https://{address}/metrics", verify=str(pki.ca_file), cert=cert, timeout=5
            )


def test_verify_if_given_accepts_no_certificate(serve_with: Callable[..., str], pki: Pki) -> None:
    address = serve_with(
        {
            "tls_server_config": {
                "cert_file": str(pki.cert_file),
                "key_file": str(pki.key_file),
                "client_auth_type": "VerifyClientCertIfGiven",
                "client_ca_file": str(pki.ca_file),
            }
        }
    )
    assert (
        requests.get(f"https://{address}/-/healthy", verify=str(pki.ca_file), timeout=5).status_code
        == 200
    )
    with pytest.raises((requests.exceptions.SSLError, requests.ConnectionError)):
        requests.get(f"https://{address}/", verify=str(pki.ca_file), cert=pki.stranger, timeout=5)


def test_basic_auth(serve_with: Callable[..., str]) -> None:
    """Every path but /-/healthy needs the right user and password; 401 otherwise."""
    address = serve_with(
        {
            "basic_auth_users": {"prometheus": HASH},
            "http_server_config": {
                "headers": {"X-Frame-Options": "deny", "X-Content-Type-Options": "nosniff"}
            },
        }
    )
    base = f"http://{address}"
    assert requests.get(f"{base}/-/healthy", timeout=5).status_code == 200
    # Readiness is for the kubelet, which probes without credentials: it says only ready or not.
    ready = requests.get(f"{base}/-/ready", timeout=5)  # (polling is not started here)
    assert (ready.status_code, ready.text) == (503, "Service Unavailable: not started\n")
    for path in ("/metrics", "/", "/-/reload"):
        missing = requests.get(f"{base}{path}", timeout=5)
        assert missing.status_code == 401, path
        assert missing.headers["WWW-Authenticate"] == 'Basic realm="asyncjob-exporter"'
    for user, password in (("prometheus", "wrong"), ("nobody", PASSWORD), ("", "")):
        assert requests.get(f"{base}/metrics", auth=(user, password), timeout=5).status_code == 401
    good = requests.get(f"{base}/metrics", auth=("prometheus", PASSWORD), timeout=5)
    assert good.status_code == 200
    assert good.headers["X-Frame-Options"] == "deny"
    assert good.headers["X-Content-Type-Options"] == "nosniff"
    assert (
        requests.get(
            f"{base}/metrics", headers={"Authorization": "Basic !!!"}, timeout=5
        ).status_code
        == 401
    )


def check(auth: BasicAuth, authorization: str) -> Verdict:
    """What the server does with a request's credentials: the caches, then bcrypt."""
    found = auth.cached(authorization)
    return found if isinstance(found, Verdict) else auth.verify(found)


def test_basic_auth_checks_bcrypt_once_per_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """A scraper repeating the same credentials costs one bcrypt check, not one per scrape."""
    auth = BasicAuth({"prometheus": HASH})
    checks: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        checks.append(password)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    good = "Basic " + base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
    bad = "Basic " + base64.b64encode(b"prometheus:nope").decode()
    assert [check(auth, good) for _ in range(5)] == [Verdict.ALLOWED] * 5
    assert [check(auth, bad) for _ in range(3)] == [Verdict.DENIED] * 3
    assert len(checks) == 2


def test_basic_auth_password_is_a_secret_once_decoded() -> None:
    """The password a client sends never shows in a str, repr or f-string of what holds it."""
    header = "Basic " + base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
    decoded = _decode_basic(header)
    assert decoded is not None
    password = decoded.password
    assert (decoded.user, password.get_secret_value()) == (b"prometheus", PASSWORD.encode())
    assert PASSWORD not in f"{decoded} {decoded!r} {password} {password!r}"


TLS = {"cert_file": "CERT", "key_file": "KEY"}  # replaced by real files from `pki`


@pytest.mark.parametrize(
    ("web", "problems"),
    [
        ({"tls_server_config": {"cert_file": "/nonexistent.pem", "key_file": "/nonexistent.key"}},
         ["tls_server_config.cert_file: cannot read '/nonexistent.pem': No such file or directory",
          "tls_server_config.key_file: cannot read '/nonexistent.key': No such file or directory"]),
        ({"tls_server_config": {"cert_file": "KEY", "key_file": "CERT"}},
         [("tls_server_config: cannot load certificate 'KEY' with key 'CERT': PEM lib "
          "(is each a PEM file, and does the key match the certificate?)")]),
        ({"tls_server_config": {**TLS, "cipher_suites": ["TLS_AES_128_GCM_SHA256"]}},
         ["tls_server_config: cipher_suites: Python's ssl module picks the cipher suites; remove this key"]),
        ({"tls_server_config": {**TLS, "client_auth_type": "RequireAndVerifyClientCert"}},
         ["tls_server_config: client_auth_type RequireAndVerifyClientCert needs client_ca_file"]),
        ({"tls_server_config": {**TLS, "client_auth_type": "RequireAnyClientCert"}},
         [("tls_server_config: client_auth_type RequireAnyClientCert (a certificate taken without checking it) "
           "is not supported; use VerifyClientCertIfGiven or RequireAndVerifyClientCert")]),
        ({"tls_server_config": {**TLS, "min_version": "TLS9"}},
         ["tls_server_config.min_version: Input should be 'TLS10', 'TLS11', 'TLS12' or 'TLS13'"]),
        ({"http_server_config": {"http2": False}},
         ["http_server_config: http2: the exporter serves HTTP/1.1 only; remove this key"]),
        ({"http_server_config": {"headers": {"Server": "x"}}},
         [("http_server_config.headers: header 'Server' cannot be set; allowed: Content-Security-Policy, "
           "Strict-Transport-Security, X-Content-Type-Options, X-Frame-Options, X-XSS-Protection")]),
        ({"basic_auth_users": {"prometheus": "plaintext-password"}},
         ["basic_auth_users: expected a bcrypt hash ($2a$/$2b$/$2y$, 60 characters), not a password"]),
        ({"tls_config": {}}, ["tls_config: unknown key"]),
        ({"tls_server_config": {**TLS, "http2": True}}, ["tls_server_config.http2: unknown key"]),
        # Every problem at once, from every section.
        ({"tls_server_config": {"cert_file": "/nonexistent.pem", "key_file": "KEY"},
          "basic_auth_users": {"prometheus": "hunter2"}, "http_server_config": {"headers": {"Server": "x"}}},
         ["tls_server_config.cert_file: cannot read '/nonexistent.pem': No such file or directory",
          ("http_server_config.headers: header 'Server' cannot be set; allowed: Content-Security-Policy, "
           "Strict-Transport-Security, X-Content-Type-Options, X-Frame-Options, X-XSS-Protection"),
          "basic_auth_users: expected a bcrypt hash ($2a$/$2b$/$2y$, 60 characters), not a password"]),
    ],
    ids=["missing-cert-and-key", "swapped-cert-and-key", "cipher-suites", "no-client-ca", "require-any",
         "bad-version", "http2", "forbidden-header", "plaintext-password", "unknown-key",
         "http-key-in-tls-section", "every-problem-at-once"],
)  # fmt: skip
def test_bad_web_config_is_refused_with_its_location(
    tmp_path: Path, pki: Pki, web: dict[str, Any], problems: list[str]
) -> None:
    files = {"CERT": str(pki.cert_file), "KEY": str(pki.key_file)}
    text = yaml.safe_dump(web)
    for placeholder, real in files.items():
        text = text.replace(f" {placeholder}\n", f" {real}\n")
        problems = [p.replace(f"'{placeholder}'", f"'{real}'") for p in problems]
    path = tmp_path / "web.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_web_config(str(path))
    assert [f"{where}: {what}" for where, what in caught.value.problems] == problems


def test_bad_web_config_stops_the_exporter_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The exporter refuses to start (exit 1) rather than serve without the intended security."""
    from exporter.cli import main  # noqa: PLC0415

    path = tmp_path / "web.yml"
    path.write_text("basic_auth_users: {prometheus: hunter2}\n")
    assert main(["--demo", "--web.listen-address=127.0.0.1:0", f"--web.config.file={path}"]) == 1
    assert "basic_auth_users: expected a bcrypt hash" in capsys.readouterr().err


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class CountingBcrypt:
    """bcrypt.checkpw, counted: calls per password and the most ever running at once."""

    def __init__(self) -> None:
        self.real = bcrypt.checkpw
        self.calls: dict[bytes, int] = {}
        self.running = 0
        self.peak = 0
        self._lock = threading.Lock()

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        with self._lock:
            self.calls[password] = self.calls.get(password, 0) + 1
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            return self.real(password, hashed)
        finally:
            with self._lock:
                self.running -= 1


def test_guesses_cannot_evict_the_scrapers_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """1,100 wrong passwords (more than the failed-credentials cache holds) later, the scraper's
    credentials are still known: they cost one bcrypt check in all."""
    counting = CountingBcrypt()
    monkeypatch.setattr(bcrypt, "checkpw", counting)
    auth = BasicAuth({"prometheus": HASH})
    assert check(auth, basic("prometheus", PASSWORD)) is Verdict.ALLOWED
    for i in range(BasicAuth.MAX_FAILED + 76):
        assert check(auth, basic("prometheus", f"guess-{i}")) is Verdict.DENIED
    assert check(auth, basic("prometheus", PASSWORD)) is Verdict.ALLOWED
    assert counting.calls[PASSWORD.encode()] == 1


def test_password_guessing_is_bounded_and_scrapes_go_on(
    serve_with: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 clients guess (15 distinct passwords each, bounded) while Prometheus scrapes: at most
    one bcrypt check runs at a time, the overflow gets 429, no guess gets in, and every scrape is
    answered 200 without a bcrypt check of its own after the first."""
    slow_hash = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()  # ~80 ms
    counting = CountingBcrypt()
    monkeypatch.setattr(bcrypt, "checkpw", counting)
    base = f"http://{serve_with({'basic_auth_users': {'prometheus': slow_hash}})}"
    first = requests.get(f"{base}/metrics", auth=("prometheus", PASSWORD), timeout=10)
    assert first.status_code == 200
    guesses: list[int] = []

    def guess(client: int) -> None:
        with requests.Session() as session:
            for i in range(15):
                response = session.get(f"{base}/metrics", auth=("prometheus", f"{client}-{i}"),
                                       timeout=30)  # fmt: skip
                guesses.append(response.status_code)

    guessers = [threading.Thread(target=guess, args=(n,)) for n in range(20)]
    for thread in guessers:
        thread.start()
    scrapes: list[tuple[int, float]] = []
    while any(t.is_alive() for t in guessers) and len(scrapes) < 200:
        started = time.monotonic()
        response = requests.get(f"{base}/metrics", auth=("prometheus", PASSWORD), timeout=30)
        scrapes.append((response.status_code, time.monotonic() - started))
    for thread in guessers:
        thread.join()
    assert len(guesses) == 300
    assert set(guesses) <= {401, 429}
    assert guesses.count(429) > 0  # the overflow was turned away, not queued for bcrypt
    assert counting.peak == 1
    assert scrapes
    assert {status for status, _ in scrapes} == {200}
    assert counting.calls[PASSWORD.encode()] == 1
    latencies = sorted(seconds for _, seconds in scrapes)
    print(f"scrapes during guessing: {len(scrapes)}, p50 {latencies[len(latencies) // 2]:.3f}s")
