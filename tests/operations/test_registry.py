"""The operation registry agrees with the policy table and with each spec's own schema."""

from __future__ import annotations

import pytest

from gateway import operations
from gateway.config import Settings
from gateway.operations import OPERATIONS
from gateway.operations.base import StructuredOperation
from gateway.operations.schema import check_schema


def test_registry_matches_the_policy_table() -> None:
    settings = Settings()
    assert set(OPERATIONS) == set(settings.policies)
    for name, spec in OPERATIONS.items():
        policy = settings.policy(name)
        assert spec.name == name
        # Only the operation that is never cached has no TTL.
        assert (policy.ttl_s == 0) == (name == "generate_thumbnail"), name


def test_get_finds_specs_and_names_the_known_ones() -> None:
    assert operations.get("analyze_video") is operations.ANALYZE_VIDEO
    with pytest.raises(KeyError, match="analyze_video"):
        operations.get("analyse_video")


@pytest.mark.parametrize(
    "spec",
    [s for s in OPERATIONS.values() if isinstance(s, StructuredOperation)],
    ids=lambda s: s.name,
)
def test_response_schemas_stay_in_the_supported_subset(spec: StructuredOperation) -> None:  # type: ignore[type-arg]
    check_schema(spec.response_schema)


def test_every_operation_has_a_version() -> None:
    for spec in OPERATIONS.values():
        assert spec.prompt_version and spec.schema_version
