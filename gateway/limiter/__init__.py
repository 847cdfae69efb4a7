"""Rate limiting: exact GCRA, embedded (native) or shared across replicas over Redis.

- `checks`: rules, keyed checks, decisions, verdicts and the backend interface.
- `keys`: the key layout (hash tags so one decision never spans two Cluster slots).
- `local`: the native in-process backend (embedded mode, and the `local` failure mode's share).
- `shared`: the Redis backend (one script per batch of decisions, local deny mirror).
- `breaker`: the circuit breaker over Redis calls.
- `limiter`: `RateLimiter`, what the pipeline and the server use.
"""

from gateway.limiter.checks import Check, Decision, LimiterBackendError, Rule, Verdict
from gateway.limiter.limiter import LimiterMode, RateLimiter, redis_client

__all__ = [
    "Check",
    "Decision",
    "LimiterBackendError",
    "LimiterMode",
    "RateLimiter",
    "Rule",
    "Verdict",
    "redis_client",
]
