"""The jobs API, `/api/v1/jobs`: register, list and stop tracking jobs without editing config.

Off unless `--web.enable-jobs-api` is given (like `--web.enable-lifecycle`); behind the same TLS
and basic auth as /metrics. Every answer is JSON; a refusal is a 4xx with `{"error": ...}`
(a 503 when the storage cannot commit, a 502 when the shard owning the job does not answer).

    POST   /api/v1/jobs                     {"source": "...", "job_id": "...", "project": "..."}
                                            or {"operation_location": "<Operation-Location>"}
                                            201 new, 200 already tracked; 503 when the
                                            storage cannot commit it (not acknowledged)
    GET    /api/v1/jobs                     the tracked jobs, by source and job ID, a page at a
                                            time: ?source=, ?state= (not_polled: no answer yet),
                                            ?limit= (default 1000, at most 10000), ?offset=;
                                            {"jobs": [...], "total": N, "next": path or null}
    DELETE /api/v1/jobs/{source}/{job_id}   204; 409 for a job listed in the config file
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlencode

import urllib3

from exporter.logging import quoted, redactor
from exporter.model import Origin, state_of
from exporter.webhooks import SIGNATURE_HEADERS, WebhookCall

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from datetime import datetime

    from exporter.app import Exporter, Registration
    from exporter.model import JobRecord

PREFIX = "/api/v1/jobs"
MAX_BODY = 64 * 1024

StartResponse = Any
Environ = dict[str, Any]


def _time(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def job_json(record: JobRecord) -> dict[str, Any]:
    snap = record.snapshot
    return {
        "source": record.source,
        "provider": record.provider,
        "job_id": record.job_id,
        "project": record.project,
        "origin": record.origin,
        "state": None if snap is None else snap.state.value,
        "progress": None if snap is None else snap.progress.get("overall"),
        "up": record.up,
        "first_seen": _time(record.first_seen),
        "finished_at": _time(record.finished_at),
    }


DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000


def _window(query: dict[str, str]) -> tuple[int, int] | str:
    """(limit, offset) of a listing, or what is wrong with them."""
    limit, offset = query.get("limit", str(DEFAULT_LIMIT)), query.get("offset", "0")
    if not limit.isdigit() or not 1 <= int(limit) <= MAX_LIMIT:
        return f"limit must be a whole number from 1 to {MAX_LIMIT}, not {quoted(limit, 20)}"
    if not offset.isdigit():
        return f"offset must be a whole number, not {quoted(offset, 20)}"
    return int(limit), int(offset)


def _answer(start_response: StartResponse, status: HTTPStatus, body: Any = None) -> list[bytes]:
    payload = b"" if body is None else json.dumps(body).encode() + b"\n"
    headers = [("Content-Type", "application/json")] if body is not None else []
    start_response(f"{status.value} {status.phrase}", headers)
    return [payload]


def _error(start_response: StartResponse, status: HTTPStatus, message: str) -> list[bytes]:
    return _answer(start_response, status, {"error": message})


RAW_BODY = "asyncjob.raw_body"
RAW_URI = "RAW_URI"  # the path and query as sent, percent-encoding kept (as gunicorn names it)
FORWARDED_BY = "X-Asyncjob-Forwarded-By"
_PEERS = urllib3.PoolManager(num_pools=16, maxsize=4)  # TLS verified against the system's CAs


def _forward(
    exporter: Exporter, environ: Environ, owner: int, start_response: StartResponse
) -> list[bytes]:
    """Send the request, as it came, to the shard that owns its job, and pass its answer back.
    Basic auth and a webhook token travel with it; a request is forwarded once at most."""
    sender = environ.get("HTTP_X_ASYNCJOB_FORWARDED_BY")
    if sender:
        return _error(start_response, HTTPStatus.MISDIRECTED_REQUEST,
                      f"shard {owner} owns this job, yet shard {redactor.clip(sender, 8)} sent "
                      "it here: do the shards agree on --total-shards?")  # fmt: skip
    base = exporter.shard.peer(owner)
    if base is None:
        return _error(start_response, HTTPStatus.MISDIRECTED_REQUEST,
                      f"shard {owner} owns this job; send it there (no --shard.peer-url is set "
                      "to forward it)")  # fmt: skip
    # The path as it came, still percent-encoded: decoding it would send the peer another path
    # (a job ID's %23 or %3F would become a fragment or a query).
    url = f"{base}{environ[RAW_URI]}"
    passed = {"Content-Type": environ.get("CONTENT_TYPE"),
              "Authorization": environ.get("HTTP_AUTHORIZATION"),
              "X-Webhook-Token": environ.get("HTTP_X_WEBHOOK_TOKEN"),
              **{name: environ.get(_wsgi_name(name)) for name in SIGNATURE_HEADERS}}  # fmt: skip
    headers = {name: value for name, value in passed.items() if value}
    headers[FORWARDED_BY] = str(exporter.shard.index)
    try:
        answer = _PEERS.request(
            environ.get("REQUEST_METHOD", "GET"), url, body=environ.get(RAW_BODY) or None,
            headers=headers, timeout=urllib3.Timeout(10.0), retries=False, redirect=False,
        )  # fmt: skip
    except urllib3.exceptions.HTTPError as exc:
        return _error(start_response, HTTPStatus.BAD_GATEWAY,
                      f"shard {owner}, which owns this job, did not answer "
                      f"({type(exc).__name__})")  # fmt: skip
    try:
        phrase = HTTPStatus(answer.status).phrase
    except ValueError:
        phrase = "Unknown"
    kind = answer.headers.get("Content-Type")
    start_response(f"{answer.status} {phrase}", [("Content-Type", kind)] if kind else [])
    return [answer.data]


class JobsApi:
    """The WSGI side of the jobs API; the exporter does the work."""

    def __init__(self, exporter: Exporter | None) -> None:
        self._exporter = exporter  # None: the API is disabled

    def refuse(self) -> tuple[HTTPStatus, str] | None:
        if self._exporter is None:
            return HTTPStatus.FORBIDDEN, "the jobs API is not enabled (--web.enable-jobs-api)"
        return None

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        refused = self.refuse()
        if refused is not None:
            return _error(start_response, *refused)
        path = environ.get("PATH_INFO") or ""
        method = environ.get("REQUEST_METHOD", "GET")
        routes: dict[tuple[bool, str], Callable[..., list[bytes]]] = {
            (False, "GET"): self._list,
            (False, "HEAD"): self._list,
            (False, "POST"): self._register,
            (True, "DELETE"): self._delete,
        }
        handler = routes.get((path != PREFIX, method))
        if handler is None:  # the server's guard refuses these before they come here
            return _error(start_response, HTTPStatus.METHOD_NOT_ALLOWED, f"{method} is not allowed")
        return handler(self._exporter, environ, start_response)

    @staticmethod
    def _list(exporter: Exporter, environ: Environ, start_response: StartResponse) -> list[bytes]:
        query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        window = _window(query)
        if isinstance(window, str):
            return _error(start_response, HTTPStatus.BAD_REQUEST, window)
        limit, offset = window
        source, state = query.get("source"), query.get("state")
        jobs = sorted(
            (r for r in exporter.store.jobs()
             if (source is None or r.source == source)
             and (state is None or state_of(r.snapshot) == state)),
            key=lambda r: (r.source, r.job_id),
        )  # fmt: skip
        page = jobs[offset : offset + limit]
        following = None
        if offset + limit < len(jobs):
            following = f"{PREFIX}?{urlencode({**query, 'offset': offset + limit, 'limit': limit})}"
        body = {"jobs": [job_json(r) for r in page], "total": len(jobs), "next": following}
        return _answer(start_response, HTTPStatus.OK, body)

    @staticmethod
    def _register(
        exporter: Exporter, environ: Environ, start_response: StartResponse
    ) -> list[bytes]:
        body = _read_json(environ)
        if isinstance(body, tuple):
            return _error(start_response, *body)
        registration = _registration(exporter, body)
        if isinstance(registration, str):
            return _error(start_response, HTTPStatus.BAD_REQUEST, registration)
        if registration.owner is not None:
            return _forward(exporter, environ, registration.owner, start_response)
        if registration.record is None or registration.unsaved:
            return _refusal(start_response, registration)
        status = HTTPStatus.CREATED if registration.created else HTTPStatus.OK
        return _answer(start_response, status, job_json(registration.record))

    @staticmethod
    def _delete(exporter: Exporter, environ: Environ, start_response: StartResponse) -> list[bytes]:
        parts = (environ.get("PATH_INFO") or "")[len(PREFIX) + 1 :].split("/")
        if len(parts) != 2 or not all(parts):
            return _error(start_response, HTTPStatus.NOT_FOUND,
                          f"expected {PREFIX}/{{source}}/{{job_id}}")  # fmt: skip
        source, job_id = (unquote(part) for part in parts)
        removed = exporter.unregister(source, job_id)
        if isinstance(removed, int):
            return _forward(exporter, environ, removed, start_response)
        if removed is None:
            return _error(start_response, HTTPStatus.NOT_FOUND,
                          f"no job {quoted(job_id)} is tracked for source "
                          f"{quoted(source)}")  # fmt: skip
        if isinstance(removed, str):
            return _error(start_response, HTTPStatus.CONFLICT, removed)
        return _answer(start_response, HTTPStatus.NO_CONTENT)


def _refusal(start_response: StartResponse, registration: Registration) -> list[bytes]:
    if registration.at_limit:
        return _error(start_response, HTTPStatus.TOO_MANY_REQUESTS,
                      f"{registration.problem}; no more jobs are accepted")  # fmt: skip
    if registration.unsaved:
        return _error(start_response, HTTPStatus.SERVICE_UNAVAILABLE,
                      _unsaved(registration.problem))  # fmt: skip
    return _error(start_response, HTTPStatus.BAD_REQUEST, registration.problem or "")


_SHAPE = (
    'give {"source": ..., "job_id": ...} (strings, and "project" for a training source without '
    'one), or {"operation_location": "<the Operation-Location URL>"}'
)


def _registration(exporter: Exporter, body: dict[str, Any]) -> Registration | str:
    """Register what the body names; a string says what is wrong with the body."""
    if "operation_location" in body:
        url = body["operation_location"]
        if set(body) != {"operation_location"} or not isinstance(url, str):
            return "give operation_location (a URL string) alone"
        located = exporter.locate(url)
        if isinstance(located, str):
            return located
        source, job = located
        return exporter.register(source.name, job.job_id, job.project, Origin.API)
    source_name, job_id, project = (body.get(key) for key in ("source", "job_id", "project"))
    if (
        set(body) - {"source", "job_id", "project"}
        or not isinstance(source_name, str)
        or not isinstance(job_id, str)
        or not (project is None or isinstance(project, str))
    ):
        return _SHAPE
    return exporter.register(source_name, job_id, project, Origin.API)


WEBHOOKS = "/api/v1/webhooks"
_WEBHOOK_ANSWERS = {
    "registered": HTTPStatus.OK,
    "known": HTTPStatus.OK,
    "invalid": HTTPStatus.BAD_REQUEST,
    "refused": HTTPStatus.TOO_MANY_REQUESTS,
    "unsaved": HTTPStatus.SERVICE_UNAVAILABLE,
}
# One answer for an unknown source, a source without webhooks and a wrong token, so that
# source names cannot be probed without a token.
WEBHOOK_REFUSED = (HTTPStatus.UNAUTHORIZED, "no such webhook, or a wrong token")


def _webhook_call(environ: Environ) -> WebhookCall | None:
    """What a webhook call says of itself in its head, or None when the path is not one."""
    parts = (environ.get("PATH_INFO") or "")[len(WEBHOOKS) + 1 :].split("/")
    if len(parts) != 2:
        return None
    query = parse_qs(environ.get("QUERY_STRING", ""))
    token = environ.get("HTTP_X_WEBHOOK_TOKEN") or (query.get("token") or [""])[0]
    signature = {name: environ.get(_wsgi_name(name), "") for name in SIGNATURE_HEADERS}
    return WebhookCall(parts[0], parts[1], token, signature)


def _wsgi_name(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


def _unsaved(problem: str | None) -> str:
    """A 503's message: the job is not acknowledged, and why."""
    return (
        f"the job is not registered: the storage cannot commit it ({problem or 'unknown'}); it "
        "is kept in memory and written when the storage can be written again: repeat the "
        "request until it answers 200"
    )


class WebhooksApi:
    """`POST /api/v1/webhooks/{provider's slug}/{source}`: a provider's call-back names a job.

    The source's own token authenticates the call (`?token=` or `X-Webhook-Token`), or, for a
    provider that signs its calls, a Standard Webhooks signature made with the source's secret
    (exporter/webhooks.py); so these paths are not behind basic auth: the provider cannot send
    it. The job named is registered
    if new and polled at once; what the payload says of its state is not believed."""

    def __init__(self, exporter: Exporter | None) -> None:
        self._exporter = exporter

    def refuse(self, environ: Environ) -> tuple[HTTPStatus, str] | None:
        """Why a call is refused from its head alone (before its body is read), or None."""
        call = _webhook_call(environ)
        if self._exporter is None or call is None:
            return WEBHOOK_REFUSED
        return None if self._exporter.admits_webhook(call) else WEBHOOK_REFUSED

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        call = _webhook_call(environ)
        if self._exporter is None or call is None:
            return _error(start_response, *WEBHOOK_REFUSED)
        body = _read_json(environ)
        payload = None if isinstance(body, tuple) else body
        if isinstance(body, tuple) and body[0] is HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
            return _error(start_response, *body)
        result = self._exporter.webhook(call, environ.get(RAW_BODY, b""), payload)
        if isinstance(result, int):
            return _forward(self._exporter, environ, result, start_response)
        if result == "unsaved":
            storage = self._exporter.store.storage
            return _error(start_response, HTTPStatus.SERVICE_UNAVAILABLE,
                          _unsaved(storage.problem if storage else None))  # fmt: skip
        return _webhook_answer(start_response, result)


def _webhook_answer(start_response: StartResponse, result: str) -> list[bytes]:
    if result == "unauthorized":
        return _error(start_response, *WEBHOOK_REFUSED)
    status = _WEBHOOK_ANSWERS[result]
    if status is HTTPStatus.OK:
        return _answer(start_response, status, {"result": result})
    return _error(start_response, status, f"webhook {result}")


class Api:
    """Everything under /api/v1: the jobs API (if enabled) and the providers' webhooks."""

    def __init__(self, exporter: Exporter | None, *, jobs: bool = False) -> None:
        self._jobs = JobsApi(exporter if jobs else None)
        self._webhooks = WebhooksApi(exporter)

    @staticmethod
    def serves(path: str) -> bool:
        return path == PREFIX or path.startswith((f"{PREFIX}/", f"{WEBHOOKS}/"))

    @staticmethod
    def open_path(path: str) -> bool:
        """Paths that authenticate on their own (a webhook's token), not with basic auth."""
        return path.startswith(f"{WEBHOOKS}/")

    @classmethod
    def methods(cls, path: str) -> tuple[str, ...]:
        """The methods a path under /api/v1 takes; () for any other path."""
        if path == PREFIX:
            return ("GET", "HEAD", "POST")
        if cls.open_path(path):
            return ("POST",)
        return ("DELETE",) if cls.serves(path) else ()

    def refuse(self, environ: Environ) -> tuple[HTTPStatus, str] | None:
        """Why a request is refused from its head alone, before its body is read; or None."""
        if self.open_path(environ.get("PATH_INFO") or ""):
            return self._webhooks.refuse(environ)
        return self._jobs.refuse()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if self.open_path(environ.get("PATH_INFO") or ""):
            return self._webhooks(environ, start_response)
        return self._jobs(environ, start_response)


def _read_json(environ: Environ) -> dict[str, Any] | tuple[HTTPStatus, str]:
    """The request body as a JSON object, or (status, reason)."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return HTTPStatus.BAD_REQUEST, "Content-Length is not a number"
    if length > MAX_BODY:
        return HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is over {MAX_BODY} bytes"
    raw = environ["wsgi.input"].read(length) if length > 0 else b""
    environ[RAW_BODY] = raw  # kept, to forward the request as it came
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return HTTPStatus.BAD_REQUEST, "the body is not JSON"
    if not isinstance(body, dict):
        return HTTPStatus.BAD_REQUEST, "the body must be a JSON object"
    return body
