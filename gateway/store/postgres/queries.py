"""The store's SQL: named, described statements with named parameters, in `sql/queries.sql`.

The file is read once per process. `Queries(schema, defaults)` fills in the schema and turns
each statement's `:name` parameters into asyncpg's positional `$n` (numbered in order of first
use; a name used twice is one parameter), so a call reads
`conn.fetch(*queries("claim", job_id=..., worker_id=..., lease_s=...))`. A call must give every
parameter its statement uses that has no default, and nothing else: a misspelt name fails at
once, not as a wrong `$n`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from gateway.store import migrate

#: `-- name --` starts an entry.
_HEADER = re.compile(r"^-- ([a-z][a-z0-9_]*) --$", re.MULTILINE)
#: `:name`, but not the second half of a `::type` cast.
_PARAM = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")
#: `{entry}`: the text of another entry (`{schema}` is the schema, filled in last).
_INCLUDE = re.compile(r"\{([a-z][a-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of `queries.sql`, as written."""

    name: str
    description: str
    sql: str


@dataclass(frozen=True, slots=True)
class Statement:
    """An entry ready for asyncpg: positional SQL and its parameters' names in `$n` order."""

    name: str
    sql: str
    params: tuple[str, ...]


def parse(text: str) -> dict[str, Entry]:
    """The entries of a queries file (see the module docstring), by name."""
    entries: dict[str, Entry] = {}
    headers = list(_HEADER.finditer(text))
    for header, following in zip(headers, [*headers[1:], None], strict=True):
        name = header[1]
        body = text[header.end() : None if following is None else following.start()]
        description: list[str] = []
        sql: list[str] = []
        for line in body.strip().splitlines():
            if not sql and line.startswith("--"):
                description.append(line.removeprefix("--").strip())
            elif not line.lstrip().startswith("--"):
                sql.append(line)
        if name in entries:
            raise ValueError(f"queries.sql defines {name!r} twice")
        if not description or not sql:
            raise ValueError(f"queries.sql entry {name!r} needs a description and SQL")
        entries[name] = Entry(name, " ".join(description), "\n".join(sql).strip().rstrip(";"))
    return entries


@functools.cache
def load() -> dict[str, Entry]:
    """The entries shipped with the gateway (read once)."""
    text = (
        resources.files("gateway.store.postgres")
        .joinpath("sql/queries.sql")
        .read_text(encoding="utf-8")
    )
    return parse(text)


def _expand(entries: Mapping[str, Entry], name: str, seen: tuple[str, ...] = ()) -> str:
    if name in seen:
        raise ValueError(f"queries.sql entries include each other: {' -> '.join(seen)}")

    def include(match: re.Match[str]) -> str:
        if match[1] == "schema":
            return match[0]
        if match[1] not in entries:
            raise ValueError(f"queries.sql entry {name!r} includes unknown {match[0]}")
        return _expand(entries, match[1], (*seen, name))

    return _INCLUDE.sub(include, entries[name].sql)


def statement_names(entries: Mapping[str, Entry]) -> list[str]:
    """The entries that are statements: those no other entry includes."""
    included = {m[1] for entry in entries.values() for m in _INCLUDE.finditer(entry.sql)}
    return [name for name in entries if name not in included]


def compile_entry(entries: Mapping[str, Entry], name: str, schema: str) -> Statement:
    """Entry `name` with its includes expanded, `schema` filled in and parameters numbered."""
    params: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in params:
            params.append(match[1])
        return f"${params.index(match[1]) + 1}"

    sql = _PARAM.sub(number, migrate.render(_expand(entries, name), schema))
    return Statement(name, sql, tuple(params))


class Queries:
    """Every statement of `queries.sql` for one schema, called by name."""

    def __init__(self, schema: str, defaults: Mapping[str, Any]) -> None:
        entries = load()
        self._statements = {
            name: compile_entry(entries, name, schema) for name in statement_names(entries)
        }
        self._defaults = dict(defaults)

    def __call__(self, name: str, /, **values: Any) -> tuple[Any, ...]:
        """`(sql, *args)` of statement `name` for the named `values` (and the defaults)."""
        statement = self._statements[name]
        unknown = values.keys() - set(statement.params)
        if unknown:
            raise TypeError(f"statement {name!r} has no parameter {sorted(unknown)}")
        try:
            args = [values[p] if p in values else self._defaults[p] for p in statement.params]
        except KeyError as exc:
            raise TypeError(f"statement {name!r} needs parameter {exc.args[0]!r}") from None
        return (statement.sql, *args)

    def sql(self, name: str) -> str:
        """The positional SQL of statement `name` (for tests and EXPLAIN)."""
        return self._statements[name].sql
