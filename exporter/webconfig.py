"""--web.config.file: the web configuration format of Prometheus's exporter-toolkit.

The same file Prometheus, Alertmanager and the official exporters read: `tls_server_config`,
`basic_auth_users` (bcrypt hashes) and `http_server_config.headers`. Keys of that format this
exporter does not implement are refused by name, never silently ignored. Certificates and keys
are loaded when the file is read, so a bad one is a startup error, not a failed handshake later.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import re
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import bcrypt
import structlog
from pydantic import (
    AfterValidator,
    Field,
    SecretBytes,
    ValidationError,
    field_validator,
    model_validator,
)

from exporter.config import ConfigError, read_yaml, validation_problems
from exporter.providers.base import StrictModel

log = structlog.get_logger(__name__)

# exporter-toolkit keys this exporter knows but does not implement, per section: refused, with
# the reason, rather than reported as merely unknown.
_TLS_NOT_IMPLEMENTED = {
    "cert": "inline certificates are not supported; use cert_file",
    "key": "inline keys are not supported; use key_file",
    "cipher_suites": "Python's ssl module picks the cipher suites; remove this key",
    "curve_preferences": "Python's ssl module picks the curves; remove this key",
    "prefer_server_cipher_suites": "not supported; remove this key",
    "client_allowed_sans": "not supported; remove this key",
}
_HTTP_NOT_IMPLEMENTED = {"http2": "the exporter serves HTTP/1.1 only; remove this key"}
# The response headers exporter-toolkit lets a web config set.
ALLOWED_HEADERS = {
    "Content-Security-Policy",
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
}
_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
TlsVersion = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
ClientAuth = Literal["NoClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"]


def _refuse(not_implemented: dict[str, str]) -> Any:
    """A before-validator that names the first not-implemented key present, with its reason."""

    def check(raw: Any) -> Any:
        for key, why in not_implemented.items():
            if isinstance(raw, dict) and key in raw:
                raise ValueError(f"{key}: {why}")
        return raw

    return model_validator(mode="before")(check)


def _readable(path: str) -> str:
    """A certificate or key file that can be read; the message names the path."""
    try:
        with Path(path).open("rb"):
            pass
    except OSError as exc:
        raise ValueError(f"cannot read {path!r}: {exc.strerror or exc}") from None
    return path


ReadableFile = Annotated[str, AfterValidator(_readable)]


def _ssl_reason(exc: OSError) -> str:
    """OpenSSL's reason without the C source line it appends (not "PEM lib (_ssl.c:3905)")."""
    text = str(exc.strerror or exc)
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", text.removeprefix("[SSL] "))


class TlsServerConfig(StrictModel):
    cert_file: ReadableFile
    key_file: ReadableFile
    client_auth_type: ClientAuth | Literal["RequestClientCert", "RequireAnyClientCert"] = (
        "NoClientCert"
    )
    client_ca_file: ReadableFile | None = None
    min_version: TlsVersion = "TLS12"
    max_version: TlsVersion | None = None

    _check_keys = _refuse(_TLS_NOT_IMPLEMENTED)

    @model_validator(mode="after")
    def _consistent(self) -> TlsServerConfig:
        if self.client_auth_type in {"RequestClientCert", "RequireAnyClientCert"}:
            raise ValueError(
                f"client_auth_type {self.client_auth_type} (a certificate taken without checking "
                "it) is not supported; use VerifyClientCertIfGiven or RequireAndVerifyClientCert"
            )
        if self.client_auth_type != "NoClientCert" and not self.client_ca_file:
            raise ValueError(f"client_auth_type {self.client_auth_type} needs client_ca_file")
        self.context()  # a certificate that does not load is a problem of the file, now
        return self

    def context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = _TLS_VERSIONS[self.min_version]
        if self.max_version:
            context.maximum_version = _TLS_VERSIONS[self.max_version]
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"cannot load certificate {self.cert_file!r} with key {self.key_file!r}: "
                f"{_ssl_reason(exc)} (is each a PEM file, and does the key match the certificate?)"
            ) from None
        if self.client_ca_file:
            try:
                context.load_verify_locations(self.client_ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(
                    f"cannot load client CA {self.client_ca_file!r}: {_ssl_reason(exc)}"
                ) from None
        context.verify_mode = {
            "NoClientCert": ssl.CERT_NONE,
            "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
            "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
        }[self.client_auth_type]
        return context


class HttpServerConfig(StrictModel):
    headers: dict[str, str] = Field(default_factory=dict)

    _check_keys = _refuse(_HTTP_NOT_IMPLEMENTED)

    @field_validator("headers")
    @classmethod
    def _allowed(cls, headers: dict[str, str]) -> dict[str, str]:
        for name in headers:
            if name not in ALLOWED_HEADERS:
                raise ValueError(
                    f"header {name!r} cannot be set; allowed: {', '.join(sorted(ALLOWED_HEADERS))}"
                )
        return headers


def _check_hash(hashed: str) -> str:
    if not (hashed.startswith(("$2a$", "$2b$", "$2y$")) and len(hashed) == 60):
        raise ValueError("expected a bcrypt hash ($2a$/$2b$/$2y$, 60 characters), not a password")
    return hashed


class WebConfigFile(StrictModel):
    tls_server_config: TlsServerConfig | None = None
    http_server_config: HttpServerConfig | None = None
    basic_auth_users: dict[str, str] | None = None

    @field_validator("basic_auth_users")
    @classmethod
    def _hashes(cls, users: dict[str, str] | None) -> dict[str, str] | None:
        for hashed in (users or {}).values():
            _check_hash(hashed)
        return users


class Verdict(enum.Enum):
    ALLOWED = "allowed"
    DENIED = "denied"
    BUSY = "busy"  # too many password checks under way: answer 429, check nothing


@dataclass(frozen=True, slots=True)
class Credentials:
    """A client's user and password, not yet checked. The password is a secret: neither repr
    nor str shows it, and only `BasicAuth.verify` reads it."""

    user: bytes
    password: SecretBytes = field(repr=False)
    key: bytes = field(repr=False)  # SHA-256 of both: what the caches remember

    def __str__(self) -> str:
        return repr(self)


def _cost(hashed: bytes) -> int:
    """The cost factor of a bcrypt hash ($2b$12$... -> 12)."""
    return int(hashed.split(b"$")[2])


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes, caching results.

    bcrypt is slow by design (about 200 ms of CPU a check at cost 12); a scraper sends the same
    credentials every few seconds, so each (user, password) pair is checked once and remembered
    by its SHA-256, never in clear. Verified credentials and failed ones are kept apart, each in
    its own bounded LRU, so guesses can never evict the scraper's entry.

    `cached()` answers from the caches at once, or hands back the `Credentials` to check;
    `verify()` runs bcrypt (the HTTP server runs it off its event loop, at most MAX_CHECKS at a
    time, and answers 429 to a request that finds no free slot within CHECK_WAIT). An unknown
    user is checked against a dummy hash of the same cost as the users' own, so the time taken
    does not tell which users exist.
    """

    MAX_VERIFIED = 64
    MAX_FAILED = 1024
    MAX_CHECKS = 1
    CHECK_WAIT = 0.2

    def __init__(self, users: dict[str, str]) -> None:
        self._users = {user: hashed.encode() for user, hashed in users.items()}
        rounds = max((_cost(h) for h in self._users.values()), default=12)
        self._dummy = bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds=rounds))
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._failed: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, authorization: str | None) -> Verdict | Credentials:
        """The verdict the caches hold for these credentials, or the credentials to verify."""
        credentials = _decode_basic(authorization)
        if credentials is None:
            return Verdict.DENIED
        with self._lock:
            for cache, verdict in (
                (self._verified, Verdict.ALLOWED),
                (self._failed, Verdict.DENIED),
            ):
                if credentials.key in cache:
                    cache.move_to_end(credentials.key)
                    return verdict
        return credentials

    def verify(self, credentials: Credentials) -> Verdict:
        """Check credentials with bcrypt (slow: call it off the event loop) and remember."""
        hashed = self._users.get(credentials.user.decode("utf-8", "replace"))
        password = credentials.password.get_secret_value()
        ok = bcrypt.checkpw(password, hashed or self._dummy) and hashed is not None
        cache, limit = (
            (self._verified, self.MAX_VERIFIED) if ok else (self._failed, self.MAX_FAILED)
        )
        with self._lock:
            cache[credentials.key] = None
            if len(cache) > limit:
                cache.popitem(last=False)
        return Verdict.ALLOWED if ok else Verdict.DENIED


def _decode_basic(header: str | None) -> Credentials | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    key = hashlib.sha256(user + b"\0" + password).digest()
    return Credentials(user, SecretBytes(password), key)


class TlsFiles:
    """The server's TLS context, built again when its certificate, key or client CA file
    changes, as exporter-toolkit reads them for each new connection: a rotated certificate
    takes effect without a restart. Files that no longer load keep the last good context (and
    say so once). Called for each new connection; the files are looked at once a second."""

    CHECK_EVERY = 1.0

    def __init__(self, config: TlsServerConfig) -> None:
        self._config = config
        self._paths = [p for p in (config.cert_file, config.key_file, config.client_ca_file) if p]
        self._stamp = self._stat()
        self._context = config.context()
        self._checked = time.monotonic()

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        stamps = []
        for path in self._paths:
            try:
                st = Path(path).stat()
            except OSError:
                stamps.append((0, 0, 0))
            else:
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)

    def __call__(self) -> ssl.SSLContext:
        now = time.monotonic()
        if now - self._checked >= self.CHECK_EVERY:
            self._checked = now
            stamp = self._stat()
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._context = self._config.context()
                except ValueError as exc:
                    log.warning("TLS files changed but do not load; keeping the last good ones",
                                error=str(exc))  # fmt: skip
                else:
                    log.info("TLS files changed; loaded", cert_file=self._config.cert_file)
        return self._context


class WebConfig:
    """A loaded web config: the TLS context, the basic-auth checker, the extra headers."""

    def __init__(self, parsed: WebConfigFile) -> None:
        self.tls: TlsFiles | None = None
        if parsed.tls_server_config is not None:
            self.tls = TlsFiles(parsed.tls_server_config)
        self.auth = BasicAuth(parsed.basic_auth_users) if parsed.basic_auth_users else None
        self.headers = dict(parsed.http_server_config.headers) if parsed.http_server_config else {}


def load_web_config(path: str) -> WebConfig:
    """Read and check a web config file. Raises ConfigError with every problem's location."""
    raw = read_yaml(path)
    if raw is None:
        return WebConfig(WebConfigFile())
    try:
        parsed = WebConfigFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc)) from None
    return WebConfig(parsed)
