"""Versioned SQL migrations for the PostgreSQL store.

Migrations are the files `gateway/store/migrations/NNNN_name.sql`, applied in version order, each
once. `{schema}` in a file stands for the configured schema, quoted as an identifier. The applied
versions and a checksum of each file are recorded in `<schema>.schema_migrations`; a file changed
after it was applied is refused (write a new migration instead).

`migrate` runs in one transaction under a transaction-scoped advisory lock derived from the schema
name, so replicas that start at the same moment apply each migration exactly once: the first
takes the lock and migrates, the others wait, then find nothing left to do. PostgreSQL DDL is
transactional, so a failed migration leaves nothing half-applied.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

#: A connection of its own, or one borrowed from a pool.
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

log = logging.getLogger(__name__)

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
#: Checksums a migration had before a change to its comments alone, still accepted for schemas
#: that applied it then (version -> earlier checksums). Anything else changed is refused.
_EARLIER_CHECKSUMS: dict[int, frozenset[str]] = {
    # 0001's header comment cited a document outside the repository; it names docs/storage.md.
    1: frozenset({"19964d3a4d20901642b4805a9385813e535720cdda493e1af7f64b419abbcc13"}),
}
_SCHEMA_PLACEHOLDER = "{schema}"


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file's text (before the schema is filled in)."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    """The database's migration history does not match this gateway's migration files."""


def quote_ident(name: str) -> str:
    """`name` as a quoted SQL identifier (any characters, doubled quotes)."""
    if not name or "\x00" in name or len(name.encode()) > 63:
        raise ValueError(f"{name!r} is not a valid PostgreSQL identifier (1 to 63 bytes)")
    return '"' + name.replace('"', '""') + '"'


def render(sql: str, schema: str) -> str:
    """`sql` with `{schema}` replaced by the quoted schema name (no other brace is touched)."""
    return sql.replace(_SCHEMA_PLACEHOLDER, quote_ident(schema))


def load_migrations() -> list[Migration]:
    """Every migration shipped with the gateway, by version."""
    found: list[Migration] = []
    for entry in resources.files("gateway.store.migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version: {versions}")
    return found


def latest_version() -> int:
    """The version the shipped migrations bring a schema to."""
    return max((m.version for m in load_migrations()), default=0)


def _lock_key(schema: str) -> int:
    digest = hashlib.sha256(b"viewbait-gateway migrate " + schema.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def applied_versions(conn: Connection, schema: str) -> dict[int, str]:
    """Version -> checksum of every migration applied to `schema` ({} if it has none)."""
    table = await conn.fetchval(
        "SELECT to_regclass($1)", f"{quote_ident(schema)}.schema_migrations"
    )
    if table is None:
        return {}
    rows = await conn.fetch(
        render("SELECT version, checksum FROM {schema}.schema_migrations", schema)
    )
    return {row["version"]: row["checksum"] for row in rows}


async def migrate(conn: Connection, schema: str) -> list[int]:
    """Brings `schema` up to the latest migration; returns the versions it applied.

    Idempotent and safe to run from several processes at once (see the module docstring).
    Raises `MigrationError` if an applied migration's file has changed since.
    """
    migrations = load_migrations()
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(schema))
        await conn.execute(render("CREATE SCHEMA IF NOT EXISTS {schema}", schema))
        await conn.execute(
            render(
                """
                CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                    version    integer     PRIMARY KEY,
                    name       text        NOT NULL,
                    checksum   text        NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )
                """,
                schema,
            )
        )
        applied = await applied_versions(conn, schema)
        for migration in migrations:
            if migration.version in applied:
                recorded = applied[migration.version]
                accepted = _EARLIER_CHECKSUMS.get(migration.version, frozenset())
                if recorded != migration.checksum and recorded not in accepted:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} changed after it "
                        f"was applied to schema {schema!r}; add a new migration instead"
                    )
                continue
            await conn.execute(render(migration.sql, schema))
            await conn.execute(
                render(
                    "INSERT INTO {schema}.schema_migrations (version, name, checksum) "
                    "VALUES ($1, $2, $3)",
                    schema,
                ),
                migration.version,
                migration.name,
                migration.checksum,
            )
            applied_now.append(migration.version)
            log.info(
                "applied migration %04d_%s to schema %s", migration.version, migration.name, schema
            )
    newer = sorted(set(applied) - {m.version for m in migrations})
    if newer:
        # A newer gateway migrated this schema (a rolling deploy): older code keeps working as
        # long as migrations only add, which is the rule for writing them.
        log.warning("schema %s has migrations this gateway does not know: %s", schema, newer)
    return applied_now


async def pending_versions(conn: Connection, schema: str) -> list[int]:
    """Versions shipped with the gateway but not applied to `schema`."""
    applied = await applied_versions(conn, schema)
    return [m.version for m in load_migrations() if m.version not in applied]
