"""What a binding is: an operation spec tied to its gRPC messages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message
from viewbait.ai.v1 import common_pb2

from gateway.operations.base import OperationSpec

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
