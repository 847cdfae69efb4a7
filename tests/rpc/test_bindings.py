"""The bindings table covers every operation spec and agrees with the proto it binds them to."""

from __future__ import annotations

from viewbait.ai.v1 import common_pb2, gateway_service_pb2, job_pb2, job_service_pb2

from gateway.execution import Outcome, Spend
from gateway.operations import OPERATIONS
from gateway.operations.analyze_video import HookMoment, VideoAnalysis
from gateway.rpc import bindings, convert


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


def test_a_hot_hit_is_encoded_as_its_response_message_would_be() -> None:
    analysis = VideoAnalysis(
        summary="A song" * 40,  # a result longer than one varint byte can size
        topics=("music", "80s"),
        hook_moments=(HookMoment(timestamp_s=43.5, description="the chorus"),),
        audience="everyone",
        tone="earnest",
        recommended_thumbnail_elements=("face", "trench coat"),
    )
    binding = bindings.ANALYZE_VIDEO
    outcome = Outcome(analysis, "gemini-3.6-flash", Spend(), cached=True, views={})
    for request_id in ("", "0f" * 16, "r" * 128, "ré-é"):
        expected = binding.response_type(
            result=binding.to_result(analysis),
            metadata=convert.response_metadata(
                request_id, model=outcome.model, spend=outcome.spend, cached=True
            ),
        )
        encoded = binding.encoded_hit(outcome, request_id)
        assert encoded == expected.SerializeToString(), request_id
        assert binding.response_type.FromString(encoded) == expected  # type: ignore[attr-defined]
