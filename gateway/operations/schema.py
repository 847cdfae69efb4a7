"""The JSON Schema subset our response schemas use, and a strict validator for it.

Response schemas are sent to Gemini as `responseJsonSchema` and checked again here when the answer
comes back: structured output makes a conforming answer likely, not certain, and an answer outside
the schema (a missing field, a weight of 1.3, an eleventh topic) is a bad response, never clamped.
Rules a schema cannot state (sums, orders, spellings) are each operation's `normalise`
(`gateway.operations.normalise`).

Only the keywords in `KEYWORDS` are allowed. `check_schema` refuses anything else, so a schema can
never carry a constraint that Gemini would see but this validator would silently skip. `pattern`
is left out on purpose: Gemini does not promise to honour it, so every constraint we rely on must
be one the model is actually steered by (types, enums, ranges, lengths and item counts).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: Every keyword a response schema may use.
KEYWORDS = frozenset(
    {
        "type",
        "description",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minItems",
        "maxItems",
        "enum",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
    }
)
_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean"})

Schema = Mapping[str, Any]


class SchemaMismatch(ValueError):
    """A JSON value does not satisfy a schema; `path` says where (e.g. `$.regions[3].weight`)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def check_schema(schema: Schema, path: str = "$") -> None:
    """Raises `ValueError` if `schema` uses anything outside the supported subset.

    Objects must list `properties` and set `additionalProperties` to false, so an answer cannot
    carry fields nobody reads; arrays must give `items`.
    """
    unknown = set(schema) - KEYWORDS
    if unknown:
        raise ValueError(f"{path}: unsupported schema keywords {sorted(unknown)}")
    kind = schema.get("type")
    if kind not in _TYPES:
        raise ValueError(f"{path}: type must be one of {sorted(_TYPES)}, not {kind!r}")
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, Mapping) or schema.get("additionalProperties") is not False:
            raise ValueError(f"{path}: objects need properties and additionalProperties: false")
        missing = set(schema.get("required", ())) - set(properties)
        if missing:
            raise ValueError(f"{path}: required names unknown properties {sorted(missing)}")
        for name, sub in properties.items():
            check_schema(sub, f"{path}.{name}")
    elif kind == "array":
        items = schema.get("items")
        if not isinstance(items, Mapping):
            raise ValueError(f"{path}: arrays need an items schema")
        check_schema(items, f"{path}[]")


def validate(instance: Any, schema: Schema, path: str = "$") -> None:
    """Raises `SchemaMismatch` at the first place `instance` breaks `schema`."""
    kind = schema["type"]
    _check_type(instance, kind, path)
    if "enum" in schema and instance not in schema["enum"]:
        raise SchemaMismatch(path, f"must be one of {list(schema['enum'])}")
    if kind == "object":
        _validate_object(instance, schema, path)
    elif kind == "array":
        _validate_array(instance, schema, path)
    elif kind == "string":
        _validate_string(instance, schema, path)
    elif kind in ("number", "integer"):
        _validate_number(instance, schema, path)


def _check_type(instance: Any, kind: str, path: str) -> None:
    ok: bool
    if kind == "object":
        ok = isinstance(instance, dict)
    elif kind == "array":
        ok = isinstance(instance, list)
    elif kind == "string":
        ok = isinstance(instance, str)
    elif kind == "boolean":
        ok = isinstance(instance, bool)
    elif kind == "integer":
        # JSON Schema counts 3.0 as an integer; JSON has one number type.
        ok = not isinstance(instance, bool) and (
            isinstance(instance, int) or (isinstance(instance, float) and instance.is_integer())
        )
    else:
        ok = (
            not isinstance(instance, bool)
            and isinstance(instance, int | float)
            and math.isfinite(instance)
        )
    if not ok:
        raise SchemaMismatch(path, f"must be {'an' if kind[0] in 'aeiou' else 'a'} {kind}")


def _validate_object(instance: dict[str, Any], schema: Schema, path: str) -> None:
    properties: Mapping[str, Schema] = schema["properties"]
    for name in schema.get("required", ()):
        if name not in instance:
            raise SchemaMismatch(f"{path}.{name}", "is required but missing")
    for name, value in instance.items():
        sub = properties.get(name)
        if sub is None:
            raise SchemaMismatch(f"{path}.{name}", "is not a known property")
        validate(value, sub, f"{path}.{name}")


def _validate_array(instance: list[Any], schema: Schema, path: str) -> None:
    if "minItems" in schema and len(instance) < schema["minItems"]:
        raise SchemaMismatch(path, f"must have at least {schema['minItems']} items")
    if "maxItems" in schema and len(instance) > schema["maxItems"]:
        raise SchemaMismatch(path, f"must have at most {schema['maxItems']} items")
    for index, item in enumerate(instance):
        validate(item, schema["items"], f"{path}[{index}]")


def _validate_string(instance: str, schema: Schema, path: str) -> None:
    if "minLength" in schema and len(instance) < schema["minLength"]:
        raise SchemaMismatch(path, f"must be at least {schema['minLength']} characters")
    if "maxLength" in schema and len(instance) > schema["maxLength"]:
        raise SchemaMismatch(path, f"must be at most {schema['maxLength']} characters")


def _validate_number(instance: float, schema: Schema, path: str) -> None:
    if "minimum" in schema and instance < schema["minimum"]:
        raise SchemaMismatch(path, f"must be at least {schema['minimum']}")
    if "maximum" in schema and instance > schema["maximum"]:
        raise SchemaMismatch(path, f"must be at most {schema['maximum']}")


# Constructors for the schemas the specs declare; they keep every schema inside the subset.


def string(description: str, *, max_length: int, min_length: int = 1) -> dict[str, Any]:
    """A string schema with length bounds."""
    return {
        "type": "string",
        "description": description,
        "minLength": min_length,
        "maxLength": max_length,
    }


def enum(description: str, values: list[str]) -> dict[str, Any]:
    """A string schema restricted to `values`."""
    return {"type": "string", "description": description, "enum": list(values)}


def number(description: str, *, minimum: float, maximum: float) -> dict[str, Any]:
    """A number schema with an inclusive range."""
    return {"type": "number", "description": description, "minimum": minimum, "maximum": maximum}


def integer(description: str, *, minimum: int, maximum: int) -> dict[str, Any]:
    """An integer schema with an inclusive range."""
    return {"type": "integer", "description": description, "minimum": minimum, "maximum": maximum}


def array(
    description: str, items: dict[str, Any], *, min_items: int, max_items: int
) -> dict[str, Any]:
    """An array schema with item-count bounds."""
    return {
        "type": "array",
        "description": description,
        "items": items,
        "minItems": min_items,
        "maxItems": max_items,
    }


def obj(description: str, properties: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """An object schema whose properties are all required and no others allowed."""
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
