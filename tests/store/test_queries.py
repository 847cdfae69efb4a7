"""The SQL loader: named, described statements with named parameters, and the shipped file."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import pytest

from gateway.config import StoreSettings
from gateway.store.postgres import queries, run_migrations
from gateway.store.postgres.queries import Queries, compile_entry, parse, statement_names

PgSettings = Callable[..., StoreSettings]

TEXT = """
-- A preamble is not an entry.

-- owner --
-- The owner column.
coalesce(user_id, :fallback)

-- by_owner --
-- Rows of one owner,
-- newest first.
SELECT id, {owner} AS owner, id::text || ':' || :label AS tag
FROM {schema}.t
-- a comment inside the SQL is dropped: :not_a_parameter
WHERE {owner} = :owner AND created_at > :since::timestamptz
ORDER BY created_at DESC;
"""


def test_entries_have_a_name_a_description_and_sql() -> None:
    entries = parse(TEXT)

    assert list(entries) == ["owner", "by_owner"]
    assert entries["by_owner"].description == "Rows of one owner, newest first."
    assert entries["by_owner"].sql.endswith("ORDER BY created_at DESC")
    assert "not_a_parameter" not in entries["by_owner"].sql
    assert statement_names(entries) == ["by_owner"]


def test_named_parameters_become_positional_in_order_of_first_use() -> None:
    statement = compile_entry(parse(TEXT), "by_owner", 'we"ird')

    assert statement.params == ("fallback", "label", "owner", "since")
    assert statement.sql.splitlines() == [
        "SELECT id, coalesce(user_id, $1) AS owner, id::text || ':' || $2 AS tag",
        'FROM "we""ird".t',
        "WHERE coalesce(user_id, $1) = $3 AND created_at > $4::timestamptz",
        "ORDER BY created_at DESC",
    ]


def test_a_call_needs_every_parameter_and_no_other() -> None:
    calls = Queries(
        "s",
        {
            "channel": "c",
            "due": "due",
            "announce": True,
            "succeeded_retention_s": 1.0,
            "failed_retention_s": 1.0,
            "cancelled_retention_s": 1.0,
            "abandoned": "abandoned",
        },
    )

    sql, *args = calls("purge_jobs", limit=5, statuses=None)
    assert "$2" in sql and args == [None, 5]
    with pytest.raises(TypeError, match="needs parameter 'limit'"):
        calls("purge_jobs", statuses=None)
    with pytest.raises(TypeError, match="no parameter \\['limt'\\]"):
        calls("purge_jobs", limit=5, statuses=None, limt=5)
    # Defaults fill in what a call leaves out, and a call may override one.
    _, *args = calls("cancel_orphan", execution_id="e")
    assert args == [1.0, "e", "abandoned", "c"]
    _, *args = calls("cancel_orphan", execution_id="e", cancelled_retention_s=2.0)
    assert args == [2.0, "e", "abandoned", "c"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-- a --\n-- A.\nSELECT 1;\n-- a --\n-- Again.\nSELECT 2;", "defines 'a' twice"),
        ("-- a --\nSELECT 1;", "needs a description and SQL"),
        ("-- a --\n-- Only words.", "needs a description and SQL"),
    ],
)
def test_a_malformed_file_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(text)


def test_includes_must_exist_and_not_loop() -> None:
    with pytest.raises(ValueError, match="includes unknown \\{nowhere\\}"):
        compile_entry(parse("-- a --\n-- A.\nSELECT {nowhere}"), "a", "s")
    looping = parse("-- a --\n-- A.\nSELECT {b}\n-- b --\n-- B.\n{c}\n-- c --\n-- C.\n{b}")
    with pytest.raises(ValueError, match="include each other"):
        compile_entry(looping, "a", "s")


async def test_every_shipped_statement_prepares_on_a_migrated_schema(
    pg_settings: PgSettings,
) -> None:
    settings = pg_settings()
    await run_migrations(settings)
    entries = queries.load()
    names = statement_names(entries)
    assert len(names) > 30
    assert settings.database_url is not None
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        for name in names:
            statement = compile_entry(entries, name, settings.schema_name)
            prepared = await conn.prepare(statement.sql)
            assert len(prepared.get_parameters()) == len(statement.params), name
    finally:
        await conn.close()
