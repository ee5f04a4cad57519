"""The config file: YAML in, a validated and frozen `Config` out, or every problem with its place.

Validation runs in three passes so that each error names where it is: `${VAR}` expansion over
the raw tree, then the `global` block and each source against its provider's own model (so
`project` is required only for training jobs), then checks across sources (unique names).
Problems are `location: message` pairs, like `sources[2].provider: unknown provider ...`.
Secrets are `SecretStr` from the moment they are validated. Before that, the secrets of the raw
tree (the values of secret keys, the contents of their `*_file` forms) are registered with the
redactor, and every problem is masked through it: a config that fails still never shows a key,
even one pasted into the wrong field.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import Field, ValidationError

from exporter.logging import quoted, redactor
from exporter.providers import PROVIDERS
from exporter.providers.base import Retention, SourceBase, StrictModel
from exporter.values import DURATION_PATTERN, Duration, format_duration, read_secret_file

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from exporter.providers.base import Provider

Location = tuple[str | int, ...]
_ENV_REF = re.compile(r"\$\{([^}]*)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SECRET_KEYS = frozenset(
    {"subscription_key", "api_key", "client_secret", "webhook_token", "webhook_secret"}
)


class GlobalConfig(StrictModel):
    retention: Retention = Field(default_factory=Retention)
    poll_interval: Duration = 30.0
    timeout: Duration = 10.0
    max_concurrency: int = Field(default=8, ge=1, le=256)
    retries: int = Field(default=3, ge=0, le=10)
    max_retry_wait: Duration = 30.0
    max_response_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_requests_per_minute: float | None = Field(default=None, gt=0)  # all sources together


@dataclass(frozen=True, slots=True)
class Config:
    global_: GlobalConfig
    sources: tuple[SourceBase, ...]

    def poll_interval(self, source: SourceBase) -> float:
        return source.poll_interval or self.global_.poll_interval

    def discovery_interval(self, source: SourceBase) -> float | None:
        """How often the source lists its jobs; None: it has no discovery."""
        if source.discovery is None:
            return None
        return source.discovery.interval or self.poll_interval(source)

    def retention(self, source: SourceBase) -> Retention:
        """How long the source's finished jobs stay exported (not those listed in the config)."""
        own = source.retention
        if own is None:
            return self.global_.retention
        return self.global_.retention.model_copy(update=own.model_dump(exclude_none=True))

    def provider(self, source: SourceBase) -> Provider[Any]:
        return PROVIDERS[source.provider]


class ConfigError(Exception):
    """The config is invalid; `problems` holds every (location, message) found."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        # Masked here, so that no reader of a problem (a log line, the reload answer,
        # --config.check) can show a secret, whatever the message or the location quotes.
        self.problems: list[tuple[str, str]] = redactor.scrub(list(problems))
        super().__init__("\n".join(f"{where}: {what}" for where, what in self.problems))


def format_location(loc: Location) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which YAML would otherwise resolve silently."""


def _mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _expand(
    value: Any, loc: Location, env: Mapping[str, str], problems: list[tuple[str, str]]
) -> Any:
    """Replace ${VAR} in every string; a missing variable is a problem at its location."""
    if isinstance(value, dict):
        return {k: _expand(v, (*loc, str(k)), env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, (*loc, i), env, problems) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name = match[1]
        if not _ENV_NAME.match(name):
            problems.append((format_location(loc), f"invalid variable reference ${{{name}}}"))
        elif name not in env:
            problems.append((format_location(loc), f"environment variable {name} is not set"))
        else:
            return env[name]
        return ""

    return _ENV_REF.sub(substitute, value)


def validation_problems(error: ValidationError, prefix: Location = ()) -> list[tuple[str, str]]:
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        loc = (*prefix, *item["loc"])
        kind = item["type"]
        if kind == "extra_forbidden":
            message = "unknown key"
        elif kind == "missing":
            message = "required key is missing"
        else:
            message = item["msg"].removeprefix("Value error, ")
        problems.append((format_location(loc), message))
    return problems


def _validate_source(raw: Any, index: int, problems: list[tuple[str, str]]) -> SourceBase | None:
    loc: Location = ("sources", index)
    if not isinstance(raw, dict):
        problems.append((format_location(loc), "expected a mapping with name, provider, job_ids"))
        return None
    name = raw.get("provider")
    if name not in PROVIDERS:
        expected = ", ".join(PROVIDERS)
        message = (
            "required key is missing"
            if name is None
            else f"unknown provider {quoted(name)}; expected one of {expected}"
        )
        problems.append((format_location((*loc, "provider")), message))
        return None
    try:
        source: SourceBase = PROVIDERS[name].source_model.model_validate(raw)
    except ValidationError as exc:
        problems.extend(validation_problems(exc, loc))
        return None
    crossed = source.problems()
    if source.discovery is not None and PROVIDERS[name].lister is None:
        crossed.append(("discovery", (
            f"{name} has no list endpoint to discover jobs from; remove discovery and "
            "register its jobs through the jobs API (--web.enable-jobs-api, POST /api/v1/jobs)"
        )))  # fmt: skip
    problems.extend((format_location((*loc, key)), message) for key, message in crossed)
    return None if crossed else source


def _duplicates(raw_sources: Sequence[Any], problems: list[tuple[str, str]]) -> None:
    """Names and job IDs must be unique; checked on the raw tree so other errors don't hide it."""
    names: dict[Any, int] = {}
    for index, raw in enumerate(raw_sources):
        if not isinstance(raw, dict):
            continue
        name = raw.get("name")
        if isinstance(name, str) and name in names:
            first = format_location(("sources", names[name]))
            where = format_location(("sources", index, "name"))
            problems.append(
                (where, f"duplicate source name {quoted(name)} (first used at {first})")
            )
        names.setdefault(name, index)
        job_ids = raw.get("job_ids")
        seen: set[Any] = set()
        for k, job_id in enumerate(job_ids if isinstance(job_ids, list) else []):
            if isinstance(job_id, str) and job_id in seen:
                where = format_location(("sources", index, "job_ids", k))
                problems.append((where, f"duplicate job ID {quoted(job_id)}"))
            seen.add(job_id)


def parse_config(raw: Any, env: Mapping[str, str] | None = None) -> Config:
    """Validate an already-loaded YAML tree. Raises ConfigError listing every problem."""
    problems: list[tuple[str, str]] = []
    if not isinstance(raw, dict):
        raise ConfigError([("(top level)", "expected a mapping with 'sources' (and 'global')")])
    tree = _expand(raw, (), os.environ if env is None else env, problems)
    redactor.register(secret_values(tree))  # before validation: its messages may quote them
    unknown = [key for key in tree if key not in {"global", "sources"}]
    problems.extend((format_location((str(key),)), "unknown key") for key in unknown)
    global_config = GlobalConfig()
    try:
        global_config = GlobalConfig.model_validate(tree.get("global") or {})
    except ValidationError as exc:
        problems.extend(validation_problems(exc, ("global",)))
    raw_sources = tree.get("sources")
    if not isinstance(raw_sources, list) or not raw_sources:
        problems.append(("sources", "expected a non-empty list of sources"))
        raw_sources = []
    sources = [_validate_source(s, i, problems) for i, s in enumerate(raw_sources)]
    _duplicates(raw_sources, problems)
    if problems:
        raise ConfigError(problems)
    return Config(global_=global_config, sources=tuple(s for s in sources if s is not None))


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file safely, refusing duplicate keys. Raises ConfigError with the place."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([(str(path), f"cannot read file: {exc.strerror or exc}")]) from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([(where, f"invalid YAML: {problem}")]) from None


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file. Raises ConfigError (never a bare OSError or YAMLError)."""
    return parse_config(read_yaml(path), env)


def json_schema() -> dict[str, Any]:
    """The config file's JSON Schema, from the same pydantic models that validate it.

    Each provider's source model is one `oneOf` branch, told apart by `provider` (a const), so an
    editor completes and checks the keys of the provider being written. `${VAR}` references are
    strings, so a number or a list written as one is flagged by the schema but accepted by the
    exporter."""
    defs: dict[str, Any] = {}

    def take(schema: dict[str, Any]) -> dict[str, Any]:
        defs.update(schema.pop("$defs", {}))
        for prop in schema.get("properties", {}).values():
            kinds = [prop, *prop.get("anyOf", ())]
            duration = any(k.get("pattern") == DURATION_PATTERN for k in kinds)
            if duration and isinstance(prop.get("default"), float):
                prop["default"] = format_duration(prop["default"])  # as it is written: "30s"
        return schema

    variants = []
    for name, provider in PROVIDERS.items():
        schema = take(provider.source_model.model_json_schema())
        schema["title"] = name
        schema["properties"]["provider"] = {"const": name, "description": "the upstream API"}
        variants.append(schema)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "asyncjob-exporter configuration",
        "type": "object",
        "additionalProperties": False,
        "required": ["sources"],
        "properties": {
            "global": take(GlobalConfig.model_json_schema()),
            "sources": {"type": "array", "minItems": 1, "items": {"oneOf": variants}},
        },
        "$defs": dict(sorted(defs.items())),
    }


def secret_values(tree: Any) -> list[str]:
    """Every secret in a raw config tree, valid or not: whatever is written under a secret key
    (in any shape), and the contents of the files their `*_file` forms name."""
    found: list[str] = []

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and key.endswith("_file") and key[:-5] in SECRET_KEYS:
                    with contextlib.suppress(ValueError):  # unreadable: the problem says so
                        found.append(read_secret_file(item).get_secret_value())
                    continue
                if secret:
                    walk(key, secret)
                walk(item, secret or key in SECRET_KEYS)
        elif isinstance(value, list):
            for item in value:
                walk(item, secret)
        elif secret and isinstance(value, str | int | float) and not isinstance(value, bool):
            found.append(str(value))  # a number is refused as a key, but may be one all the same

    walk(tree, secret=False)
    return found
