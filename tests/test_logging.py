"""Secrets never leave the process: not in a log line, whether by a key name, by value or inside
a message, and (the property at the end) not by any exit at all."""

from __future__ import annotations

import contextlib
import html
import io
import json
import os
import re
import string
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus

import requests
import structlog
import yaml
from conftest import Harness, demo_raw_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import logging as exporter_logging
from exporter.api import Api
from exporter.app import Exporter
from exporter.config import GlobalConfig, load_config
from exporter.providers import PROVIDERS
from exporter.server import HttpServer, make_app
from exporter.simulator import LISTING, Fault, SimJob, Simulator, demo_config, render
from exporter.storage import Storage
from exporter.values import is_path_safe_id

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    import pytest

AZURE_SECRET = "azure-secret-0123456789abcdef"
SD_SECRET = "sd-secret-fedcba9876543210"


def wrong_keys(sim: Simulator) -> dict[str, Any]:
    raw = demo_raw_config(sim)
    for source in raw["sources"][:4]:
        source["auth"] = {**source["auth"], "subscription_key": AZURE_SECRET}
    raw["sources"][4]["auth"] = {"api_key": SD_SECRET}
    return raw


def test_secrets_absent_from_logs_and_metrics(
    make_harness: Callable[..., Harness], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every poll fails on auth and is logged; neither key appears in a log line or /metrics."""
    exporter_logging.configure("debug", "json")
    h = make_harness(wrong_keys)
    h.exporter.poll_once()
    log = structlog.get_logger("test")
    log.warning("upstream said", error=f"bad key {AZURE_SECRET} in https://x/y?sv=1&sig=abc%2Fdef")
    log.info("headers", subscription_key="anything", api_key=SD_SECRET)
    metrics = h.scrape().text
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    failures = [e for e in lines if e["event"] == "poll failing"]
    assert {e["reason"] for e in failures} == {"auth"}
    # 8 jobs fail, but an auth failure is logged once per source per backoff interval.
    assert sorted(e["source"] for e in failures) == sorted(
        [
            "language-training",
            "language-analyze",
            "text-analytics",
            "translator",
            "stable-diffusion",
        ]
    )
    for secret in (AZURE_SECRET, SD_SECRET, "abc%2Fdef"):
        assert secret not in err
        assert secret not in metrics
    said = next(e for e in lines if e["event"] == "upstream said")
    assert said["error"] == "bad key <redacted> in https://x/y?sv=1&sig=<redacted>"
    keyed = next(e for e in lines if e["event"] == "headers")
    assert (keyed["subscription_key"], keyed["api_key"]) == ("<redacted>", "<redacted>")


def test_redactor_masks_longest_secret_first() -> None:
    redactor = exporter_logging.Redactor()
    redactor.register(["abcd", "abcdefgh"])
    assert redactor.mask("x abcdefgh y abcd") == "x <redacted> y <redacted>"


def test_redactor_masks_inside_containers_bytes_and_exceptions() -> None:
    """Lists, tuples, dict keys and values, bytes and exceptions are masked all the way down."""
    redactor = exporter_logging.Redactor()
    redactor.register(["s3cr3t-value"])
    value = {
        "at s3cr3t-value": [("s3cr3t-value", b"x s3cr3t-value")],
        "e": KeyError("s3cr3t-value"),
    }
    assert "s3cr3t" not in repr(redactor.scrub(value))


def test_redactor_masks_before_it_cuts() -> None:
    """A secret across the cut leaves no part of itself behind, in a clip or a quote."""
    redactor = exporter_logging.Redactor()
    redactor.register(["0123456789abcdef"])
    text = "x" * 10 + "0123456789abcdef"
    assert redactor.clip(text, 15) == "x" * 10 + "<reda"
    assert redactor.quote(text, 15) == repr("x" * 10 + "<reda")


def test_redactor_masks_a_secret_as_answers_spell_it() -> None:
    """JSON, HTML, a repr inside JSON, a URL and a path as WSGI reads it are all masked."""
    secret = "k\u00e9y'\"<&>"
    redactor = exporter_logging.Redactor()
    redactor.register([secret])
    wsgi = secret.encode().decode("latin-1")
    for spelled in (json.dumps(secret), html.escape(secret), json.dumps(repr(secret)),
                    quote_plus(secret), repr(wsgi)):  # fmt: skip
        assert redactor.mask(spelled).strip("'\"") == "<redacted>", spelled


_PIECES = ("sig=", "SiG=", "&", " ", "Bearer ", "bearer\t", "eyJhbGci", ".e30.", ".", "abc",
           "-_", "'", '"', "k3y-", "k3y-v4lue", "t0ken", "é")  # fmt: skip


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=12).map("".join))
def test_redactor_skips_only_texts_with_nothing_to_mask(text: str) -> None:
    """`mask` skips a text its one search finds nothing in: what it returns is what the four
    passes return, written out here (the secrets by value, then each shape), whatever the
    text holds, including secrets and shapes that overlap or touch."""
    redactor = exporter_logging.Redactor()
    redactor.register(["k3y-v4lue", "t0ken"])
    expected = text
    for secret in ("k3y-v4lue", "t0ken"):  # longest first, as registered
        expected = expected.replace(secret, "<redacted>")
    expected = re.sub(r"(?i)(sig=)[^&\s\"']+", r"\1<redacted>", expected)
    expected = re.sub(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+", r"\1<redacted>", expected)
    expected = re.sub(
        r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*", "<redacted>", expected
    )
    assert redactor.mask(text) == expected


# -- the property: no secret leaves the process, by any exit -----------------------------------

METACHARACTERS = ".^$*+?{}[]()|\\/'\"<>&%;=#:, aZ09"
Secrets = st.SearchStrategy[str]


def _interleaved(common: Secrets, rare: Secrets) -> Secrets:
    """Secrets of 8 characters and up in which every 4 characters hold a `rare` one, so that
    any 8-character piece found in an output came from the secret, not from the output's own
    words, numbers or punctuation."""
    part = st.tuples(st.text(common, min_size=1, max_size=3), rare).map("".join)
    secrets = st.lists(part, min_size=4, max_size=12).map("".join)
    return secrets.filter(lambda s: "${" not in s and not s[0].isspace())


_LATIN1 = st.characters(min_codepoint=0xA1, max_codepoint=0xFF, categories=("L", "N", "P", "S"))
_UNICODE = st.characters(min_codepoint=0x100, categories=("L", "N", "P", "S"))
# A key sent in a header can only be Latin-1; one in a JSON body can be anything.
LATIN1_SECRET = _interleaved(st.sampled_from(METACHARACTERS), _LATIN1)
UNICODE_SECRET = _interleaved(st.sampled_from(METACHARACTERS), _UNICODE)
# As vendors issue them: letters and digits, so that it passes as a project or job ID too.
PATH_SAFE_SECRET = _interleaved(
    st.sampled_from(string.ascii_letters), st.sampled_from(string.digits)
)
ANY_SECRET = st.one_of(LATIN1_SECRET, UNICODE_SECRET, PATH_SAFE_SECRET)
# One per secret field: subscription_key, subscription_key_file, api_key, api_key_file,
# webhook_token, webhook_token_file.
KEYS = st.tuples(
    LATIN1_SECRET, PATH_SAFE_SECRET, UNICODE_SECRET, UNICODE_SECRET, UNICODE_SECRET, LATIN1_SECRET
)


def _spellings(piece: str) -> set[str]:
    """How an output may write a piece of a secret: as is or as WSGI reads a path (UTF-8 as
    Latin-1), in a repr or not, then in JSON, HTML, a label value or a URL."""
    plain = {piece, piece.encode().decode("latin-1")}
    in_repr = plain | {repr(p)[1:-1] for p in plain} | {repr(p + "'\"")[1:-4] for p in plain}
    return {
        spelled
        for p in in_repr
        for spelled in (
            p,
            json.dumps(p)[1:-1],
            json.dumps(p, ensure_ascii=False)[1:-1],
            html.escape(p),
            html.escape(p, quote=False),
            p.replace("\\", "\\\\").replace('"', '\\"'),
            quote(p, safe=""),
            quote_plus(p),
        )
    }


def leaks(secrets: Iterable[str], outputs: dict[str, str]) -> list[tuple[str, str]]:
    """(output, piece) for every 8-character piece of a secret that an output holds."""
    pieces = {s[i : i + 8] for s in secrets for i in range(len(s) - 7)}
    return [
        (name, piece)
        for piece in sorted(pieces)
        for name, text in outputs.items()
        if any(spelled in text for spelled in _spellings(piece))
    ]


APIS: dict[str, tuple[str, str]] = {
    "language-training": ("azure_language_training", "text"),
    "language-analyze": ("azure_language_analyze_text", "text"),
    "text-analytics": ("azure_text_analytics_analyze", "v3.2-preview.2"),
    "translator": ("azure_document_translation", ""),
    "stable-diffusion": ("stable_diffusion_finetune", ""),
    "stable-diffusion-2": ("stable_diffusion_finetune", ""),
}
ECHOES = ("status", "date", "content-type", "error-body", "message")
NESTED = {"retention": ("succeeded", "unsuccessful"), "discovery": ("interval", "lookback")}
NOT_SPOILED = {"provider", "auth", "webhook_token", "webhook_token_file"}


def exporter_config(
    endpoint: str, keys: Sequence[str], directory: Path, bad: str | None = None
) -> dict[str, Any]:
    """The demo's five sources and two more, with a secret in every secret field (a literal and
    a *_file of each kind); each configured job is one whose answer echoes secrets. With `bad`,
    every other field holds that value (and an unknown key is named after it), so that every
    check of the config fails at once, each quoting it."""
    azure_key, azure_file, sd_key, sd_file, token, token_file = keys

    def written(name: str, secret: str) -> str:
        path = directory / f"{name}-{'bad' if bad else 'good'}"
        path.write_text(secret + "\n", encoding="utf-8")
        return str(path)

    raw = demo_config(endpoint, poll_interval="1h")
    raw["global"].update(retries=0, max_retry_wait="1s")
    sources: list[dict[str, Any]] = raw["sources"]
    by_file = {"subscription_key_file": written("azure", azure_file)}
    for index, source in enumerate(sources[:4]):
        auth = {key: value for key, value in source["auth"].items() if key != "subscription_key"}
        source["auth"] = auth | ({"subscription_key": azure_key} if index % 2 else by_file)
    sources[4].update(auth={"api_key": sd_key}, webhook_token=token)
    sources.append({
        **sources[4], "name": "stable-diffusion-2", "webhook_token": None,
        "auth": {"api_key_file": written("sd", sd_file)},
        "webhook_token_file": written("token", token_file),
    })  # fmt: skip
    for source in sources:
        source["job_ids"] = [f"{source['name']}-{echo}" for echo in ECHOES]
        source.pop("discovery", None)
    sources.append({**sources[0], "name": "discovered", "discovery": {"interval": "1h"}})
    del sources[-1]["project"], sources[-1]["job_ids"]
    if bad is not None:
        _spoil(raw, bad)
    return raw


def _spoil(raw: dict[str, Any], bad: str) -> None:
    for fields, model in [(raw["global"], GlobalConfig)] + [
        (source, PROVIDERS[source["provider"]].source_model) for source in raw["sources"]
    ]:
        for name in set(model.model_fields) - NOT_SPOILED:
            fields[name] = dict.fromkeys(NESTED[name], bad) if name in NESTED else bad
        fields[bad] = "an unknown key"
        if "subscription_key" in fields.get("auth", {}):
            fields["auth"].update(region=bad, azure_ad={"client_id": bad})
    raw["sources"][0]["job_ids"] = [bad, bad]
    raw["sources"].append({"name": bad, "provider": bad, "endpoint": bad})
    raw["sources"].append({**raw["sources"][1], "auth": {"subscription_key_file": bad}})


def echo_upstream(sim: Simulator, secrets: Sequence[str]) -> None:
    """Every job's answer carries the secrets: in its status and name (labels, the page), a
    date that does not parse (a message cut at 40 characters), a header (the content type),
    an error body, a Stable Diffusion error message (cut at 120) and training log; a listing
    names a project and a job after one."""
    echo = " | ".join(secrets)
    latin1 = " | ".join(s for s in secrets if s == s.encode("latin-1", "ignore").decode("latin-1"))
    for source, (api, variant) in APIS.items():
        payload = render(SimJob(source, api), 60.0, sim.started_at, variant)
        if api == "stable_diffusion_finetune":
            payload.update(messege=echo, data=f"Step:1 Training Done, 3 Steps to go\n{echo}")
        else:
            payload.update(status=echo, displayName=echo, result={"modelLabel": echo})
        dated = {**payload, "status": "running", "messege": "training_started"}
        dated.update({key: "2" * 30 + echo for key in payload if key.startswith("created")})
        said = {"status": "error", "messege": "x" * 95 + echo, "retry_after": echo}
        error = {"error": {"code": echo, "message": echo}}
        faults = {
            "status": Fault(body=json.dumps(payload).encode()),
            "date": Fault(body=json.dumps(dated).encode()),
            "content-type": Fault(body=echo.encode(), content_type=f"text/{latin1}; charset=x"),
            "error-body": Fault(status=500, body=json.dumps(error).encode()),
            "message": Fault(body=json.dumps(said).encode()),
        }
        for echoed, fault in faults.items():
            sim.set_fault(f"{source}-{echoed}", fault)
    named = next(s for s in secrets if is_path_safe_id(s))
    job = {"projectName": named, "jobId": named, "status": echo, "result": {"modelLabel": echo},
           "createdDateTime": datetime.now(UTC).isoformat()}  # fmt: skip
    listing = {"value": [job], "nextLink": None}  # both the projects and a project's jobs
    sim.set_fault(LISTING, Fault(body=json.dumps(listing).encode()))


def ask_everything(url: str, keys: Sequence[str], token: str) -> dict[str, str]:
    """Every answer that can quote what a client or an upstream sent: the pages, the jobs API
    and webhook refusals, and a reload of a config that fails."""
    echo = " | ".join(keys)
    path, query = quote(echo, safe=""), quote_plus(echo)
    hooks = "/api/v1/webhooks/stable-diffusion"
    calls: list[tuple[str, str, Any]] = [
        ("GET", "/metrics", None),
        ("GET", "/", None),
        ("GET", "/?state=unknown", None),
        ("GET", f"/api/v1/jobs?limit=1&echo={query}", None),
        ("GET", f"/api/v1/jobs?limit={query}", None),
        ("GET", f"/api/v1/jobs?offset={query}", None),
        ("POST", "/api/v1/jobs", {"source": echo, "job_id": "x"}),
        ("POST", "/api/v1/jobs", {"source": "stable-diffusion", "job_id": echo}),
        ("POST", "/api/v1/jobs", {"source": "language-training", "job_id": "x", "project": echo}),
        ("POST", "/api/v1/jobs", {"operation_location": echo}),
        ("DELETE", f"/api/v1/jobs/{path}/{path}", None),
        ("DELETE", f"/api/v1/jobs/stable-diffusion/{path}", None),
        ("POST", f"{hooks}/{path}", {"model_id": echo}),
        ("POST", f"{hooks}/stable-diffusion?token={query}", {"model_id": "x"}),
        ("POST", f"{hooks}/stable-diffusion?token={quote_plus(token)}", {"model_id": echo}),
        ("POST", "/-/reload", None),
    ]
    answers = {}
    for method, target, body in calls:
        answer = requests.request(method, f"{url}{target}", json=body, timeout=30)
        headers = "\n".join(f"{k}: {v}" for k, v in answer.headers.items())
        name = f"{method} {target}" + (f" {json.dumps(body)}" if body else "")
        answers[name] = f"{answer.status_code}\n{headers}\n{answer.text}"
    return answers


def every_exit(directory: Path, keys: Sequence[str], new: Sequence[str]) -> dict[str, str]:
    """Run an exporter (real storage, real HTTP) on the simulator echoing `keys`, ask every
    endpoint, reload a config with `new` secrets that fails, and check it from the command
    line; return every output by name (the log is read by the caller)."""
    sim = Simulator(jobs=(), key=keys[0], keys=frozenset(keys[1:4])).start()
    good, bad = directory / "config.yaml", directory / "bad.yaml"
    good.write_text(yaml.safe_dump(exporter_config(sim.url, keys, directory)), encoding="utf-8")
    spoiled = exporter_config(sim.url, new, directory, bad=" | ".join(new) + " !")
    bad.write_text(yaml.safe_dump(spoiled, allow_unicode=True), encoding="utf-8")
    storage = Storage.open(directory / "data")
    exporter = Exporter(load_config(good), storage=storage)
    app = make_app(
        exporter.exposition, "/metrics", exporter.not_ready, exporter.store.jobs,
        reload=partial(exporter.reload, bad), api=Api(exporter, jobs=True),
    )  # fmt: skip
    server = HttpServer(app, "127.0.0.1:0")
    server.start()
    try:
        echo_upstream(sim, keys)
        exporter.poll_once()
        outputs = ask_everything(f"http://127.0.0.1:{server.port}", keys, keys[4])
    finally:
        server.stop()
        exporter.stop()
        storage.close()
        sim.stop()
    check = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.check", f"--config.file={bad}",
         "--log.level=debug"],
        capture_output=True, encoding="utf-8", errors="replace", timeout=60, check=False,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )  # fmt: skip
    outputs["--config.check"] = f"{check.returncode}\n{check.stdout}\n{check.stderr}"
    for file in (directory / "data").iterdir():
        outputs[f"store {file.name}"] = file.read_bytes().decode("utf-8", "replace")
    return outputs


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keys=KEYS, new=st.lists(ANY_SECRET, min_size=6, max_size=6))
def test_no_piece_of_a_secret_leaves_by_any_exit(keys: tuple[str, ...], new: list[str]) -> None:
    """Secrets in every secret field, echoed by every provider's answers, by clients and by a
    config that fails (reloaded, and checked by --config.check): no 8 characters of one are in
    a log line, an HTTP answer, /metrics, the status page, the check's output or the store."""
    exporter_logging.configure("debug", "json")
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()) as log:
        outputs = every_exit(Path(tmp), keys, new)
    outputs["log"] = log.getvalue()
    assert leaks([*keys, *new], outputs) == []
    # Every path was taken: the secrets came back, and were masked.
    assert outputs["POST /-/reload"].startswith("500")
    assert outputs["--config.check"].startswith("1")
    masked = (exporter_logging.REDACTED, html.escape(exporter_logging.REDACTED))
    for name in ("POST /-/reload", "--config.check", "GET /metrics", "GET /", "log"):
        assert any(text in outputs[name] for text in masked), name
    assert "poll failing" in outputs["log"]
