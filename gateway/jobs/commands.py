"""`viewbait-gateway jobs`: what operators do to jobs, in the database directly (as `migrate` and
`gc` do), with no gateway running: list them, show one, retry dead letters (one, many, or every
one a filter selects), cancel, and purge finished jobs older than an age.

    viewbait-gateway jobs list [--status S]... [--reason R]... [--op OP]... [--user U] [--limit N]
    viewbait-gateway jobs show JOB_ID
    viewbait-gateway jobs retry JOB_ID...
    viewbait-gateway jobs retry (--reason R... | --op OP... | --user U | --all) [--limit N]
    viewbait-gateway jobs cancel JOB_ID...
    viewbait-gateway jobs purge --older-than AGE [--status S]...

An operator sees every job: users' own, their handles on shared work and the shared executions
behind them (`JobStore` with no user). A retry re-drives a dead letter exactly as RetryJob does
(`JobStore.retry_job`: a fresh budget of `execution.max_attempts` attempts; a shared execution
brings back the handles that failed with it); every replica's workers hear of it at once.
`--json` prints one JSON object per job, for scripts.

Exit status: 0 when everything asked was done (a filter that selects nothing included); 1 when
the database cannot be reached or is not migrated; 2 for a usage or configuration error; 3 when
some named job could not be acted on (missing, or refused: a cancelled job, a request running
again as another job), the others done.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TextIO

from gateway import errors
from gateway.config import ConfigError, Settings, load_settings
from gateway.store import Job, JobStatus, Store, create_store
from gateway.store.base import ACTIVE_STATUSES, JobCursor, JobFilter

#: Exit statuses (module docstring).
OK, UNAVAILABLE, USAGE, PARTIAL = 0, 1, 2, 3
#: Jobs read per statement while walking a selection.
PAGE = 200
_FINISHED = sorted(s.value for s in JobStatus if s not in ACTIVE_STATUSES)
_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(text: str) -> float:
    """Seconds in an age such as `90s`, `15m`, `12h`, `30d` (a bare number: seconds)."""
    match = _AGE.match(text.strip())
    if match is None or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an age: write a positive number of seconds, or one ending in s, m, "
            "h or d (e.g. 30d)"
        )
    return float(match[1]) * _SECONDS[match[2]]


def _count(text: str) -> int:
    """A positive number of jobs (`--limit`)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of jobs")
    return int(text)


def add_jobs_command(commands: Any) -> None:
    """Adds `jobs` and its subcommands to the `viewbait-gateway` parser (`commands` is its
    subparsers object)."""
    jobs = commands.add_parser(
        "jobs",
        help="list, show, retry, cancel and purge jobs in the database "
        "(VIEWBAIT_STORE__DATABASE_URL); exit 3 when some named job could not be acted on",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    actions = jobs.add_subparsers(dest="action", required=True)

    listing = actions.add_parser("list", help="jobs of every user, newest first")
    _selection(listing)
    listing.add_argument("--limit", type=_count, default=50, help="most jobs shown (default 50)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(run=_list)

    show = actions.add_parser("show", help="one job, with its error history")
    show.add_argument("job_id")
    show.add_argument("--json", action="store_true", help="the job as one JSON object")
    show.set_defaults(run=_show)

    retry = actions.add_parser(
        "retry",
        help="re-drive dead letters (failed jobs) as new attempts with a fresh attempt budget: "
        "the named ones, or every failed job a filter selects",
    )
    retry.add_argument("job_ids", nargs="*", metavar="JOB_ID")
    _selection(retry, statuses=False)
    retry.add_argument("--all", action="store_true", help="every failed job (no other filter)")
    retry.add_argument("--limit", type=_count, default=None, help="most jobs retried")
    retry.add_argument("--json", action="store_true", help="one JSON object per job")
    retry.set_defaults(run=_retry)

    cancel = actions.add_parser("cancel", help="cancel jobs (a shared execution with its handles)")
    cancel.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    cancel.add_argument("--json", action="store_true", help="one JSON object per job")
    cancel.set_defaults(run=_cancel)

    purge = actions.add_parser(
        "purge",
        help="delete finished jobs that finished longer ago than --older-than, retention or "
        "not (their blobs go with the next gc)",
    )
    purge.add_argument("--older-than", type=parse_age, required=True, metavar="AGE")
    purge.add_argument(
        "--status", action="append", choices=_FINISHED, default=[], help="only these statuses"
    )
    purge.set_defaults(run=_purge)


def _selection(parser: argparse.ArgumentParser, *, statuses: bool = True) -> None:
    if statuses:
        parser.add_argument(
            "--status",
            action="append",
            choices=[s.value for s in JobStatus],
            default=[],
            help="only jobs in this status (repeat for several)",
        )
    parser.add_argument(
        "--reason", action="append", default=[], help="only jobs whose last error has this reason"
    )
    parser.add_argument("--op", action="append", default=[], help="only jobs of this operation")
    parser.add_argument("--user", default=None, help="only this user's jobs")


def run_jobs(args: argparse.Namespace) -> int:
    """Runs one `jobs` subcommand; returns the exit status."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"jobs: {problem}", file=sys.stderr)
        return USAGE
    if settings.store.database_url is None:
        print(
            "jobs: no database configured; set VIEWBAIT_STORE__DATABASE_URL (the embedded "
            "store's jobs live in the serving process only)",
            file=sys.stderr,
        )
        return USAGE
    command: Callable[[Store, Settings, argparse.Namespace], Awaitable[int]] = args.run

    async def run() -> int:
        store = create_store(settings.store)
        await store.start()
        try:
            return await command(store, settings, args)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except errors.Unavailable as exc:
        print(f"jobs: {exc.message}", file=sys.stderr)
        return UNAVAILABLE


# -- the subcommands --------------------------------------------------------------------------


async def _list(store: Store, _settings: Settings, args: argparse.Namespace) -> int:
    shown = 0
    async for job in _selected(store, args, _filter(args), args.limit):
        _print_job(job, args.json, header=shown == 0)
        shown += 1
    if not args.json:
        print(f"{shown} job{'s' * (shown != 1)}", file=sys.stderr)
    return OK


async def _show(store: Store, _settings: Settings, args: argparse.Namespace) -> int:
    try:
        job = await store.get_job(args.job_id, None)
    except errors.NotFound as exc:
        print(f"jobs show: {exc.message}", file=sys.stderr)
        return PARTIAL
    if args.json:
        print(json.dumps(job_json(job)))
    else:
        _describe(job, sys.stdout)
    return OK


async def _retry(store: Store, settings: Settings, args: argparse.Namespace) -> int:
    attempts = settings.execution.max_attempts
    chosen = bool(args.reason or args.op or args.user or args.all)
    if args.job_ids and chosen:
        print("jobs retry: name jobs, or choose them by a filter; not both", file=sys.stderr)
        return USAGE
    if not args.job_ids and not chosen:
        print(
            "jobs retry: name the jobs to retry, or choose failed jobs with --reason, --op, "
            "--user, or --all for every one",
            file=sys.stderr,
        )
        return USAGE
    status = OK
    if args.job_ids:
        for job_id in args.job_ids:
            status = max(status, await _retry_one(store, job_id, attempts, args.json))
    else:
        which = _filter(args, statuses=frozenset({JobStatus.FAILED}))
        async for job in _selected(store, args, which, args.limit):
            status = max(status, await _retry_one(store, job.id, attempts, args.json))
    return status


async def _retry_one(store: Store, job_id: str, attempts: int, as_json: bool) -> int:
    try:
        redrive = await store.retry_job(job_id, None, attempts)
    except (errors.NotFound, errors.FailedPrecondition) as exc:
        print(f"jobs retry: {exc.message}", file=sys.stderr)
        return PARTIAL
    job = redrive.job
    budget = f"attempts {job.attempts}/{job.max_attempts}"
    _report(job, as_json, "retried", redrive.redriven, budget, "nothing to retry")
    return OK


async def _cancel(store: Store, _settings: Settings, args: argparse.Namespace) -> int:
    status = OK
    for job_id in args.job_ids:
        try:
            before = await store.get_job(job_id, None)
            job = await store.cancel_job(job_id, None)
        except errors.NotFound as exc:
            print(f"jobs cancel: {exc.message}", file=sys.stderr)
            status = PARTIAL
            continue
        was = f"it was {before.status.value}"
        _report(job, args.json, "cancelled", before.active, was, "already finished")
    return status


def _report(job: Job, as_json: bool, action: str, done: bool, how: str, why_not: str) -> None:
    """One line about what `action` did to `job` (`done`), or why it left it as it is."""
    if as_json:
        print(json.dumps({**job_json(job), action: done}))
    elif done:
        print(f"{job.id} {action}: {job.status.value}, {how}")
    else:
        print(f"{job.id} left as it is: {job.status.value} ({why_not})")


async def _purge(store: Store, settings: Settings, args: argparse.Namespace) -> int:
    statuses = frozenset(JobStatus(s) for s in args.status)
    purged: Counter[JobStatus] = Counter()
    batch = settings.store.cleanup_batch_size
    while done := await store.purge_finished_jobs(
        batch, finished_before_s=args.older_than, statuses=statuses
    ):
        purged.update(done)
    by_status = ", ".join(f"{n} {s.value}" for s, n in sorted(purged.items())) or "none"
    print(
        f"purged {sum(purged.values())} jobs that finished more than {args.older_than:g} s ago "
        f"({by_status}); blobs only they referenced go with the next gc"
    )
    return OK


# -- selections and output --------------------------------------------------------------------


def _filter(args: argparse.Namespace, statuses: frozenset[JobStatus] | None = None) -> JobFilter:
    chosen = statuses if statuses is not None else frozenset(JobStatus(s) for s in args.status)
    return JobFilter(chosen, frozenset(args.op), frozenset(args.reason))


async def _selected(
    store: Store, args: argparse.Namespace, which: JobFilter, limit: int | None
) -> AsyncIterator[Job]:
    """Every job `which` selects (of `--user`, else anyone's), newest first, up to `limit`."""
    after: JobCursor | None = None
    left = limit
    while left is None or left > 0:
        size = PAGE if left is None else min(PAGE, left)
        page = await store.list_jobs(args.user, which, size, after)
        for job in page:
            yield job
        if len(page) < size:
            return
        after = JobCursor(page[-1].created_at, page[-1].id)
        if left is not None:
            left -= len(page)


def _owner(job: Job) -> str:
    if job.user_id is None:
        return f"(shared, by {job.started_by or '?'})"
    return job.user_id


def job_json(job: Job) -> dict[str, Any]:
    """A job as an operator's script reads it."""
    return {
        "id": job.id,
        "status": job.status.value,
        "op": job.op,
        "user": job.user_id,
        "follows": job.follows,
        "started_by": job.started_by,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "fence": job.fence,
        "error": None if job.error is None else job.error.reason,
        "error_message": None if job.error is None else job.error.message,
        "error_history": [entry.to_json() for entry in job.error_history],
        "created_at": job.created_at.isoformat(),
        "completed_at": None if job.completed_at is None else job.completed_at.isoformat(),
        "expires_at": None if job.expires_at is None else job.expires_at.isoformat(),
        "locked_by": job.locked_by,
    }


_COLUMNS = ("ID", "STATUS", "OP", "USER", "ATTEMPTS", "ERROR", "CREATED")


def _print_job(job: Job, as_json: bool, *, header: bool) -> None:
    if as_json:
        print(json.dumps(job_json(job)))
        return
    if header:
        print("\t".join(_COLUMNS))
    fields = (
        job.id,
        job.status.value,
        job.op,
        _owner(job) + (f" (follows {job.follows})" if job.follows else ""),
        f"{job.attempts}/{job.max_attempts}",
        job.error.reason if job.error is not None else "-",
        job.created_at.isoformat(timespec="seconds"),
    )
    print("\t".join(fields))


def _describe(job: Job, out: TextIO) -> None:
    """A job for people: what, whose, where it is, and its error history."""
    lines = [
        f"job {job.id}",
        f"  status      {job.status.value}",
        f"  operation   {job.op} (model {job.model or '-'})",
        f"  owner       {_owner(job)}",
    ]
    if job.follows:
        lines.append(f"  follows     {job.follows} (a handle on shared work)")
    lines += [
        f"  attempts    {job.attempts} of {job.max_attempts} (claim {job.fence})",
        f"  created     {job.created_at.isoformat()}",
        f"  started     {job.started_at.isoformat() if job.started_at else '-'}",
        f"  finished    {job.completed_at.isoformat() if job.completed_at else '-'}",
        f"  expires     {job.expires_at.isoformat() if job.expires_at else '-'}",
    ]
    if job.locked_by:
        lines.append(f"  held by     {job.locked_by} until {job.locked_until}")
    if job.error is not None:
        lines.append(f"  error       {job.error.reason}: {job.error.message}")
    if job.error_history:
        lines.append("  error history (oldest first):")
        lines += [
            f"    attempt {entry.attempt} at {entry.at.isoformat()} on {entry.worker or '?'}: "
            f"{entry.error.reason}: {entry.error.message}"
            for entry in job.error_history
        ]
    print("\n".join(lines), file=out)
