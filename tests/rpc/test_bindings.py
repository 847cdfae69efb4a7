"""The bindings table covers every operation spec and agrees with the proto it binds them to."""

from __future__ import annotations

from viewbait.ai.v1 import common_pb2, gateway_service_pb2, job_pb2, job_service_pb2

from gateway.operations import OPERATIONS
from gateway.rpc import bindings


def _camel(name: str) -> str:
    return "".join(part.title() for part in name.split("_"))


def test_every_spec_has_one_binding() -> None:
    assert set(bindings.BINDINGS) == set(OPERATIONS)
    for name, binding in bindings.BINDINGS.items():
        assert binding.spec is OPERATIONS[name]


def test_the_oneof_cases_are_the_operation_names() -> None:
    submit = job_service_pb2.SubmitJobRequest.DESCRIPTOR.oneofs_by_name["operation"]
    result = job_pb2.Job.DESCRIPTOR.oneofs_by_name["result"]
    assert {field.name for field in submit.fields} == set(bindings.BINDINGS)
    assert {field.name for field in result.fields} == set(bindings.BINDINGS)


def test_each_operation_value_is_bound_once() -> None:
    for name, binding in bindings.BINDINGS.items():
        assert common_pb2.Operation.Name(binding.operation) == f"OPERATION_{name.upper()}"
    bound = set(bindings.BY_OPERATION)
    assert bound == set(common_pb2.Operation.values()) - {common_pb2.OPERATION_UNSPECIFIED}


def test_unary_bindings_answer_with_their_rpcs_response() -> None:
    service = gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"]
    for name, binding in bindings.BINDINGS.items():
        method = service.methods_by_name[_camel(name)]
        if isinstance(binding, bindings.UnaryBinding):
            assert not method.server_streaming, name
            assert binding.response_type.DESCRIPTOR is method.output_type, name  # type: ignore[attr-defined]
        else:
            assert method.server_streaming, name
    assert len(service.methods) == len(bindings.BINDINGS)
