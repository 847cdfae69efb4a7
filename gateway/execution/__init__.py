"""The request path: how one operation request is answered.

- `pipeline`: tier check, validation, admission limit, then the executor; the model run of a
  spec, metered and limited.
- `executor`: the result cache, single-flight and cross-replica coalescing around that run.
- `types`: the values that pass between them (`Call`, `Outcome`, `Pending`, `Spend`, ...).
- `hot_cache`: the in-process copy of cache entries; `result_cache`: results in and out of the
  store and the blob store.
- `singleflight`: one piece of work per key on this replica.

Callers import from here.
"""

from gateway.execution.executor import ABANDONED, ExecutionStats, Executor
from gateway.execution.hot_cache import HotResults
from gateway.execution.pipeline import Checked, Pipeline, Prepared
from gateway.execution.result_cache import (
    CacheHit,
    EncodedResult,
    ResultCache,
    fetch_result,
    load_result,
    save_result,
)
from gateway.execution.singleflight import SingleFlight
from gateway.execution.types import (
    BlobQuota,
    Call,
    InputWrite,
    Outcome,
    Pending,
    Retry,
    RetryPolicy,
    Runner,
    Spend,
)

__all__ = [
    "ABANDONED",
    "BlobQuota",
    "CacheHit",
    "Call",
    "Checked",
    "EncodedResult",
    "ExecutionStats",
    "Executor",
    "HotResults",
    "InputWrite",
    "Outcome",
    "Pending",
    "Pipeline",
    "Prepared",
    "ResultCache",
    "Retry",
    "RetryPolicy",
    "Runner",
    "SingleFlight",
    "Spend",
    "fetch_result",
    "load_result",
    "save_result",
]
