"""Durable background jobs: the workers that run queued jobs (`WorkerPool`)."""

from __future__ import annotations

from gateway.jobs.worker import SHARED_USER, JobRunner, OperationRunner, WorkerPool, retry_delay

__all__ = ["SHARED_USER", "JobRunner", "OperationRunner", "WorkerPool", "retry_delay"]
