"""The AI operations the gateway runs, one spec each, registered by name.

A spec (see `gateway.operations.base`) holds what differs between features: validation, key
derivation, prompt, response schema, parser. Names match the keys of `Settings.policies`.
Adding a feature means adding a spec module, registering it here, and adding its RPC.
"""

from __future__ import annotations

from typing import Any

from gateway.operations.analyze_video import AnalyzeVideo
from gateway.operations.base import OperationSpec
from gateway.operations.check_channel_consistency import CheckChannelConsistency
from gateway.operations.compute_attention_heatmap import ComputeAttentionHeatmap
from gateway.operations.generate_thumbnail import GenerateThumbnail
from gateway.operations.suggest_thumbnail_concepts import SuggestThumbnailConcepts

GENERATE_THUMBNAIL = GenerateThumbnail()
ANALYZE_VIDEO = AnalyzeVideo()
SUGGEST_THUMBNAIL_CONCEPTS = SuggestThumbnailConcepts()
COMPUTE_ATTENTION_HEATMAP = ComputeAttentionHeatmap()
CHECK_CHANNEL_CONSISTENCY = CheckChannelConsistency()

#: Every operation, by name.
OPERATIONS: dict[str, OperationSpec[Any, Any]] = {
    spec.name: spec
    for spec in (
        GENERATE_THUMBNAIL,
        ANALYZE_VIDEO,
        SUGGEST_THUMBNAIL_CONCEPTS,
        COMPUTE_ATTENTION_HEATMAP,
        CHECK_CHANNEL_CONSISTENCY,
    )
}


def get(name: str) -> OperationSpec[Any, Any]:
    """The spec registered under `name`; an unknown name is a programming error (KeyError)."""
    try:
        return OPERATIONS[name]
    except KeyError:
        raise KeyError(f"no operation named {name!r}; known: {sorted(OPERATIONS)}") from None


__all__ = [
    "ANALYZE_VIDEO",
    "CHECK_CHANNEL_CONSISTENCY",
    "COMPUTE_ATTENTION_HEATMAP",
    "GENERATE_THUMBNAIL",
    "OPERATIONS",
    "SUGGEST_THUMBNAIL_CONCEPTS",
    "OperationSpec",
    "get",
]
