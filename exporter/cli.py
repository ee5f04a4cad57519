"""Command line: flags in Prometheus style, then one of --config.check, --once, --demo or serve."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import signal
import socket
import sys
from functools import partial
from typing import TYPE_CHECKING, Any, TextIO

import structlog

from exporter import __version__
from exporter import logging as exporter_logging
from exporter.api import Api
from exporter.app import Exporter, metric_families
from exporter.config import ConfigError, json_schema, load_config, parse_config
from exporter.logging import redactor
from exporter.selection import ALLOW, DENY, Selection, parse_patterns
from exporter.server import (
    MAX_CONNECTIONS,
    READ_TIMEOUT,
    HttpServer,
    make_app,
    parse_listen_address,
    raise_open_files_limit,
)
from exporter.sharding import Shard, ordinal
from exporter.storage import Storage, StorageError
from exporter.values import parse_duration
from exporter.webconfig import WebConfig, WebConfigFile, load_web_config

if TYPE_CHECKING:
    import re
    from collections.abc import Iterator, Sequence

    from exporter.config import Config

log = structlog.get_logger("exporter")

DEFAULT_LISTEN = ":9879"


def _telemetry_path(value: str) -> str:
    if not value.startswith("/") or value == "/" or value.startswith("/-/"):
        raise argparse.ArgumentTypeError(f"{value!r} must start with / and not be / or under /-/")
    return value


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of at least 1")
    return int(value)


def _duration(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _listen_address(value: str) -> str:
    try:
        parse_listen_address(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _patterns(value: str) -> tuple[re.Pattern[str], ...]:
    try:
        return parse_patterns(value, metric_families())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asyncjob-exporter",
        description="Prometheus exporter for long-running AI jobs (Azure AI Language, "
        "Text Analytics, Translator document batches, Stable Diffusion fine-tunes).",
    )
    add = parser.add_argument
    add(
        "--config.file",
        dest="config_file",
        default="config.yaml",
        metavar="PATH",
        help="configuration file (default: %(default)s)",
    )
    add(
        "--config.check",
        dest="config_check",
        action="store_true",
        help="validate the configuration file (and --web.config.file, if given), print every "
        "problem, and exit without listening",
    )
    add(
        "--config.schema",
        dest="config_schema",
        action="store_true",
        help="print the configuration file's JSON Schema (for editors) and exit",
    )
    add(
        "--web.listen-address",
        dest="listen_address",
        default=DEFAULT_LISTEN,
        type=_listen_address,
        metavar="[HOST]:PORT",
        help="address to serve metrics on (default: %(default)s)",
    )
    add(
        "--web.config.file",
        dest="web_config_file",
        default="",
        metavar="PATH",
        help="web configuration file (TLS, basic auth, headers), in Prometheus's format",
    )
    add(
        "--web.enable-lifecycle",
        dest="enable_lifecycle",
        action="store_true",
        help="enable POST /-/reload (SIGHUP reloads either way)",
    )
    add(
        "--web.enable-jobs-api",
        dest="enable_jobs_api",
        action="store_true",
        help="enable /api/v1/jobs: register, list and remove jobs without editing the config",
    )
    add(
        "--web.max-connections",
        dest="max_connections",
        default=MAX_CONNECTIONS,
        type=_positive_int,
        metavar="N",
        help="connections open at once; at the limit, the one that has waited longest for its "
        "request makes room, and when all are busy more wait in the listen backlog "
        "(default: %(default)s)",
    )
    add(
        "--web.read-timeout",
        dest="read_timeout",
        default=READ_TIMEOUT,
        type=_duration,
        metavar="DURATION",
        help="a request's head and body must arrive within this, in all, however slowly they "
        "trickle (default: 10s)",
    )
    add(
        "--web.telemetry-path",
        dest="telemetry_path",
        default="/metrics",
        type=_telemetry_path,
        metavar="PATH",
        help="path under which to expose metrics (default: %(default)s)",
    )
    add(
        "--storage.path",
        dest="storage_path",
        default="data/",
        metavar="DIR",
        help="where what the exporter knows is kept across restarts, a SQLite database "
        "(default: %(default)s; --once and --demo keep everything in memory)",
    )
    add(
        "--total-shards",
        dest="total_shards",
        default=1,
        type=_positive_int,
        metavar="M",
        help="split the jobs over M exporters with the same config (default: %(default)s)",
    )
    add(
        "--shard",
        dest="shard",
        default="0",
        metavar="N|auto",
        help="this exporter's shard, 0..M-1; auto: the ordinal ending the hostname, as a "
        "StatefulSet's pods are named (default: %(default)s)",
    )
    add(
        "--shard.peer-url",
        dest="shard_peer_url",
        default=None,
        metavar="TEMPLATE",
        help="the other shards' base URL, with {shard} for the number (e.g. "
        "http://asyncjob-exporter-{shard}.asyncjob-exporter:9879): the jobs API and webhooks "
        "forward a job another shard owns there",
    )
    lists = parser.add_mutually_exclusive_group()
    lists.add_argument(
        ALLOW,
        dest="metric_allowlist",
        default=None,
        type=_patterns,
        metavar="REGEX,...",
        help="export only the asyncjob_ families these regular expressions match, each a whole "
        "name (process_ and python_ families are always exported)",
    )
    lists.add_argument(
        DENY,
        dest="metric_denylist",
        default=None,
        type=_patterns,
        metavar="REGEX,...",
        help="export every asyncjob_ family but those these regular expressions match, each a "
        "whole name; not with --metric-allowlist",
    )
    add(
        "--log.level",
        dest="log_level",
        default="info",
        choices=exporter_logging.LEVELS,
        help="only log messages at this level or above (default: %(default)s)",
    )
    add(
        "--log.format",
        dest="log_format",
        default=None,
        choices=["json", "console"],
        help="log format (default: console on a terminal, json otherwise)",
    )
    add(
        "--once",
        action="store_true",
        help="poll every configured job once, print the metrics to stdout, and exit",
    )
    add(
        "--demo",
        action="store_true",
        help="run against the embedded simulator with a built-in config (ignores --config.file)",
    )
    add("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _say(line: str, out: TextIO | None = None) -> None:
    """Print one line of --config.check (or start-up) output, masked like every exit."""
    print(redactor.mask(line), file=out or sys.stdout)


def _print_problems(error: ConfigError, path: str, out: TextIO) -> None:
    count = len(error.problems)
    _say(f"{path}: {count} problem{'s' if count != 1 else ''}", out)
    for where, what in error.problems:
        _say(f"{where}: {what}", out)


class Signals:
    """SIGTERM and SIGINT ask to stop, SIGHUP to reload; the main thread takes them in order.

    A Python-level handler runs only when the main thread executes bytecode, so a signal that
    lands just before the main thread blocks, or on another thread, would wait for ever. The C
    handler writes every signal's number to a socket instead (`signal.set_wakeup_fd`), whatever
    thread takes the signal and whenever it comes, and the main thread reads from that socket.
    """

    WANTED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._write.settimeout(0)  # non-blocking, as set_wakeup_fd requires
        self._previous_fd = signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        self._previous = {signum: signal.signal(signum, _noted) for signum in self.WANTED}

    def next(self) -> str:
        """Block until the next wanted signal: "reload" or "stop"."""
        while True:
            signum = self._read.recv(1)[0]
            if signum == signal.SIGHUP:
                return "reload"
            if signum in self.WANTED:
                return "stop"

    def close(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_fd)
        self._read.close()
        self._write.close()


def _noted(_signum: int, _frame: Any) -> None:
    """The Python-level handler does nothing: the signal number is already in the socket."""


def selection_of(args: argparse.Namespace) -> Selection:
    """The families the flags select (the parser has checked their patterns)."""
    return Selection.of(args.metric_allowlist, args.metric_denylist)


def shard_of(args: argparse.Namespace) -> Shard:
    """The Shard the flags name; ValueError says what is wrong with them."""
    peer = args.shard_peer_url
    if peer is not None and "{shard}" not in peer:
        raise ValueError(f"--shard.peer-url {peer!r} has no {{shard}} to put the number in")
    if args.shard == "auto":
        index = ordinal(socket.gethostname())
    elif args.shard.isdigit():
        index = int(args.shard)
    else:
        raise ValueError(f"--shard {args.shard!r} is neither a number nor auto")
    return Shard(index, args.total_shards, peer)


@contextlib.contextmanager
def _loading() -> Iterator[None]:
    """The cyclic garbage collector off while the exporter loads (its store resumed from the
    storage). Loading makes what the process keeps and hardly any garbage, yet the collector
    walked all of it, again and again as it grew: 0.4 s of the 1.5 s that loading 50,000
    stored jobs took. Once loaded, what the process holds is frozen (`gc.freeze`, see serve),
    so that no later collection walks it either. An object is freed as ever when nothing
    refers to it; only a reference cycle made by then and let go later is never collected."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def serve(config: Config, args: argparse.Namespace, banner: Sequence[str] = ()) -> int:
    """Serve until SIGTERM or SIGINT; SIGHUP reloads. Signals are taken from the start, so one
    that arrives while the exporter starts is acted on once it runs, not lost or fatal. What is
    opened is closed in reverse order on the way out, whichever way that is."""
    with contextlib.ExitStack() as opened:
        signals = Signals()
        opened.callback(signals.close)
        web = WebConfig(WebConfigFile())
        if args.web_config_file:
            try:
                web = load_web_config(args.web_config_file)
            except ConfigError as exc:
                _print_problems(exc, args.web_config_file, sys.stderr)
                return 1
        storage = None
        if not args.demo:  # the demo, like --once, keeps everything in memory
            try:
                storage = Storage.open(args.storage_path)
            except StorageError as exc:
                log.error("cannot open storage", error=str(exc))  # noqa: TRY400 - it says all
                return 1
            opened.callback(storage.close)
        try:
            shard = shard_of(args)
        except ValueError as exc:
            log.error("bad sharding flags", error=str(exc))  # noqa: TRY400 - it says all
            return 1
        with _loading():
            exporter = Exporter(config, storage=storage, shard=shard, selection=selection_of(args))
        gc.freeze()  # see _loading
        opened.callback(exporter.stop)
        reload = None if args.demo else partial(exporter.reload, args.config_file)
        app = make_app(
            exporter.exposition,
            args.telemetry_path,
            exporter.not_ready,
            exporter.store.jobs,
            reload=reload if args.enable_lifecycle else None,
            web=web,
            api=Api(exporter, jobs=args.enable_jobs_api or args.demo),
        )
        open_files = raise_open_files_limit()
        try:
            server = HttpServer(
                app, args.listen_address, web.tls, args.max_connections, args.read_timeout
            )
        except OSError as exc:
            # The OS reason is the whole story (port in use, no permission); no traceback.
            reason = exc.strerror or str(exc)
            log.error("cannot listen", address=args.listen_address, error=reason)  # noqa: TRY400
            return 1
        server.start()
        opened.callback(server.stop)
        exporter.start()
        _announce(config, args, web, server.port, banner)
        log.debug("open files limit", limit=open_files)
        if args.demo:
            _demo_arrivals(args, web, server.port)
        while signals.next() != "stop":
            if reload is None:
                log.warning("reload ignored: --demo runs a built-in config")
            else:
                reload()
        log.info("shutting down")
    return 0


def _demo_arrivals(args: argparse.Namespace, web: WebConfig, port: int) -> None:
    from exporter.simulator import demo_arrivals  # noqa: PLC0415 - demo only

    host, _ = parse_listen_address(args.listen_address)
    if web.tls is not None or web.auth is not None:
        return  # the demo's own calls would need the certificate and a password
    local = "127.0.0.1" if host in {"", "0.0.0.0", "::"} else host  # noqa: S104
    base = f"http://{local if ':' not in local else f'[{local}]'}:{port}"
    print("Jobs arriving by themselves (the demo just did these):", flush=True)  # noqa: T201
    for line in demo_arrivals(base, DEMO_ARRIVALS):
        print(f"  {line}", flush=True)  # noqa: T201


def _announce(
    config: Config, args: argparse.Namespace, web: WebConfig, port: int, banner: Sequence[str]
) -> None:
    jobs = sum(len(s.job_ids) for s in config.sources)
    log.info(
        "listening", address=args.listen_address, port=port, tls=web.tls is not None,
        basic_auth=web.auth is not None, sources=len(config.sources), jobs=jobs,
        storage=None if args.demo else args.storage_path,
    )  # fmt: skip
    host, _ = parse_listen_address(args.listen_address)
    scheme = "https" if web.tls else "http"
    base = f"{scheme}://{host or 'localhost'}:{port}"
    for line in (
        *banner,
        f"Metrics:        {base}{args.telemetry_path}",
        f"Status page:    {base}/",
    ):
        print(line, flush=True)  # noqa: T201 - the URLs a person asked for with --demo


DEMO_ARRIVALS = 30.0  # seconds between the demo's jobs that arrive by themselves


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _check(args: argparse.Namespace) -> int:
    """--config.check: the config (the built-in one with --demo) and the web config, every
    problem of both at once; nothing is started and nothing listens."""
    ok = True
    where = "--demo" if args.demo else args.config_file
    try:
        if args.demo:
            from exporter.simulator import demo_config  # noqa: PLC0415 - demo only

            config = parse_config(demo_config("http://127.0.0.1:1", discovery=True))
        else:
            config = load_config(args.config_file)
    except ConfigError as exc:
        _print_problems(exc, where, sys.stderr)
        ok = False
    else:
        jobs = sum(len(s.job_ids) for s in config.sources)
        found = sum(1 for s in config.sources if s.discovery is not None)
        counts = [_plural(len(config.sources), "source"), _plural(jobs, "job")]
        counts += [f"{found} discovering"] if found else []
        _say(f"{where}: OK ({', '.join(counts)})")
    if args.web_config_file:
        try:
            web = load_web_config(args.web_config_file)
        except ConfigError as exc:
            _print_problems(exc, args.web_config_file, sys.stderr)
            ok = False
        else:
            features = [f for f, on in (("TLS", web.tls), ("basic auth", web.auth)) if on]
            _say(f"{args.web_config_file}: OK ({', '.join(features) or 'no TLS, no auth'})")
    selection = selection_of(args)
    if selection.patterns:  # the parser refused a pattern that matches no family
        families = metric_families()
        kept = sum(1 for name, kind in families if selection.keeps(name, kind))
        flag = ALLOW if selection.allow else DENY
        _say(f"{flag}: OK ({kept} of {len(families)} asyncjob_ families exported)")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    exporter_logging.configure(args.log_level, args.log_format)
    if args.config_schema:
        print(json.dumps(json_schema(), indent=2))  # noqa: T201
        return 0
    if args.config_check:
        return _check(args)
    if args.demo:
        from exporter.simulator import Simulator, demo_config  # noqa: PLC0415 - demo only

        simulator = Simulator(arrivals_every=DEMO_ARRIVALS).start()
        try:
            config = parse_config(demo_config(simulator.url, discovery=True))
            banner = (f"Simulator:      {simulator.url} (demo upstream APIs)",)
            return serve(config, args, banner) if not args.once else _once(config, args)
        finally:
            simulator.stop()
    try:
        config = load_config(args.config_file)
    except ConfigError as exc:
        _print_problems(exc, args.config_file, sys.stderr)
        return 1
    if args.once:
        return _once(config, args)
    return serve(config, args)


def _once(config: Config, args: argparse.Namespace) -> int:
    exporter = Exporter(config, selection=selection_of(args))
    try:
        exporter.poll_once()
        sys.stdout.write(
            b"".join(exporter.exposition.render(openmetrics=False, gzipped=False)).decode()
        )
    finally:
        exporter.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
