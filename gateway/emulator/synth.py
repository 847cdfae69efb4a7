"""Deterministic synthetic content for the offline Gemini emulator (not Gemini).

`value_for_schema` walks a response schema and builds a value that satisfies it. It understands
both dialects Gemini accepts: `responseJsonSchema` (JSON Schema: lowercase or array `type`,
`$ref`/`$defs`, `anyOf`/`oneOf`/`allOf`, `const`, `prefixItems`, numeric `exclusiveMinimum`) and
`responseSchema` (Google's OpenAPI subset: UPPERCASE `type`, `nullable`, `propertyOrdering`,
int64 bounds sent as strings). It is generic on purpose: nothing here knows any operation.

Not honoured (Gemini does not promise them either): `pattern`, `multipleOf`, `uniqueItems`,
`minProperties`/`maxProperties`, `not`, `if`/`then`/`else`. A string whose description asks for
a "#RRGGBB" colour gets one (a model reads the description; words there would be no colour).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

# A small, neutral vocabulary keeps answers readable without pretending to be real analysis.
_WORDS = (
    *("bold", "bright", "calm", "clear", "close", "contrast", "crisp", "curious", "dark"),
    *("dynamic", "energetic", "face", "focus", "friendly", "glow", "golden", "green"),
    *("headline", "hook", "intense", "layered", "minimal", "moody", "neon", "orange"),
    *("playful", "punchy", "red", "scene", "sharp", "simple", "soft", "story", "striking"),
    *("subject", "surprise", "teal", "text", "vivid", "warm"),
)

#: Array length used when a schema sets no `maxItems` (kept small: answers stay cheap to build).
DEFAULT_MAX_ITEMS = 4
_MAX_DEPTH = 12


class SchemaError(ValueError):
    """The response schema cannot be satisfied or is not a schema at all."""


def words(rng: random.Random, count: int) -> str:
    """`count` pseudo-random words joined by spaces."""
    return " ".join(rng.choice(_WORDS) for _ in range(count))


def value_for_schema(schema: Mapping[str, Any], rng: random.Random) -> Any:
    """A JSON value satisfying `schema`, drawn from `rng` (same seed, same value)."""
    if not isinstance(schema, Mapping):
        raise SchemaError("the response schema must be a JSON object")
    return _Generator(schema, rng).value(schema, name="value", depth=0)


class _Generator:
    def __init__(self, root: Mapping[str, Any], rng: random.Random) -> None:
        self._root = root
        self._rng = rng

    def value(self, schema: Mapping[str, Any], *, name: str, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise SchemaError("the response schema nests too deeply (or refers to itself)")
        schema = self._resolve(schema)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return self._rng.choice(list(schema["enum"]))
        for key in ("anyOf", "oneOf"):
            if schema.get(key):
                branches = [self._resolve(b) for b in schema[key]]
                non_null = [b for b in branches if _types(b) != ["null"]]
                branch = self._rng.choice(non_null or branches)
                return self.value(branch, name=name, depth=depth + 1)
        if schema.get("allOf"):
            return self.value(self._merge_all_of(schema), name=name, depth=depth + 1)

        kind = self._kind(schema)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, name, depth)
        if kind == "integer":
            return self._integer(schema)
        if kind == "number":
            return self._number(schema)
        if kind == "boolean":
            return self._rng.random() < 0.5
        if kind == "null":
            return None
        return self._string(schema, name)

    def _resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        seen = 0
        while "$ref" in schema:
            seen += 1
            if seen > _MAX_DEPTH:
                raise SchemaError("the response schema has a $ref cycle")
            ref = schema["$ref"]
            if not isinstance(ref, str) or not ref.startswith("#"):
                raise SchemaError(f"only local $ref values are supported, got {ref!r}")
            target: Any = self._root
            for token in filter(None, ref[1:].split("/")):
                token = token.replace("~1", "/").replace("~0", "~")
                if not isinstance(target, Mapping) or token not in target:
                    raise SchemaError(f"$ref {ref!r} does not resolve")
                target = target[token]
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **siblings}
        return schema

    def _merge_all_of(self, schema: Mapping[str, Any]) -> dict[str, Any]:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            part = self._resolve(part)
            for key, val in part.items():
                if key == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **val}
                elif key == "required":
                    merged["required"] = [*merged.get("required", []), *val]
                else:
                    merged.setdefault(key, val)
        return merged

    def _kind(self, schema: Mapping[str, Any]) -> str:
        types = _types(schema)
        non_null = [t for t in types if t != "null"]
        if non_null:
            return self._rng.choice(non_null) if len(non_null) > 1 else non_null[0]
        if types == ["null"]:
            return "null"
        if "properties" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema:
            return "array"
        return "string"

    def _object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        properties: Mapping[str, Any] = schema.get("properties") or {}
        ordering: Sequence[str] = schema.get("propertyOrdering") or list(properties)
        names = [n for n in ordering if n in properties]
        names += [n for n in properties if n not in names]
        result = {n: self.value(properties[n], name=n, depth=depth + 1) for n in names}
        missing = [n for n in schema.get("required") or () if n not in result]
        if missing:
            raise SchemaError(f"required properties {missing} are not defined in 'properties'")
        return result

    def _array(self, schema: Mapping[str, Any], name: str, depth: int) -> list[Any]:
        low = _int(schema.get("minItems"), 1)
        high = _int(schema.get("maxItems"), max(low, DEFAULT_MAX_ITEMS))
        if high < low:
            raise SchemaError(f"maxItems {high} is below minItems {low}")
        count = self._rng.randint(low, high)
        prefix: Sequence[Mapping[str, Any]] = schema.get("prefixItems") or ()
        items: Mapping[str, Any] = schema.get("items") or {"type": "string"}
        item_name = name[:-1] if name.endswith("s") and len(name) > 1 else name
        return [
            self.value(prefix[i] if i < len(prefix) else items, name=item_name, depth=depth + 1)
            for i in range(count)
        ]

    def _bounds(
        self, schema: Mapping[str, Any], default: tuple[float, float]
    ) -> tuple[float, float]:
        low = _float(schema.get("minimum"), None)
        high = _float(schema.get("maximum"), None)
        ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        # JSON Schema 2020 puts the bound in exclusive*; draft 4 / OpenAPI use booleans.
        low_open = ex_low is True or (not isinstance(ex_low, bool) and ex_low is not None)
        high_open = ex_high is True or (not isinstance(ex_high, bool) and ex_high is not None)
        if ex_low is not None and not isinstance(ex_low, bool):
            low = _float(ex_low, None)
        if ex_high is not None and not isinstance(ex_high, bool):
            high = _float(ex_high, None)
        if low is None and high is None:
            low, high = default
        elif low is None:
            assert high is not None
            low = min(default[0], high - (default[1] - default[0]))
        elif high is None:
            high = max(default[1], low + (default[1] - default[0]))
        span = high - low
        eps = min(1e-6, span / 4) if span > 0 else 0.0
        return (low + eps if low_open else low), (high - eps if high_open else high)

    def _integer(self, schema: Mapping[str, Any]) -> int:
        low, high = self._bounds(schema, (0, 100))
        lo, hi = math.ceil(low), math.floor(high)
        if hi < lo:
            raise SchemaError(f"no integer lies between {low} and {high}")
        return self._rng.randint(lo, hi)

    def _number(self, schema: Mapping[str, Any]) -> float:
        low, high = self._bounds(schema, (0.0, 1.0))
        if high < low:
            raise SchemaError(f"minimum {low} exceeds maximum {high}")
        value = round(low + (high - low) * self._rng.random(), 3)
        return min(max(value, low), high)  # rounding must not step outside the bounds

    def _string(self, schema: Mapping[str, Any], name: str) -> str:
        fmt = schema.get("format")
        if fmt == "date-time":
            text = f"2026-0{self._rng.randint(1, 9)}-1{self._rng.randint(0, 9)}T12:00:00Z"
        elif fmt == "date":
            text = f"2026-0{self._rng.randint(1, 9)}-1{self._rng.randint(0, 9)}"
        elif fmt == "time":
            text = f"1{self._rng.randint(0, 9)}:{self._rng.randint(10, 59)}:00"
        elif "#RRGGBB" in str(schema.get("description", "")):
            text = f"#{self._rng.randrange(1 << 24):06X}"
        else:
            label = name.replace("_", " ").strip() or "text"
            text = f"{label}: {words(self._rng, self._rng.randint(3, 9))}"
        min_len = _int(schema.get("minLength"), 0)
        max_len = _int(schema.get("maxLength"), max(len(text), min_len))
        if max_len < min_len:
            raise SchemaError(f"maxLength {max_len} is below minLength {min_len}")
        while len(text) < min_len:
            text += " " + words(self._rng, 4)
        text = text[:max_len]
        stripped = text.rstrip()
        return stripped if len(stripped) >= min_len else text


def _types(schema: Mapping[str, Any]) -> list[str]:
    raw = schema.get("type")
    if raw is None:
        return []
    listed = [raw] if isinstance(raw, str) else list(raw)
    types = [str(t).lower() for t in listed]
    if schema.get("nullable") is True and "null" not in types:
        types.append("null")
    return types


def _int(raw: Any, default: int) -> int:
    # Google's OpenAPI subset encodes int64 bounds as JSON strings ("3").
    return default if raw is None else int(raw)


def _float(raw: Any, default: float | None) -> float | None:
    return default if raw is None else float(raw)
