"""Where the operator's configuration comes from, read strictly.

The environment (`VIEWBAIT_*`, nested fields joined by `__`) and the optional TOML file named by
`VIEWBAIT_CONFIG_FILE` are read here, for `gateway.config.Settings`, with three promises:

- Every name is known. A `VIEWBAIT_*` variable, a TOML key or a key inside a JSON value that
  names no setting is refused with the closest valid name (`difflib`), instead of being ignored
  while the default silently applies. Test-only variables use a prefix of their own
  (`GATEWAY_TEST_*`) for that reason.
- Partial overrides of table-valued settings merge over the defaults, key by key and field by
  field (`MERGED`): `VIEWBAIT_POLICIES='{"analyze_video": {"ttl_s": 60}}'` changes one TTL and
  keeps every other operation's policy. A key set to null removes a default entry where that
  means something (a price or a model limit); tables with a fixed key set (`CLOSED`) refuse
  keys outside it. An empty table there would change nothing, so it is refused too.
- All problems are reported together, as one line each (`ConfigError`), before anything starts.

Settings passed to `Settings(...)` as keyword arguments (tests, embedding code) are taken as
given: they do not merge and are not checked here.
"""

from __future__ import annotations

import difflib
import enum
import json
import os
import tomllib
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

#: Prefix of every gateway setting in the environment.
ENV_PREFIX = "VIEWBAIT_"
#: Separator of nested fields in variable names.
ENV_DELIMITER = "__"
#: Names the gateway reads besides the settings themselves.
CONFIG_FILE_VAR = "VIEWBAIT_CONFIG_FILE"
#: Accepted as a synonym of `VIEWBAIT_GEMINI__API_KEY` (the spelling operators tend to type).
GEMINI_API_KEY_ALIAS = "VIEWBAIT_GEMINI_API_KEY"

#: Tables where a null value removes the default entry (a model without a price or a limit
#: of its own, a tier without a running cap, read limits or concurrency caps).
REMOVABLE = frozenset(
    {
        "gemini.prices",
        "limiter.models",
        "jobs.running_caps",
        "read_limits",
        "concurrency.user_rpcs",
        "concurrency.user_streams",
    }
)
#: Dotted paths of table-valued settings whose partial overrides merge over the defaults.
MERGED = frozenset({"policies"}) | REMOVABLE
#: Tables whose keys are fixed by the defaults (an unknown key is a typo, not a new entry).
CLOSED = frozenset({"policies"})


class ConfigError(Exception):
    """The configuration cannot be used; `problems` says what to fix, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


# -- the shape of the settings ----------------------------------------------------------------


def _unwrap(annotation: Any) -> Any:
    """The type behind `X | None` and `Annotated[X, ...]` (None for a real union of types)."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            options = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(options) != 1:
                return None
            annotation = options[0]
        else:
            return annotation


def _model(annotation: Any) -> type[BaseModel] | None:
    inner = _unwrap(annotation)
    return inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None


def _table(annotation: Any) -> tuple[Any, Any] | None:
    """(key type, value type) of a `dict[K, V]` annotation."""
    inner = _unwrap(annotation)
    if typing.get_origin(inner) is dict:
        key, value = typing.get_args(inner)
        return key, value
    return None


def _is_structured(annotation: Any) -> bool:
    """Whether an environment value of this type is JSON (models, tables, lists)."""
    inner = _unwrap(annotation)
    if inner is None:
        return True
    origin = typing.get_origin(inner)
    return _model(inner) is not None or origin in (dict, list, tuple, set)


def _names(model: type[BaseModel]) -> dict[str, str]:
    """Accepted key -> field name: each field by its name and by its alias."""
    names: dict[str, str] = {}
    for name, info in model.model_fields.items():
        names[name] = name
        if info.alias:
            names[info.alias] = name
    return names


def _table_keys(path: str, key_type: Any, defaults: Any) -> list[str] | None:
    """The keys a table accepts, or None when any key is a valid new entry."""
    if isinstance(key_type, type) and issubclass(key_type, enum.Enum):
        return [str(member.value) for member in key_type]
    if path in CLOSED and isinstance(defaults, Mapping):
        return [str(key) for key in defaults]
    return None


def _default_of(model: type[BaseModel], field: str) -> Any:
    info = model.model_fields[field]
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return info.default


def _dump(value: Any) -> Any:
    """Plain data (dicts, lists, scalars) of a default value, secrets left as they are."""
    if isinstance(value, BaseModel):
        return {name: _dump(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, Mapping):
        return {_dump(k): _dump(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_dump(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


# -- checking names ---------------------------------------------------------------------------


def _suggest(wrong: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(wrong, candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def check_keys(
    value: Any, annotation: Any, path: str, defaults: Any, show: Callable[[str], str]
) -> list[str]:
    """Problems with the keys of `value` (plain data for a setting of type `annotation` at the
    dotted `path`): every unknown key, named with `show(path)` and the closest valid name."""
    problems: list[str] = []
    if not isinstance(value, Mapping):
        return problems
    model = _model(annotation)
    if model is not None:
        names = _names(model)
        for key, item in value.items():
            field = names.get(str(key))
            where = f"{path}.{key}" if path else str(key)
            if field is None:
                options = [f"{path}.{n}" if path else n for n in names]
                problems.append(f"unknown setting {show(where)}{_suggest(where, options)}")
                continue
            default = defaults.get(field) if isinstance(defaults, Mapping) else None
            problems += check_keys(item, model.model_fields[field].annotation, where, default, show)
        return problems
    table = _table(annotation)
    if table is None:
        return problems
    if not value and any(path == m or path.startswith(m + ".") for m in MERGED):
        # Read as "none" by whoever wrote it, it would keep every default: refuse it.
        problems.append(
            f"{show(path)} is empty, which changes nothing: tables merge over the defaults; "
            f"lift or remove an entry by setting it (or its fields) to null"
        )
        return problems
    key_type, value_type = table
    allowed = _table_keys(path, key_type, defaults)
    for key, item in value.items():
        where = f"{path}.{key}"
        if allowed is not None and str(key) not in allowed:
            options = [f"{path}.{k}" for k in allowed]
            problems.append(f"unknown key {show(where)}{_suggest(where, options)}")
            continue
        if item is None:
            if path not in REMOVABLE:
                problems.append(f"{show(where)} may not be null")
            continue
        default = defaults.get(key) if isinstance(defaults, Mapping) else None
        problems += check_keys(item, value_type, where, default, show)
    return problems


def merge_tables(data: dict[str, Any], settings_cls: type[BaseModel]) -> dict[str, Any]:
    """`data` with the partial overrides of every `MERGED` table laid over the defaults (key by
    key, and field by field inside each entry); null entries of `REMOVABLE` tables dropped."""
    for path in MERGED:
        *parents, leaf = path.split(".")
        node: Any = data
        model: type[BaseModel] = settings_cls
        for part in parents:
            node = node.get(part) if isinstance(node, Mapping) else None
            model = _model(model.model_fields[part].annotation) or model
        if not isinstance(node, dict) or not isinstance(node.get(leaf), Mapping):
            continue
        merged = _deep_merge(_dump(_default_of(model, leaf)), node[leaf])
        node[leaf] = {k: v for k, v in merged.items() if v is not None}
    return data


def _deep_merge(base: Any, override: Any) -> Any:
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _deep_merge(base.get(key), value) if key in base else value
        return merged
    return override


# -- the environment --------------------------------------------------------------------------


def _env_paths(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every dotted path a variable may name directly (models are walked, tables are leaves)."""
    for name, info in model.model_fields.items():
        for key in {name, info.alias or name}:
            path = f"{prefix}{key}"
            yield path
            inner = _model(info.annotation)
            if inner is not None:
                yield from _env_paths(inner, f"{path}.")


def env_name(path: str) -> str:
    """The variable that sets the dotted setting `path` (`gemini.api_key` ->
    `VIEWBAIT_GEMINI__API_KEY`)."""
    return ENV_PREFIX + path.replace(".", ENV_DELIMITER).upper()


def _resolve_env(segments: list[str], model: type[BaseModel]) -> tuple[list[str], Any] | None:
    """The field path and type a variable's segments name, or None if they name nothing."""
    annotation: Any = model
    path: list[str] = []
    for segment in segments:
        inner = _model(annotation)
        if inner is not None:
            field = {k.lower(): v for k, v in _names(inner).items()}.get(segment)
            if field is None:
                return None
            path.append(field)
            annotation = inner.model_fields[field].annotation
            continue
        table = _table(annotation)
        if table is None:
            return None
        path.append(segment)
        annotation = table[1]
    return path, annotation


def read_environment(
    settings_cls: type[BaseModel], environ: Mapping[str, str]
) -> tuple[dict[str, Any], list[str]]:
    """The settings `VIEWBAIT_*` variables set (nested plain data), and the problems: unknown
    names (with the closest valid one), unreadable JSON, unknown keys inside JSON values."""
    data: dict[str, Any] = {}
    problems: list[str] = []
    candidates = [env_name(p) for p in _env_paths(settings_cls)]
    candidates += [CONFIG_FILE_VAR, GEMINI_API_KEY_ALIAS]
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX) or name.upper() in (
            CONFIG_FILE_VAR,
            GEMINI_API_KEY_ALIAS,
        ):
            continue
        raw = environ[name]
        segments = name[len(ENV_PREFIX) :].lower().split(ENV_DELIMITER)
        resolved = _resolve_env(segments, settings_cls) if all(segments) else None
        if resolved is None:
            # Matched without the prefix every name shares, which would make any two alike.
            close = difflib.get_close_matches(
                name.upper().removeprefix(ENV_PREFIX),
                [c.removeprefix(ENV_PREFIX) for c in candidates],
                n=1,
                cutoff=0.6,
            )
            hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else ""
            problems.append(f"unknown setting {name}{hint}")
            continue
        path, annotation = resolved
        value: Any = raw
        if _is_structured(annotation):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                problems.append(f"{name} is not valid JSON ({exc.msg} at position {exc.pos})")
                continue
            default = _default_at(settings_cls, path)
            problems += check_keys(value, annotation, ".".join(path), default, _inside(name))
        _set(data, path, value)
    alias = environ.get(GEMINI_API_KEY_ALIAS)
    if alias and "api_key" not in data.get("gemini", {}):
        _set(data, ["gemini", "api_key"], alias)
    return data, problems


def _inside(variable: str) -> Callable[[str], str]:
    return lambda path: f"{path} in {variable}"


def _default_at(settings_cls: type[BaseModel], path: list[str]) -> Any:
    node: Any = _dump(settings_cls.model_construct())
    for part in path:
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _set(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    leaf = path[-1]
    if isinstance(node.get(leaf), dict) and isinstance(value, Mapping):
        node[leaf] = _deep_merge(node[leaf], value)
    else:
        node[leaf] = value


# -- the TOML file ----------------------------------------------------------------------------


def read_toml(settings_cls: type[BaseModel], path: str) -> tuple[dict[str, Any], list[str]]:
    """The settings a TOML file sets, and the problems (unreadable file, unknown keys)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        return {}, [f"{CONFIG_FILE_VAR}={path} cannot be read ({exc.strerror or exc})"]
    except tomllib.TOMLDecodeError as exc:
        return {}, [f"{CONFIG_FILE_VAR}={path} is not valid TOML ({exc})"]
    defaults = _dump(settings_cls.model_construct())
    problems = check_keys(data, settings_cls, "", defaults, lambda p: f"{p} in {path}")
    return data, problems


class OperatorSource(PydanticBaseSettingsSource):
    """The environment over the TOML file, checked and merged (the module docstring)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self._environ = environ

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        # Unused: `__call__` reads everything at once.
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        problems: list[str] = []
        file = self._environ.get(CONFIG_FILE_VAR)
        if file:
            data, problems = read_toml(self.settings_cls, file)
        env, env_problems = read_environment(self.settings_cls, self._environ)
        problems += env_problems
        if problems:
            raise ConfigError(problems)
        return merge_tables(_deep_merge(data, env), self.settings_cls)


def operator_source(settings_cls: type[BaseSettings]) -> OperatorSource:
    """The source `Settings` reads the process environment (and its TOML file) through."""
    return OperatorSource(settings_cls, os.environ)


__all__ = [
    "CONFIG_FILE_VAR",
    "ENV_PREFIX",
    "GEMINI_API_KEY_ALIAS",
    "MERGED",
    "ConfigError",
    "OperatorSource",
    "check_keys",
    "env_name",
    "merge_tables",
    "operator_source",
    "read_environment",
    "read_toml",
]
