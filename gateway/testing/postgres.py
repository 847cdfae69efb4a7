"""A throwaway PostgreSQL server for tests and benchmarks: `initdb` into a temporary directory,
trust auth on a free loopback port, deleted afterwards.

A test may stop and start it (a database restart) without touching the shared test database; a
benchmark may start it with settings the shared server does not have. The binaries come from
`GATEWAY_TEST_PG_BIN`, else next to a `pg_ctl` on the PATH, else the newest Debian/Ubuntu server
package (/usr/lib/postgresql/<version>/bin). As root, PostgreSQL refuses to run, so its commands
run as the `postgres` account (`nobody` if there is none) through `setpriv`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import asyncpg

from gateway.store.migrate import quote_ident

#: The environment variable naming the directory of `initdb` and `pg_ctl`.
BIN_DIR_ENV = "GATEWAY_TEST_PG_BIN"

#: Settings for a server no test crashes under (it is only ever stopped cleanly): durability off.
NOT_DURABLE: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


def postgres_bin_dir() -> Path | None:
    """Where `initdb` and `pg_ctl` are (see the module's docstring); None when nowhere."""
    candidates: list[Path] = []
    if configured := os.environ.get(BIN_DIR_ENV):
        candidates.append(Path(configured))
    if on_path := shutil.which("pg_ctl"):
        candidates.append(Path(on_path).parent)
    packaged = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(packaged, key=lambda p: _version(p.parent.name), reverse=True)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    return None


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresCluster:
    """A PostgreSQL server in a directory of its own, on a loopback port, trust auth, started
    with `settings` (`-c name=value` each)."""

    def __init__(
        self,
        bin_dir: Path,
        root: Path,
        account: pwd.struct_passwd | None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self._bin = bin_dir
        self._root = root
        self._data = root / "data"
        self._log = root / "server.log"
        self._account = account
        self._settings = dict(settings or {})
        self.port = free_port()

    @property
    def url(self) -> str:
        """The URL of its `postgres` database as the `postgres` superuser."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def log(self) -> str:
        """The server's log so far (for error and assertion messages)."""
        try:
            return self._log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def init(self) -> None:
        """Creates the cluster (`initdb`)."""
        await self._run(
            "initdb",
            "-D",
            str(self._data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )

    async def start(self) -> None:
        """Starts the server and waits until it accepts connections."""
        settings = {"listen_addresses": "127.0.0.1", **self._settings}
        options = " ".join(
            [
                f"-p {self.port}",
                f"-k {self._root}",
                *(f"-c {name}={value}" for name, value in settings.items()),
            ]
        )
        await self._run(
            "pg_ctl", "start", "-w", "-t", "60", "-D", str(self._data), "-l", str(self._log),
            "-o", options,
        )  # fmt: skip

    async def stop(self, mode: str = "fast") -> None:
        """Stops the server (`fast`: open transactions are rolled back and every connection is
        closed, as an operator's restart does) and waits until it is down."""
        await self._run("pg_ctl", "stop", "-w", "-t", "60", "-D", str(self._data), "-m", mode)

    async def _run(self, program: str, *args: str) -> None:
        command = [str(self._bin / program), *args]
        if self._account is not None:
            command = [
                "setpriv",
                f"--reuid={self._account.pw_uid}",
                f"--regid={self._account.pw_gid}",
                "--clear-groups",
                *command,
            ]
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(
                f"{program} failed ({process.returncode}): {output.decode(errors='replace')}\n"
                f"{self.log()}"
            )


def _unprivileged_account() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise LookupError("no 'postgres' or 'nobody' account to run PostgreSQL as")


@contextlib.asynccontextmanager
async def throwaway_postgres(
    bin_dir: Path | None = None, settings: Mapping[str, str] | None = None
) -> AsyncIterator[PostgresCluster]:
    """A started `PostgresCluster` (binaries from `bin_dir`, else `postgres_bin_dir()`),
    stopped and deleted afterwards.

    Its directory is made under the system temporary directory (a test's or a benchmark's own
    directory may sit where only root may enter), and given to the account the server runs as.
    """
    if bin_dir is None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError(
                f"PostgreSQL server binaries (initdb, pg_ctl) not found: set {BIN_DIR_ENV} to "
                "their directory, or install the server package"
            )
    account = _unprivileged_account() if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="viewbait-pg-"))
    try:
        if account is not None:
            os.chown(root, account.pw_uid, account.pw_gid)
        cluster = PostgresCluster(bin_dir, root, account, settings)
        await cluster.init()
        await cluster.start()
        try:
            yield cluster
        finally:
            with contextlib.suppress(RuntimeError):
                await cluster.stop("immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)


__all__ = [
    "BIN_DIR_ENV",
    "NOT_DURABLE",
    "PostgresCluster",
    "free_port",
    "postgres_bin_dir",
    "throwaway_postgres",
]


@contextlib.asynccontextmanager
async def fresh_schema(database_url: str, prefix: str) -> AsyncIterator[str]:
    """A new, uniquely named schema name (`prefix` + random hex, not created: the code under
    test creates it by migrating), so runs never see each other's rows; dropped afterwards."""
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        conn = await asyncpg.connect(database_url, timeout=10)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(name)} CASCADE")
        finally:
            await conn.close()
