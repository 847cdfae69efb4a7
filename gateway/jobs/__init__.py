"""Durable background jobs, every piece of them in one place.

- `pool`: the worker pool every replica runs (`WorkerPool`): claims due jobs and runs them.
- `runner`: one attempt of a claimed job (`OperationRunner`) and the retry policy.
- `service`: what JobService means (`JobService`): submit, read, watch, cancel, list, retry.
- `rescue`: the loop that re-queues executions whose lease lapsed (and probes the store).
- `priority`: a job's priority from its owner's tier, and back.
- `progress`: the words of an operation's progress, for job watchers and streams alike.
- `commands`: `viewbait-gateway jobs`, what operators do to jobs in the database directly.
"""

from __future__ import annotations

from gateway.jobs.pool import JobRunner, WorkerPool
from gateway.jobs.priority import priority_of_tier, tier_of_priority
from gateway.jobs.rescue import rescue_leases
from gateway.jobs.runner import SHARED_USER, OperationRunner, retry_delay
from gateway.jobs.service import JobService

__all__ = [
    "SHARED_USER",
    "JobRunner",
    "JobService",
    "OperationRunner",
    "WorkerPool",
    "priority_of_tier",
    "rescue_leases",
    "retry_delay",
    "tier_of_priority",
]
