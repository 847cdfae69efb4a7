"""Names of rate-limit keys, laid out so that one decision never spans two Redis Cluster slots.

A Redis Cluster runs a script only if all its keys hash to one slot, and the slot of a key with a
hash tag (`{...}`) is the slot of the tag alone. A request needs two kinds of decisions:

- **admission** (every request): one key per user and route, tagged by the user:
  `{<prefix>:u:<user>}:a:<route>`. One key, so one slot; users spread over the cluster. The
  JobService reads are limited the same way, per user and RPC: `{<prefix>:u:<user>}:r:<rpc>`.
- **upstream** (every Gemini call): the user's upstream limit on the route *and* the fleet-wide
  limit of the model, which every user shares. Both must be decided atomically (a denial by the
  model limit must not charge the user's), so both live under the model's tag:
  `{<prefix>:m:<model>}:u:<user>:<route>` and `{<prefix>:m:<model>}:all`. Each route runs one
  configured model, so the user's upstream key is still per (user, route).

The model's slot therefore takes every upstream decision for that model, which the model limit
itself would force anyway (its key is on every upstream call), and which the Gemini quota keeps
small (thousands per minute). Admission, the high-volume check, spreads by user.

Parts that come from callers (user ids) are escaped so that no input can close a hash tag early or
make two different (user, route) pairs share a key.
"""

from __future__ import annotations

_ESCAPES = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D", ":": "%3A"})


def key_part(text: str) -> str:
    """`text` escaped for use inside a key: it can neither close a hash tag nor merge two
    parts. The common case (plain ids) allocates nothing."""
    if "%" in text or "{" in text or "}" in text or ":" in text:
        return text.translate(_ESCAPES)
    return text


def admission_key(prefix: str, user_id: str, route_id: str) -> str:
    """The key of one user's admission limit on one route."""
    return f"{{{prefix}:u:{key_part(user_id)}}}:a:{key_part(route_id)}"


def upstream_key(prefix: str, model: str, user_id: str, route_id: str) -> str:
    """The key of one user's upstream limit on one route (tagged by the route's model)."""
    return f"{{{prefix}:m:{key_part(model)}}}:u:{key_part(user_id)}:{key_part(route_id)}"


def model_key(prefix: str, model: str) -> str:
    """The key of the fleet-wide limit on calls to one model."""
    return f"{{{prefix}:m:{key_part(model)}}}:all"


def read_key(prefix: str, user_id: str, rpc: str) -> str:
    """The key of one user's rate limit on one JobService read (tagged by the user)."""
    return f"{{{prefix}:u:{key_part(user_id)}}}:r:{key_part(rpc)}"


def blob_bytes_key(prefix: str, user_id: str) -> str:
    """The key of one user's limit on bytes written to the blob store (tagged by the user)."""
    return f"{{{prefix}:u:{key_part(user_id)}}}:b"
