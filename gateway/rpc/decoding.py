"""Requests that do not parse answer INVALID_ARGUMENT naming the field, not UNKNOWN.

grpc.aio parses a request with the handler's `request_deserializer` before it runs the
behaviour, and reports an exception raised there as UNKNOWN ("Unexpected DecodeError"), past
every interceptor. `safe_deserializer` parses in its place and hands an `Undecodable` on instead
of raising; `gateway.rpc.interceptors.DecodingInterceptor` turns that into `InvalidArgument`
inside the RPC, so the error mapping reports it like any other bad input, with the request id.

protobuf's own error does not say which field is wrong. `undecodable_field` walks the wire
format against the message's descriptor to name it: the first string field whose bytes are not
UTF-8 (the common case: the wire format itself is fine, proto3 only refuses the text), with
repeated fields indexed (`references[2].mime_type`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor, descriptor_pool
from google.protobuf.message import DecodeError

from gateway import errors

Deserializer = Callable[[bytes], Any]

_VARINT, _FIXED64, _LENGTH, _START_GROUP, _END_GROUP, _FIXED32 = range(6)


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A request that did not parse: the raw bytes and the message type they should be."""

    data: bytes
    message: descriptor.Descriptor

    def error(self) -> errors.InvalidArgument:
        """What to tell the caller: the field at fault when the wire format shows it."""
        where = undecodable_field(self.data, self.message)
        if where is not None:
            return errors.InvalidArgument.field(
                where,
                "is not valid UTF-8; string fields must hold UTF-8 text (send bytes fields "
                "for binary data)",
            )
        return errors.InvalidArgument.field(
            "request",
            f"is not a valid {self.message.full_name} message; encode it with the "
            "viewbait.ai.v1 protos",
        )


def safe_deserializer(deserialize: Deserializer, message: descriptor.Descriptor) -> Deserializer:
    """`deserialize`, answering `Undecodable` instead of raising on bytes it cannot parse."""

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError:
            return Undecodable(bytes(data), message)

    return parse


def method_input(method: str) -> descriptor.Descriptor | None:
    """The request message type of a full method name (`/pkg.Service/Method`), if known."""
    service, _, name = method.lstrip("/").partition("/")
    try:
        found = descriptor_pool.Default().FindMethodByName(f"{service}.{name}")
    except KeyError:
        return None
    return found.input_type


def undecodable_field(data: bytes, message: descriptor.Descriptor, prefix: str = "") -> str | None:
    """The path of the first string field in `data` (a `message`) that is not UTF-8, or None
    (no such field, or the wire format itself is broken before one is found)."""
    seen: dict[int, int] = {}
    position = 0
    try:
        while position < len(data):
            key, position = _varint(data, position)
            number, wire = key >> 3, key & 7
            if wire == _LENGTH:
                size, position = _varint(data, position)
                chunk = data[position : position + size]
                if len(chunk) != size:
                    return None
                position += size
                field = message.fields_by_number.get(number)
                if field is None:
                    continue
                index = seen.get(number, 0)
                seen[number] = index + 1
                path = prefix + field.name
                if _is_repeated(field):
                    path += f"[{index}]"
                if field.type == descriptor.FieldDescriptor.TYPE_STRING:
                    try:
                        chunk.decode("utf-8")
                    except UnicodeDecodeError:
                        return path
                elif field.message_type is not None:
                    inner = undecodable_field(chunk, field.message_type, path + ".")
                    if inner is not None:
                        return inner
            elif wire == _VARINT:
                _, position = _varint(data, position)
            elif wire == _FIXED64:
                position += 8
            elif wire == _FIXED32:
                position += 4
            else:
                return None  # groups are not in these protos
    except IndexError:
        return None
    return None


def _is_repeated(field: descriptor.FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
        if shift > 63:
            raise IndexError("varint too long")
