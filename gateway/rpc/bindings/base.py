"""What a binding is: an operation spec tied to its gRPC messages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message
from viewbait.ai.v1 import common_pb2

from gateway.execution.types import Outcome
from gateway.operations.base import OperationSpec
from gateway.rpc import convert

ResponseT = TypeVar("ResponseT", bound=Message)


@dataclass(frozen=True, slots=True)
class Binding:
    """An operation as the gRPC services see it."""

    spec: OperationSpec[Any, Any]
    #: Its `viewbait.ai.v1.Operation` value (jobs report it; ListJobs filters by it).
    operation: common_pb2.Operation.ValueType
    #: Proto request message -> the spec's domain request (shapes only; the spec validates).
    to_request: Callable[[Any], Any]
    #: The spec's result -> the proto result message (a unary response's and a job's `result`).
    to_result: Callable[[Any], Message]

    @property
    def name(self) -> str:
        """The operation's name: its spec's, its policy's, and the case of
        `SubmitJobRequest.operation` and of `Job.result` that carries it."""
        return self.spec.name


@dataclass(frozen=True, slots=True)
class UnaryBinding(Binding, Generic[ResponseT]):
    """An operation with a unary RPC, answered by `response_type(result=...)` or, when the work
    outlasts the long-poll window, `response_type(pending=...)`."""

    response_type: Callable[..., ResponseT]

    def encoded_hit(self, outcome: Outcome[Any], request_id: str) -> bytes:
        """The response to a hit in the hot copy (`outcome.views` set), encoded: exactly the
        bytes of `response_type(result=..., metadata=convert.response_metadata(...))`
        serialized, but the result and the metadata that every hit on the entry shares are
        encoded once per entry, and only the request id per call."""
        views = outcome.views
        assert views is not None and outcome.cached, "only a hot-copy hit is encoded once"
        # Keyed apart from the renderings `Outcome.view` keeps (those are keyed by callables).
        parts: tuple[bytes, bytes, bytes] | None = views.get((self.name, _ENCODED))
        if parts is None:
            response = self.response_type(result=outcome.view(self.to_result))
            shared = convert.response_metadata(
                "",
                model=outcome.model,
                spend=outcome.spend,
                cached=outcome.cached,
                coalesced=outcome.coalesced,
            )
            metadata_field = response.DESCRIPTOR.fields_by_name["metadata"].number
            parts = views[(self.name, _ENCODED)] = (
                response.SerializeToString(),
                _tag(metadata_field),
                shared.SerializeToString(),
            )
        result_field, metadata_tag, shared_metadata = parts
        # Fields are encoded in field-number order: `request_id` (1) comes first in the
        # metadata, and the metadata after the result.
        encoded_id = request_id.encode()
        metadata = shared_metadata
        if encoded_id:  # an empty string field is left out
            metadata = _REQUEST_ID_TAG + _varint(len(encoded_id)) + encoded_id + metadata
        return result_field + metadata_tag + _varint(len(metadata)) + metadata


#: The key of a hot-copy entry's encoded parts in its views.
_ENCODED = "encoded hit"


def _tag(field_number: int) -> bytes:
    """The key of a length-delimited field (wire type 2)."""
    return _varint(field_number << 3 | 2)


def _varint(value: int) -> bytes:
    """`value` (>= 0) as a protobuf varint."""
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


#: The varints of 0 - 127: one byte each (a request id's length, and most metadata's).
_ONE_BYTE = tuple(bytes((n,)) for n in range(0x80))
_REQUEST_ID_TAG = _tag(common_pb2.ResponseMetadata.DESCRIPTOR.fields_by_name["request_id"].number)
