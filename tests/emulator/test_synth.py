"""The emulator's schema-driven answer generator: every value satisfies its schema."""

from __future__ import annotations

import random
import re
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.emulator.synth import SchemaError, value_for_schema

ANALYSIS = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "maxLength": 40},
        "score": {"type": "integer", "minimum": 0, "maximum": 100},
        "confidence": {"type": "number", "minimum": 0.5, "maximum": 0.75},
        "verdict": {"type": "string", "enum": ["consistent", "mixed", "inconsistent"]},
        "topics": {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 6},
        "hooks": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "at_s": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                    "label": {"type": "string", "minLength": 30, "maxLength": 35},
                },
                "required": ["at_s", "label"],
            },
        },
        "note": {"type": ["string", "null"]},
        "flag": {"type": "boolean"},
    },
    "required": ["summary", "score", "verdict", "topics", "hooks"],
}

WITH_REFS = {
    "$defs": {
        "region": {
            "type": "object",
            "properties": {
                "x": {"type": "integer", "minimum": 0, "maximum": 1279},
                "weight": {"type": "number", "minimum": 0, "maximum": 1},
            },
            "required": ["x", "weight"],
        }
    },
    "type": "object",
    "properties": {
        "regions": {"type": "array", "items": {"$ref": "#/$defs/region"}, "maxItems": 2},
        "best": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/region"}]},
        "kind": {"const": "heatmap"},
        "both": {
            "allOf": [
                {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                {"properties": {"b": {"type": "boolean"}}, "required": ["b"]},
            ]
        },
    },
    "required": ["regions", "best", "kind", "both"],
}


@pytest.mark.parametrize("schema", [ANALYSIS, WITH_REFS], ids=["constraints", "refs"])
@given(seed=st.integers(min_value=0, max_value=2**64 - 1))
def test_generated_values_validate_against_the_json_schema(
    schema: dict[str, Any], seed: int
) -> None:
    value = value_for_schema(schema, random.Random(seed))
    jsonschema.validate(value, schema, cls=jsonschema.Draft202012Validator)


@given(seed=st.integers(min_value=0, max_value=2**64 - 1))
def test_a_string_described_as_a_hex_colour_is_one(seed: int) -> None:
    schema = {"type": "string", "description": "A colour as a hex code, #RRGGBB.", "maxLength": 9}
    assert re.fullmatch(r"#[0-9A-F]{6}", value_for_schema(schema, random.Random(seed)))


def test_same_seed_same_value_and_different_seeds_differ() -> None:
    first = value_for_schema(ANALYSIS, random.Random(1))
    assert value_for_schema(ANALYSIS, random.Random(1)) == first
    assert any(value_for_schema(ANALYSIS, random.Random(s)) != first for s in range(2, 6))


def test_openapi_dialect_of_response_schema() -> None:
    """Google's OpenAPI subset: UPPERCASE types, int64 bounds as strings, nullable, ordering."""
    schema = {
        "type": "OBJECT",
        "properties": {
            "concepts": {
                "type": "ARRAY",
                "minItems": "3",
                "maxItems": "3",
                "items": {
                    "type": "OBJECT",
                    "properties": {
                        "headline": {"type": "STRING", "maxLength": "12"},
                        "emotion": {"type": "STRING", "enum": ["joy", "awe"]},
                        "rank": {"type": "INTEGER", "minimum": 1, "maximum": 3},
                    },
                    "required": ["headline", "emotion", "rank"],
                    "propertyOrdering": ["rank", "headline", "emotion"],
                },
            },
            "comment": {"type": "STRING", "nullable": True},
        },
        "required": ["concepts"],
    }
    value = value_for_schema(schema, random.Random(3))
    assert len(value["concepts"]) == 3
    for concept in value["concepts"]:
        assert list(concept) == ["rank", "headline", "emotion"]
        assert len(concept["headline"]) <= 12
        assert concept["emotion"] in ("joy", "awe")
        assert 1 <= concept["rank"] <= 3
    assert value["comment"] is None or isinstance(value["comment"], str)


@pytest.mark.parametrize(
    ("schema", "complaint"),
    [
        ({"type": "integer", "minimum": 5, "maximum": 4}, "no integer"),
        ({"type": "array", "minItems": 3, "maxItems": 2}, "maxItems"),
        ({"type": "string", "minLength": 9, "maxLength": 2}, "maxLength"),
        ({"type": "object", "properties": {}, "required": ["x"]}, "required"),
        ({"$ref": "#/$defs/missing"}, "does not resolve"),
        ({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, "cycle"),
    ],
)
def test_unsatisfiable_schemas_are_refused(schema: dict[str, Any], complaint: str) -> None:
    with pytest.raises(SchemaError, match=complaint):
        value_for_schema(schema, random.Random(0))
