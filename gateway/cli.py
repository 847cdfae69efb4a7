"""`viewbait-gateway` (also `python -m gateway`): the gateway's command line. `jobs` (operators'
job commands) lives in `gateway.jobs.commands`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from gateway.config import (
    ConfigError,
    Settings,
    deployment_problems,
    gemini_backend,
    load_settings,
)
from gateway.jobs.commands import add_jobs_command, run_jobs
from gateway.telemetry import tracing
from gateway.telemetry.logs import configure_logging

_PROG = "viewbait-gateway"


def _refuse(problems: list[str]) -> int:
    """Reports configuration problems, one line each, and the exit status that refuses."""
    for problem in problems:
        print(f"{_PROG}: {problem}", file=sys.stderr)
    return 2


def _run(*, listen: bool) -> int:
    from gateway.server import serve

    try:
        settings = load_settings()
    except ConfigError as exc:
        return _refuse(exc.problems)
    problems = _problems(settings, listen=listen)
    if problems:
        return _refuse(problems)
    configure_logging(settings.server.log_format, settings.server.log_level)
    try:
        asyncio.run(serve(settings, listen=listen))
    except ConfigError as exc:
        return _refuse(exc.problems)
    return 0


def _problems(settings: Settings, *, listen: bool) -> list[str]:
    """Everything `serve` (`listen`) or `worker` would refuse to start with."""
    problems = deployment_problems(settings, listen=listen) + tracing.environment_problems()
    if not listen and settings.store.database_url is None:
        problems.append(
            "worker: no database configured; set VIEWBAIT_STORE__DATABASE_URL (workers without "
            "a listener only make sense on the store other replicas submit jobs to)"
        )
    return problems


def _serve(_args: argparse.Namespace) -> int:
    return _run(listen=True)


def _worker(_args: argparse.Namespace) -> int:
    return _run(listen=False)


def effective_configuration(settings: Settings) -> dict[str, object]:
    """The settings as they will be used, secrets redacted, with the resolved model backend."""
    shown: dict[str, object] = settings.model_dump(mode="json", by_alias=True)
    backend = gemini_backend(settings)
    gemini = shown["gemini"]
    assert isinstance(gemini, dict)
    gemini["backend"] = backend.value if backend is not None else None
    return shown


def _check_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        return _refuse(exc.problems)
    listen = not args.worker
    print(json.dumps(effective_configuration(settings), indent=2))
    problems = _problems(settings, listen=listen)
    if problems:
        return _refuse(problems)
    print(f"{_PROG}: configuration OK", file=sys.stderr)
    return 0


def _emulator(args: argparse.Namespace) -> int:
    from gateway.emulator.__main__ import main as emulator_main

    return emulator_main(["--host", args.host, "--port", str(args.port)])


def _migrate(_args: argparse.Namespace) -> int:
    from gateway.errors import Unavailable
    from gateway.store.migrate import MigrationError
    from gateway.store.postgres import run_migrations

    try:
        store = load_settings().store
    except ConfigError as exc:
        return _refuse(exc.problems)
    if store.database_url is None:
        print(
            "migrate: no database configured; set VIEWBAIT_STORE__DATABASE_URL "
            "(the embedded store needs no migrations)",
            file=sys.stderr,
        )
        return 2
    try:
        applied = asyncio.run(run_migrations(store))
    except (Unavailable, MigrationError) as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        return 1
    if applied:
        print(f"schema {store.schema_name}: applied migrations {applied}")
    else:
        print(f"schema {store.schema_name}: up to date")
    return 0


def _gc(_args: argparse.Namespace) -> int:
    from gateway.errors import Unavailable
    from gateway.store import create_store
    from gateway.store.blobs import create_blob_store
    from gateway.store.blobs.gc import collect_garbage

    settings = load_settings().store
    if settings.database_url is None:
        print(
            "gc: no database configured; set VIEWBAIT_STORE__DATABASE_URL (in embedded mode "
            "only the serving process knows which blobs its rows reference, and it collects "
            "them itself)",
            file=sys.stderr,
        )
        return 2

    async def collect() -> str:
        store = create_store(settings)
        await store.start()
        blobs = create_blob_store(settings, store)
        try:
            done = await collect_garbage(
                blobs,
                store,
                grace_s=settings.blob_gc_grace_s,
                batch_size=settings.cleanup_batch_size,
            )
        finally:
            await blobs.aclose()
            await store.close()
        return (
            f"blobs ({settings.resolved_blob_backend}): {done.deleted} deleted, "
            f"{done.referenced} still referenced, of {done.examined} older than "
            f"{settings.blob_gc_grace_s:g} s, in {done.seconds:.2f} s"
        )

    try:
        print(asyncio.run(collect()))
    except Unavailable as exc:
        print(f"gc: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parses the command line and runs the chosen command."""
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="ViewBait AI Gateway: gRPC sidecar in front of Gemini.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve gRPC (configured by VIEWBAIT_* environment variables; see the README)",
    )
    serve.set_defaults(run=_serve)
    worker = commands.add_parser(
        "worker",
        help="run only the job workers and store maintenance, no gRPC listener "
        "(needs VIEWBAIT_STORE__DATABASE_URL); SIGTERM hands running jobs back to the queue",
    )
    worker.set_defaults(run=_worker)
    emulator = commands.add_parser(
        "emulator", help="run only the offline Gemini emulator (not Gemini) over HTTP"
    )
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8765)
    emulator.set_defaults(run=_emulator)
    migrate = commands.add_parser(
        "migrate", help="apply pending PostgreSQL migrations (VIEWBAIT_STORE__DATABASE_URL)"
    )
    migrate.set_defaults(run=_migrate)
    gc = commands.add_parser(
        "gc",
        help="delete the blobs no cache row or job references, once older than "
        "VIEWBAIT_STORE__BLOB_GC_GRACE_S (the maintenance loop does the same)",
    )
    gc.set_defaults(run=_gc)
    add_jobs_command(commands)
    check = commands.add_parser(
        "check-config",
        help="print the effective configuration (secrets redacted) and exit non-zero on any "
        "problem serve (or worker) would refuse to start with",
    )
    check.add_argument(
        "--worker", action="store_true", help="check as `worker` would (no listener)"
    )
    check.set_defaults(run=_check_config)
    args = parser.parse_args(argv)
    if args.command == "jobs":
        return run_jobs(args)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
