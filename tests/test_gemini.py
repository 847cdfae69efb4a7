"""The Gemini adapter: real google-genai over HTTP against the offline emulator, no mocks.

Retries and their bounds are proven by counting what the emulator served.
"""

from __future__ import annotations

import io
import json
import logging
import random
import socket
import time
from typing import Any

import pytest
from google.genai import types
from PIL import Image
from pydantic import SecretStr

from gateway import backoff
from gateway.config import GeminiSettings, ModelPrice
from gateway.emulator import EmulatorServer
from gateway.errors import (
    DeadlineExceeded,
    GatewayError,
    SafetyBlocked,
    UpstreamBadResponse,
    UpstreamCredentialsRefused,
    UpstreamRejected,
    UpstreamUnavailable,
)
from gateway.gemini import GeminiClient, response_from_sdk
from gateway.model import (
    Blob,
    CallLabels,
    FileRef,
    ModelRequest,
    ModelResponse,
    Part,
    UsageRecord,
    generate_parsed,
)
from gateway.usage import PriceBook, cost_usd
from tests.fixtures.usage import UsageCollector

TEXT_MODEL = "gemini-3.6-flash"
IMAGE_MODEL = "gemini-3.1-flash-image-preview"
LABELS = CallLabels(operation="test_op", user_id="u1", request_id="r1")
SCHEMA = {
    "type": "object",
    "properties": {
        "score": {"type": "integer", "minimum": 0, "maximum": 100},
        "topics": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 4},
    },
    "required": ["score", "topics"],
}


def text_request(text: str = "Summarize the video.", **kwargs: Any) -> ModelRequest:
    return ModelRequest(model=TEXT_MODEL, parts=[Part(text=text)], **kwargs)


def image_request() -> ModelRequest:
    reference = Blob(_png(32, 32), "image/png")
    return ModelRequest(
        model=IMAGE_MODEL,
        parts=[Part(text="A shocked face, bold yellow title"), Part(blob=reference)],
        response_modalities=("TEXT", "IMAGE"),
        image_aspect_ratio="16:9",
    )


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def _price(model: str) -> ModelPrice:
    return GeminiSettings().prices[model]


# -- success paths ---------------------------------------------------------------------------


async def test_text_answer_with_usage_cost_and_record(
    gemini_client: GeminiClient, emulator: EmulatorServer, usage_sink: UsageCollector
) -> None:
    response = await gemini_client.generate(text_request(), labels=LABELS)
    assert "offline Gemini emulator" in response.text
    assert (response.finish_reason, response.model_version, response.attempts) == (
        "STOP",
        TEXT_MODEL,
        1,
    )
    usage = response.usage
    assert usage.prompt_tokens > 0 and usage.output_tokens > 0 and usage.thinking_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.output_tokens + usage.thinking_tokens
    assert response.cost_usd == pytest.approx(cost_usd(usage, _price(TEXT_MODEL)))
    assert response.cost_usd > 0
    [record] = usage_sink.records
    assert (record.outcome, record.attempt, record.model, record.labels) == (
        "ok",
        1,
        TEXT_MODEL,
        LABELS,
    )
    assert record.usage == usage and record.cost_usd == response.cost_usd
    assert emulator.stats().count(TEXT_MODEL, "ok") == 1


async def test_schema_request_sends_json_schema_and_gets_matching_json(
    gemini_client: GeminiClient, emulator: EmulatorServer
) -> None:
    request = text_request(
        response_schema=SCHEMA, system_instruction="You rate thumbnails.", temperature=0.2
    )
    response = await gemini_client.generate(request, labels=LABELS)
    answer = json.loads(response.text)
    assert 0 <= answer["score"] <= 100 and 2 <= len(answer["topics"]) <= 4
    [sent] = emulator.stats().recent
    assert sent["response_schema"] == SCHEMA
    assert sent["response_mime_type"] == "application/json"
    assert sent["system_instruction"] is True


async def test_each_schema_is_sent_as_given(
    gemini_client: GeminiClient, emulator: EmulatorServer
) -> None:
    """Requests differing only in their schema object must not share a request config."""
    other = {
        "type": "object",
        "properties": {"verdict": {"type": "boolean"}},
        "required": ["verdict"],
    }
    for schema in (SCHEMA, other, SCHEMA, dict(SCHEMA)):
        response = await gemini_client.generate(text_request(response_schema=schema), labels=LABELS)
        assert set(json.loads(response.text)) == set(schema["properties"])
    assert [r["response_schema"] for r in emulator.stats().recent] == [
        SCHEMA,
        other,
        SCHEMA,
        SCHEMA,
    ]


async def test_image_request_returns_png_and_prices_image_tokens(
    gemini_client: GeminiClient, emulator: EmulatorServer
) -> None:
    response = await gemini_client.generate(image_request(), labels=LABELS)
    [image] = response.images
    assert image.mime_type == "image/png"
    assert Image.open(io.BytesIO(image.data)).size == (1344, 768)
    assert response.text  # the model's caption part
    usage = response.usage
    assert usage.image_output_tokens == 1290
    assert usage.thinking_tokens == 0
    price = _price(IMAGE_MODEL)
    assert response.cost_usd == pytest.approx(cost_usd(usage, price))
    assert response.cost_usd >= 1290 * price.image_output / 1e6
    [sent] = emulator.stats().recent
    assert sent["modalities"] == ["TEXT", "IMAGE"] and sent["aspect_ratio"] == "16:9"
    assert [p["kind"] for p in sent["parts"]] == ["text", "inline"]


async def test_file_reference_is_sent_as_file_data(
    gemini_client: GeminiClient, emulator: EmulatorServer
) -> None:
    video = FileRef("https://www.youtube.com/watch?v=dQw4w9WgXcQ", "video/*")
    request = ModelRequest(model=TEXT_MODEL, parts=[Part(file=video), Part(text="Analyze.")])
    response = await gemini_client.generate(request, labels=LABELS)
    assert response.usage.prompt_tokens > 258 * 60  # at least a minute of video
    assert emulator.stats().recent[0]["parts"][0]["uri"] == video.uri


async def test_streaming_forwards_each_chunk(
    gemini_client: GeminiClient, emulator: EmulatorServer
) -> None:
    chunks: list[str] = []

    async def on_text(text: str) -> None:
        chunks.append(text)

    # Small chunks: this short answer would otherwise fit in one.
    emulator.set_knobs(stream_chunk_chars=40)
    response = await gemini_client.generate(text_request(), labels=LABELS, on_text=on_text)
    assert len(chunks) > 2
    assert "".join(chunks) == response.text
    assert response.usage.output_tokens > 0 and response.cost_usd > 0
    assert emulator.stats().recent[0]["stream"] is True


async def test_unknown_model_costs_nothing_and_warns_once(
    gemini_client: GeminiClient, caplog: pytest.LogCaptureFixture
) -> None:
    request = ModelRequest(model="gemini-unpriced", parts=[Part(text="hi")])
    with caplog.at_level(logging.WARNING, logger="gateway.usage"):
        first = await gemini_client.generate(request, labels=LABELS)
        second = await gemini_client.generate(request, labels=LABELS)
    assert first.cost_usd == second.cost_usd == 0.0
    assert first.usage.prompt_tokens > 0
    warnings = [r for r in caplog.records if "gemini-unpriced" in r.getMessage()]
    assert len(warnings) == 1


# -- retries ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["rate_limited", "unavailable", "internal", "malformed", "disconnect", "midstream"]
)
async def test_transient_faults_are_retried_then_succeed(
    gemini_client: GeminiClient,
    emulator: EmulatorServer,
    usage_sink: UsageCollector,
    kind: str,
) -> None:
    emulator.inject(kind, count=2, retry_delay_s=0.01)
    response = await gemini_client.generate(text_request(), labels=LABELS)
    assert response.attempts == 3
    assert emulator.stats().count(outcome=kind) == 2
    assert emulator.stats().count(outcome="ok") == 1
    assert [r.attempt for r in usage_sink.records] == [1, 2, 3]
    assert usage_sink.outcomes()[-1] == "ok"
    assert all(o != "ok" for o in usage_sink.outcomes()[:2])


async def test_on_attempt_hears_of_every_attempt_as_the_ledger_does(
    gemini_client: GeminiClient, emulator: EmulatorServer, usage_sink: UsageCollector
) -> None:
    emulator.inject("unavailable", count=1)
    emulator.inject("safety", count=1)
    heard: list[UsageRecord] = []

    async def on_attempt(record: UsageRecord) -> None:
        heard.append(record)
        if len(heard) == 1:
            raise RuntimeError("a failing callback is logged, not the caller's problem")

    with pytest.raises(SafetyBlocked):
        await gemini_client.generate(text_request(), labels=LABELS, on_attempt=on_attempt)
    response = await gemini_client.generate(text_request(), labels=LABELS, on_attempt=on_attempt)

    assert heard == usage_sink.records
    assert [r.outcome for r in heard] == ["UPSTREAM_UNAVAILABLE", "SAFETY_BLOCKED", "ok"]
    # The refused candidate's prompt was billed; the answer's record is what the call cost.
    assert heard[1].cost_usd > 0 and heard[2].cost_usd == response.cost_usd


@pytest.mark.parametrize("code", [502, 504, 408])
async def test_other_retryable_statuses(
    gemini_client: GeminiClient, emulator: EmulatorServer, code: int
) -> None:
    emulator.inject("error", code=code)
    response = await gemini_client.generate(text_request(), labels=LABELS)
    assert response.attempts == 2 and emulator.stats().requests == 2


async def test_midstream_failure_restarts_the_stream(
    gemini_client: GeminiClient, emulator: EmulatorServer
) -> None:
    emulator.inject("midstream")
    chunks: list[str] = []

    async def on_text(text: str) -> None:
        chunks.append(text)

    response = await gemini_client.generate(text_request(), labels=LABELS, on_text=on_text)
    assert response.attempts == 2
    assert emulator.stats().count(outcome="midstream") == 1
    assert response.text.startswith(chunks[0])  # chunk of the failed attempt, then a full replay
    assert "".join(chunks[1:]) == response.text


async def test_retries_stop_at_max_attempts(
    gemini_client: GeminiClient,
    emulator: EmulatorServer,
    usage_sink: UsageCollector,
    gemini_settings: GeminiSettings,
) -> None:
    emulator.inject("unavailable", count=50)
    with pytest.raises(UpstreamUnavailable) as caught:
        await gemini_client.generate(text_request(), labels=LABELS)
    attempts = gemini_settings.max_attempts
    assert f"after {attempts} attempts" in caught.value.message
    assert emulator.stats().count(outcome="unavailable") == attempts
    assert usage_sink.outcomes() == ["UPSTREAM_UNAVAILABLE"] * attempts


async def test_unreadable_answers_exhaust_as_bad_response(
    gemini_client: GeminiClient, emulator: EmulatorServer, gemini_settings: GeminiSettings
) -> None:
    emulator.inject("malformed", count=50)
    with pytest.raises(UpstreamBadResponse):
        await gemini_client.generate(text_request(), labels=LABELS)
    assert emulator.stats().requests == gemini_settings.max_attempts


async def test_retry_info_delay_beyond_the_deadline_stops_at_once(
    gemini_client: GeminiClient, emulator: EmulatorServer
) -> None:
    """The server says "come back in 30 s"; with 5 s left the adapter must not retry early."""
    emulator.inject("rate_limited", count=5, retry_delay_s=30)
    with pytest.raises(UpstreamUnavailable) as caught:
        await gemini_client.generate(text_request(), labels=LABELS, deadline=time.monotonic() + 5)
    assert caught.value.retry_after_s == 30
    assert "429" in caught.value.message and "deadline" in caught.value.message
    assert emulator.stats().requests == 1


async def test_a_retry_delay_beyond_the_maximum_is_not_slept_even_without_a_deadline(
    emulator: EmulatorServer, usage_sink: UsageCollector, gemini_settings: GeminiSettings
) -> None:
    """Gemini says "come back in an hour": nothing bounds this call but the maximum wait, and
    it ends at once, telling its caller when to come back."""
    settings = gemini_settings.model_copy(update={"retry_delay_max_s": 10})
    emulator.inject("rate_limited", count=5, retry_delay_s=3600)
    async with GeminiClient(settings, usage_sink=usage_sink) as client:
        with pytest.raises(UpstreamUnavailable) as caught:
            await client.generate(text_request(), labels=LABELS)
    assert caught.value.retry_after_s == 3600
    assert "429" in caught.value.message and "3600s" in caught.value.message
    assert emulator.stats().requests == 1
    # Within the maximum, the same delay is waited out and the call retried.
    emulator.reset()
    emulator.inject("rate_limited", count=1, retry_delay_s=0.05)
    async with GeminiClient(settings, usage_sink=usage_sink) as client:
        response = await client.generate(text_request(), labels=LABELS)
    assert response.attempts == 2


def test_backoff_is_full_jitter_and_never_undercuts_retry_info() -> None:
    rng = random.Random(3)
    delays = [
        backoff.full_jitter(n, initial_s=0.5, max_s=4.0, rng=rng) for n in (1, 2, 3, 4, 9) * 200
    ]
    for n, delay in zip((1, 2, 3, 4, 9) * 200, delays, strict=True):
        assert 0 <= delay <= min(4.0, 0.5 * 2 ** (n - 1))
    assert max(delays) > 3.0  # the ceiling grows until max_s
    assert all(
        backoff.next_delay(1, initial_s=0.5, max_s=4.0, server_delay_s=2.0, rng=rng) >= 2.0
        for _ in range(100)
    )
    assert backoff.parse_duration("0.250s") == 0.25
    assert backoff.parse_duration("2") is None


# -- deadlines -------------------------------------------------------------------------------


async def test_hang_with_a_one_second_deadline_fails_fast(
    gemini_client: GeminiClient, emulator: EmulatorServer, usage_sink: UsageCollector
) -> None:
    emulator.inject("hang")
    with pytest.raises(DeadlineExceeded):
        await gemini_client.generate(text_request(), labels=LABELS, deadline=time.monotonic() + 1)
    assert emulator.stats().requests == 1
    assert usage_sink.outcomes() == ["DEADLINE_EXCEEDED"]


async def test_hang_without_deadline_is_retried_after_the_attempt_timeout(
    emulator: EmulatorServer, usage_sink: UsageCollector, gemini_settings: GeminiSettings
) -> None:
    # Long enough that a busy machine does not time out the second (answering) attempt too.
    settings = gemini_settings.model_copy(update={"attempt_timeout_s": 2.0})
    emulator.inject("hang")
    async with GeminiClient(settings, usage_sink=usage_sink) as client:
        response = await client.generate(text_request(), labels=LABELS)
    assert response.attempts == 2
    assert usage_sink.outcomes() == ["UPSTREAM_UNAVAILABLE", "ok"]


async def test_a_passed_deadline_sends_nothing(
    gemini_client: GeminiClient, emulator: EmulatorServer
) -> None:
    with pytest.raises(DeadlineExceeded):
        await gemini_client.generate(text_request(), labels=LABELS, deadline=time.monotonic())
    assert emulator.stats().requests == 0


# -- final failures --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error", "needle"),
    [
        (400, UpstreamRejected, "rejected the request"),
        (403, UpstreamCredentialsRefused, "credentials"),
        (404, UpstreamRejected, "model"),
    ],
)
async def test_client_errors_are_not_retried(
    gemini_client: GeminiClient,
    emulator: EmulatorServer,
    usage_sink: UsageCollector,
    code: int,
    error: type[GatewayError],
    needle: str,
) -> None:
    emulator.inject("error", code=code, count=5)
    with pytest.raises(error) as caught:
        await gemini_client.generate(text_request(), labels=LABELS)
    assert needle in caught.value.message
    assert emulator.stats().requests == 1
    assert usage_sink.outcomes() == [error.reason]


async def test_a_real_bad_request_is_rejected_with_googles_reason_in_the_log(
    gemini_client: GeminiClient, emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Image output from a text model: the emulator refuses it as Gemini would. Google's reason
    is the operator's (the log); the caller's message says only that Gemini rejected it."""
    caplog.set_level(logging.WARNING, logger="gateway.gemini")
    request = ModelRequest(model=TEXT_MODEL, parts=[Part(text="x")], response_modalities=("IMAGE",))
    with pytest.raises(UpstreamRejected) as caught:
        await gemini_client.generate(request, labels=LABELS)
    assert caught.value.message == "Gemini rejected the request (400 INVALID_ARGUMENT)"
    assert any("response modalities" in r.getMessage() for r in caplog.records)
    assert emulator.stats().count(outcome="bad_request") == 1


@pytest.mark.parametrize(
    ("kind", "model", "needle"),
    [
        ("prompt_blocked", TEXT_MODEL, "block reason SAFETY"),
        ("safety", TEXT_MODEL, "finish reason SAFETY"),
        ("image_safety", IMAGE_MODEL, "finish reason IMAGE_SAFETY"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_safety_blocks_are_final_and_actionable(
    gemini_client: GeminiClient,
    emulator: EmulatorServer,
    usage_sink: UsageCollector,
    kind: str,
    model: str,
    needle: str,
    stream: bool,
) -> None:
    emulator.inject(kind, count=5)
    request = image_request() if model == IMAGE_MODEL else text_request()
    chunks: list[str] = []

    async def on_text(text: str) -> None:
        chunks.append(text)

    with pytest.raises(SafetyBlocked) as caught:
        await gemini_client.generate(request, labels=LABELS, on_text=on_text if stream else None)
    assert needle in caught.value.message
    assert "change" in caught.value.message.lower()  # tells the caller what to do
    assert emulator.stats().requests == 1
    [record] = usage_sink.records
    assert record.outcome == "SAFETY_BLOCKED" and record.usage.prompt_tokens > 0


async def test_callback_errors_reach_the_caller_untouched(
    gemini_client: GeminiClient, emulator: EmulatorServer
) -> None:
    class Stop(Exception):
        pass

    async def on_text(text: str) -> None:
        raise Stop

    with pytest.raises(Stop):
        await gemini_client.generate(text_request(), labels=LABELS, on_text=on_text)
    assert emulator.stats().requests == 1


# -- secrets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "rate_limited", "count": 9, "retry_delay_s": 0.01},
        {"kind": "error", "code": 400, "count": 1},
        {"kind": "error", "code": 403, "count": 1},
        {"kind": "malformed", "count": 9},
        {"kind": "disconnect", "count": 9},
        {"kind": "prompt_blocked", "count": 1},
    ],
    ids=lambda f: f"{f['kind']}-{f.get('code', '')}",
)
async def test_api_key_never_appears_in_errors_or_logs(
    gemini_client: GeminiClient,
    emulator: EmulatorServer,
    fault: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    emulator.set_knobs(faults=[fault])
    with caplog.at_level(logging.DEBUG), pytest.raises(GatewayError) as caught:
        await gemini_client.generate(text_request(), labels=LABELS)
    _assert_no_secret(caught.value, emulator.api_key)
    assert caplog.records  # the failures were logged ...
    assert all(emulator.api_key not in r.getMessage() for r in caplog.records)  # ... key-free


async def test_wrong_api_key_is_an_operator_problem_without_the_key(
    emulator: EmulatorServer,
    usage_sink: UsageCollector,
    gemini_settings: GeminiSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "AIzaSy-wrong-key-that-must-not-leak"
    settings = gemini_settings.model_copy(update={"api_key": SecretStr(wrong)})
    heard: list[bool] = []
    async with GeminiClient(settings, usage_sink=usage_sink) as client:
        client.add_credentials_listener(heard.append)
        with caplog.at_level(logging.INFO, logger="gateway.gemini"):
            for _ in range(3):
                with pytest.raises(UpstreamCredentialsRefused) as caught:
                    await client.generate(text_request(), labels=LABELS)
    _assert_no_secret(caught.value, wrong)
    # The caller learns nothing of Gemini's answer, only to come back later.
    assert "API key not valid" not in caught.value.message
    assert caught.value.retry_after_s == settings.credentials_check_interval_s
    assert emulator.stats().count(outcome="bad_api_key") == 3
    assert client.credentials_refused and heard == [True]  # one change, heard once
    # The operator is told, once per interval however many calls fail, and what to fix.
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "VIEWBAIT_GEMINI__API_KEY" in errors[0].getMessage()
    assert wrong not in errors[0].getMessage()


async def test_credentials_check_asks_gemini_and_recovers(
    emulator: EmulatorServer, usage_sink: UsageCollector, gemini_settings: GeminiSettings
) -> None:
    heard: list[bool] = []
    async with GeminiClient(gemini_settings, usage_sink=usage_sink) as client:
        client.add_credentials_listener(heard.append)
        assert await client.check_credentials() is True
        emulator.set_api_key("a-rotated-key")  # the gateway's key is revoked upstream
        assert await client.check_credentials() is False
        assert client.credentials_refused
        emulator.set_api_key(gemini_settings.api_key.get_secret_value())  # type: ignore[union-attr]
        # A successful call says the key is accepted again, without waiting for a check.
        await client.generate(text_request(), labels=LABELS)
        assert not client.credentials_refused
    assert heard == [True, False]
    assert emulator.stats().requests == 1  # the checks are not generate calls


async def test_credentials_check_without_an_answer_says_nothing(
    usage_sink: UsageCollector, gemini_settings: GeminiSettings
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once closed
    nowhere = gemini_settings.model_copy(update={"base_url": f"http://127.0.0.1:{port}"})
    async with GeminiClient(nowhere, usage_sink=usage_sink) as client:
        assert await client.check_credentials() is None
        assert not client.credentials_refused


def _assert_no_secret(error: GatewayError, secret: str) -> None:
    assert secret not in str(error) and secret not in repr(error)
    assert all(secret not in v for v in error.metadata.values())
    assert error.__cause__ is None and error.__suppress_context__  # no SDK body in tracebacks


# -- the parse-retry rule --------------------------------------------------------------------


def _parse_score(response: ModelResponse) -> int:
    try:
        return int(json.loads(response.text)["score"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UpstreamBadResponse(f"answer is not the expected JSON: {exc}") from None


async def test_an_answer_that_does_not_parse_is_asked_again_once(
    gemini_client: GeminiClient, emulator: EmulatorServer, usage_sink: UsageCollector
) -> None:
    emulator.inject("invalid_answer")
    parsed = await generate_parsed(
        gemini_client, text_request(response_schema=SCHEMA), _parse_score, labels=LABELS
    )
    assert 0 <= parsed.value <= 100 and parsed.response.text
    assert emulator.stats().count(outcome="invalid_answer") == 1
    assert usage_sink.outcomes() == ["ok", "ok"]  # both answers were billed


async def test_a_second_bad_answer_is_a_clear_failure(
    gemini_client: GeminiClient, emulator: EmulatorServer
) -> None:
    emulator.inject("invalid_answer", count=3)
    with pytest.raises(UpstreamBadResponse, match="twice") as caught:
        await generate_parsed(
            gemini_client, text_request(response_schema=SCHEMA), _parse_score, labels=LABELS
        )
    assert "test_op" in caught.value.message
    assert emulator.stats().requests == 2


async def test_no_second_ask_once_the_deadline_has_passed(
    gemini_client: GeminiClient, emulator: EmulatorServer
) -> None:
    deadline = time.monotonic() + 2

    def parse_after_deadline(response: ModelResponse) -> int:
        while time.monotonic() < deadline:  # a slow parser eats the rest of the budget
            time.sleep(0.05)
        raise UpstreamBadResponse("answer is not the expected JSON")

    with pytest.raises(DeadlineExceeded):
        await generate_parsed(
            gemini_client, text_request(), parse_after_deadline, labels=LABELS, deadline=deadline
        )
    assert emulator.stats().requests == 1


# -- recorded real Gemini responses, through the adapter's own reading path -----------------

RECORDED_TEXT = (
    '{"candidates":[{"content":{"parts":[{"text":"7"}],"role":"model"},"finishReason":"STOP",'
    '"index":0}],"usageMetadata":{"promptTokenCount":1085,"candidatesTokenCount":1,'
    '"totalTokenCount":1149,"promptTokensDetails":[{"modality":"TEXT","tokenCount":1085}],'
    '"thoughtsTokenCount":63},"modelVersion":"gemini-3.6-flash",'
    '"responseId":"g_PgaIL5LL6VkdUPgr3q2A8"}'
)


def _recorded_image_response() -> dict[str, Any]:
    """An image-model answer shaped like Gemini's: caption text, then the inline PNG."""
    import base64

    return {
        "candidates": [
            {
                "content": {
                    "parts": [
                        {"text": "Here is a bold thumbnail with a surprised face."},
                        {
                            "inlineData": {
                                "mimeType": "image/png",
                                "data": base64.b64encode(_png(1344, 768)).decode(),
                            }
                        },
                    ],
                    "role": "model",
                },
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 323,
            "candidatesTokenCount": 1290,
            "totalTokenCount": 1613,
            "promptTokensDetails": [
                {"modality": "TEXT", "tokenCount": 65},
                {"modality": "IMAGE", "tokenCount": 258},
            ],
            "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290}],
        },
        "modelVersion": "gemini-3.1-flash-image-preview",
        "responseId": "Xk3haPmUGI6Z1dkP0b-x4Q0",
    }


def test_recorded_text_response_parses_with_usage_and_cost() -> None:
    prices = PriceBook(GeminiSettings().prices)
    sdk = types.GenerateContentResponse.model_validate(json.loads(RECORDED_TEXT))
    response = response_from_sdk([sdk], model=TEXT_MODEL, prices=prices)
    assert (response.text, response.finish_reason, response.images) == ("7", "STOP", ())
    usage = response.usage
    assert (usage.prompt_tokens, usage.output_tokens, usage.thinking_tokens) == (1085, 1, 63)
    assert (usage.image_output_tokens, usage.total_tokens) == (0, 1149)
    # 1085 input at $0.50/M, 1 output + 63 thinking (billed as output) at $3.00/M
    assert response.cost_usd == pytest.approx((1085 * 0.50 + 64 * 3.00) / 1e6)


def test_recorded_image_response_prices_image_tokens_at_the_image_rate() -> None:
    prices = PriceBook(GeminiSettings().prices)
    sdk = types.GenerateContentResponse.model_validate(_recorded_image_response())
    response = response_from_sdk([sdk], model=IMAGE_MODEL, prices=prices)
    [image] = response.images
    assert Image.open(io.BytesIO(image.data)).size == (1344, 768)
    usage = response.usage
    assert (usage.prompt_tokens, usage.output_tokens, usage.image_output_tokens) == (323, 0, 1290)
    assert response.cost_usd == pytest.approx((323 * 0.50 + 1290 * 60.0) / 1e6)


def test_thinking_has_its_own_rate_when_configured() -> None:
    price = ModelPrice(input=1.0, output=2.0, thinking=5.0, cached_input=0.25)
    sdk = types.GenerateContentResponse.model_validate(json.loads(RECORDED_TEXT))
    usage = response_from_sdk([sdk], model="m", prices=PriceBook({"m": price})).usage
    cached = type(usage)(prompt_tokens=1000, cached_prompt_tokens=400)
    assert cost_usd(usage, price) == pytest.approx((1085 * 1.0 + 1 * 2.0 + 63 * 5.0) / 1e6)
    assert cost_usd(cached, price) == pytest.approx((600 * 1.0 + 400 * 0.25) / 1e6)


def test_proxy_comes_from_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The adapter's HTTP session honours HTTPS_PROXY and NO_PROXY (read at construction)."""
    from gateway.gemini import _proxy_for

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    assert _proxy_for("https://generativelanguage.googleapis.com/") == "http://proxy.internal:3128"
    assert _proxy_for("http://127.0.0.1:8089") is None
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.delenv("HTTP_PROXY")
    assert _proxy_for("https://generativelanguage.googleapis.com/") is None
