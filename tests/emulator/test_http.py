"""The emulator over raw HTTP: Gemini's wire format, key check, errors, SSE, admin routes."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import aiohttp
import pytest
from PIL import Image

from gateway.emulator import EmulatorServer, Knobs
from gateway.operations import analyze_video

TEXT_MODEL = "gemini-3.6-flash"
IMAGE_MODEL = "gemini-3.1-flash-image-preview"
PIXEL_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


async def call(
    emulator: EmulatorServer,
    body: Any,
    *,
    model: str = TEXT_MODEL,
    method: str = "generateContent",
    query: str = "",
    key: str | None = "",
) -> tuple[int, Any]:
    """POSTs `body` (JSON) and returns the status and the decoded JSON (or SSE events)."""
    headers = {"x-goog-api-key": emulator.api_key if key == "" else key} if key is not None else {}
    url = f"{emulator.base_url}/v1beta/models/{model}:{method}{query}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers) as response,
    ):
        raw = await response.read()
        if response.content_type == "text/event-stream":
            events = raw.decode().split("\r\n\r\n")
            assert events[-1] == ""
            return response.status, [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
        return response.status, json.loads(raw)


def user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": list(parts)}]}


async def test_text_answer_has_gemini_shape_and_usage(emulator: EmulatorServer) -> None:
    status, body = await call(emulator, user({"text": "Name three thumbnail colours."}))
    assert status == 200
    candidate = body["candidates"][0]
    assert candidate["finishReason"] == "STOP"
    assert candidate["content"]["role"] == "model"
    assert "offline Gemini emulator" in candidate["content"]["parts"][0]["text"]
    usage = body["usageMetadata"]
    assert usage["promptTokensDetails"] == [{"modality": "TEXT", "tokenCount": 8}]
    assert usage["thoughtsTokenCount"] > 0
    assert usage["totalTokenCount"] == (
        usage["promptTokenCount"] + usage["candidatesTokenCount"] + usage["thoughtsTokenCount"]
    )
    assert body["modelVersion"] == TEXT_MODEL and body["responseId"]


async def test_answers_are_deterministic_per_request(emulator: EmulatorServer) -> None:
    _, first = await call(emulator, user({"text": "same"}))
    _, again = await call(emulator, user({"text": "same"}))
    _, other = await call(emulator, user({"text": "different"}))
    assert first == again
    assert other["candidates"] != first["candidates"]


@pytest.mark.parametrize(
    "inline",
    [
        {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(PIXEL_PNG).decode()}},
        {"inline_data": {"mime_type": "image/png", "data": base64.b64encode(PIXEL_PNG).decode()}},
        # What google-genai sends: camelCase key, snake_case inside, URL-safe base64.
        {
            "inlineData": {
                "mime_type": "image/png",
                "data": base64.urlsafe_b64encode(PIXEL_PNG).decode().rstrip("="),
            }
        },
    ],
    ids=["camel-standard", "snake-standard", "mixed-urlsafe-unpadded"],
)
async def test_inline_images_in_every_spelling(
    emulator: EmulatorServer, inline: dict[str, Any]
) -> None:
    status, body = await call(emulator, user({"text": "rate"}, inline))
    assert status == 200
    details = body["usageMetadata"]["promptTokensDetails"]
    assert {"modality": "IMAGE", "tokenCount": 258} in details


async def test_youtube_file_data_counts_as_video(emulator: EmulatorServer) -> None:
    url = "https://www.youtube.com/watch?v=dQw4w9WgXcQ"
    status, body = await call(emulator, user({"fileData": {"fileUri": url}}, {"text": "analyze"}))
    assert status == 200
    modalities = {d["modality"] for d in body["usageMetadata"]["promptTokensDetails"]}
    assert modalities == {"VIDEO", "AUDIO", "TEXT"}


async def test_schema_answer_satisfies_the_schema(emulator: EmulatorServer) -> None:
    schema = {
        "type": "object",
        "properties": {"score": {"type": "integer", "minimum": 0, "maximum": 100}},
        "required": ["score"],
    }
    for config in (
        {"responseMimeType": "application/json", "responseJsonSchema": schema},
        {"response_mime_type": "application/json", "response_schema": schema},
    ):
        status, body = await call(emulator, {**user({"text": "score"}), "generationConfig": config})
        assert status == 200
        answer = json.loads(body["candidates"][0]["content"]["parts"][0]["text"])
        assert 0 <= answer["score"] <= 100


async def test_image_model_returns_a_png_of_the_aspect_ratio(emulator: EmulatorServer) -> None:
    config = {"responseModalities": ["TEXT", "IMAGE"], "imageConfig": {"aspectRatio": "9:16"}}
    status, body = await call(
        emulator, {**user({"text": "a cat"}), "generationConfig": config}, model=IMAGE_MODEL
    )
    assert status == 200
    parts = body["candidates"][0]["content"]["parts"]
    assert "text" in parts[0]
    png = base64.b64decode(parts[1]["inlineData"]["data"])
    assert parts[1]["inlineData"]["mimeType"] == "image/png"
    assert Image.open(io.BytesIO(png)).size == (768, 1344)
    usage = body["usageMetadata"]
    assert {"modality": "IMAGE", "tokenCount": 1290} in usage["candidatesTokensDetails"]
    assert "thoughtsTokenCount" not in usage


@pytest.mark.parametrize(
    ("body", "model", "message"),
    [
        ({"contents": []}, TEXT_MODEL, "contents is not specified"),
        (user({"inlineData": {"mimeType": "image/png", "data": "a"}}), TEXT_MODEL, "Base64"),
        (user({"text": "x", "inlineData": {}}), TEXT_MODEL, "oneof"),
        (
            {**user({"text": "x"}), "generationConfig": {"responseJsonSchema": {"type": "object"}}},
            TEXT_MODEL,
            "application/json",
        ),
        (
            {**user({"text": "x"}), "generationConfig": {"responseModalities": ["IMAGE"]}},
            TEXT_MODEL,
            "response modalities",
        ),
        (
            {**user({"text": "x"}), "generationConfig": {"imageConfig": {"aspectRatio": "7:5"}}},
            IMAGE_MODEL,
            "aspect ratio",
        ),
    ],
    ids=[
        "no-contents",
        "bad-base64",
        "two-data-fields",
        "schema-without-json",
        "image-on-text",
        "bad-aspect",
    ],
)
async def test_bad_requests_get_google_400s(
    emulator: EmulatorServer, body: dict[str, Any], model: str, message: str
) -> None:
    status, error = await call(emulator, body, model=model)
    assert status == 400
    assert error["error"]["code"] == 400 and error["error"]["status"] == "INVALID_ARGUMENT"
    assert message in error["error"]["message"]
    assert emulator.stats().count(outcome="bad_request") == 1


async def test_api_key_is_checked_like_google_does(emulator: EmulatorServer) -> None:
    status, missing = await call(emulator, user({"text": "x"}), key=None)
    assert (status, missing["error"]["status"]) == (403, "PERMISSION_DENIED")
    status, wrong = await call(emulator, user({"text": "x"}), key="not-the-key")
    assert (status, wrong["error"]["status"]) == (400, "INVALID_ARGUMENT")
    assert wrong["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    status, _ = await call(
        emulator, user({"text": "x"}), key=None, query=f"?key={emulator.api_key}"
    )
    assert status == 200
    assert emulator.stats().count(outcome="bad_api_key") == 2


async def test_unknown_model_and_method_are_404(emulator: EmulatorServer) -> None:
    status, error = await call(emulator, user({"text": "x"}), model="palm-2")
    assert (status, error["error"]["status"]) == (404, "NOT_FOUND")
    status, _ = await call(emulator, user({"text": "x"}), method="countTokens")
    assert status == 404


async def test_sse_stream_splits_text_and_ends_with_usage(emulator: EmulatorServer) -> None:
    emulator.set_knobs(stream_chunk_chars=40)
    status, events = await call(
        emulator, user({"text": "stream"}), method="streamGenerateContent", query="?alt=sse"
    )
    assert status == 200 and len(events) > 2
    texts = [e["candidates"][0]["content"]["parts"][0]["text"] for e in events]
    _, whole = await call(emulator, user({"text": "stream"}))
    assert "".join(texts) == whole["candidates"][0]["content"]["parts"][0]["text"]
    assert all("finishReason" not in e["candidates"][0] for e in events[:-1])
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"
    assert events[-1]["usageMetadata"] == whole["usageMetadata"]


async def test_streamed_chunks_hold_about_the_configured_characters(
    emulator: EmulatorServer,
) -> None:
    # A structured answer, as the operations ask for: long enough for several chunks.
    body = {
        **user({"text": "Analyse this video."}),
        "generationConfig": {
            "responseMimeType": "application/json",
            "responseJsonSchema": analyze_video.RESPONSE_SCHEMA,
        },
    }
    _, whole = await call(emulator, body)
    text = whole["candidates"][0]["content"]["parts"][0]["text"]
    assert len(text) > 2 * 300, len(text)
    for chars in (300, 120):
        emulator.set_knobs(stream_chunk_chars=chars)
        _, events = await call(emulator, body, method="streamGenerateContent", query="?alt=sse")
        pieces = [e["candidates"][0]["content"]["parts"][0]["text"] for e in events]
        assert "".join(pieces) == text
        assert len(pieces) >= len(text) // chars, "no piece much larger than asked"
        # Cut at a space: each piece but the last fills most of its share.
        assert all(chars // 2 < len(p) <= chars for p in pieces[:-1]), [len(p) for p in pieces]


async def test_stream_without_sse_is_one_json_array(emulator: EmulatorServer) -> None:
    emulator.set_knobs(stream_chunk_chars=40)
    status, events = await call(emulator, user({"text": "stream"}), method="streamGenerateContent")
    assert status == 200 and isinstance(events, list) and len(events) > 1


async def test_rate_limit_fault_carries_retry_info(emulator: EmulatorServer) -> None:
    emulator.inject("rate_limited", count=1, retry_delay_s=1.5)
    status, error = await call(emulator, user({"text": "x"}))
    assert (status, error["error"]["status"]) == (429, "RESOURCE_EXHAUSTED")
    retry = [d for d in error["error"]["details"] if d["@type"].endswith("google.rpc.RetryInfo")]
    assert retry == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}]
    status, _ = await call(emulator, user({"text": "x"}))
    assert status == 200  # count=1: spent


async def test_fault_rules_filter_by_model_and_stream(emulator: EmulatorServer) -> None:
    emulator.inject("unavailable", count=5, model=IMAGE_MODEL)
    emulator.inject("internal", count=5, stream=True)
    assert (await call(emulator, user({"text": "x"})))[0] == 200
    assert (await call(emulator, user({"text": "x"}), model=IMAGE_MODEL))[0] == 503
    stream = await call(
        emulator, user({"text": "x"}), method="streamGenerateContent", query="?alt=sse"
    )
    assert stream[0] == 500
    stats = emulator.stats()
    assert stats.count(TEXT_MODEL, "internal") == 1
    assert stats.count(IMAGE_MODEL, "unavailable") == 1
    assert stats.count(outcome="ok") == 1


async def test_rate_faults_are_reproducible_from_the_seed(emulator: EmulatorServer) -> None:
    async def run() -> list[int]:
        emulator.reset()
        emulator.set_knobs(seed=42, faults=[{"kind": "unavailable", "rate": 0.5}])
        return [(await call(emulator, user({"text": str(i)})))[0] for i in range(12)]

    first = await run()
    assert set(first) == {200, 503}
    assert await run() == first


async def test_midstream_fault_sends_an_error_event_after_a_chunk(emulator: EmulatorServer) -> None:
    emulator.inject("midstream")
    status, events = await call(
        emulator, user({"text": "x"}), method="streamGenerateContent", query="?alt=sse"
    )
    assert status == 200
    assert "candidates" in events[0]
    assert events[-1]["error"]["code"] == 503


async def test_safety_faults(emulator: EmulatorServer) -> None:
    emulator.inject("prompt_blocked", block_reason="PROHIBITED_CONTENT")
    emulator.inject("image_safety")
    _, blocked = await call(emulator, user({"text": "x"}))
    assert blocked["promptFeedback"]["blockReason"] == "PROHIBITED_CONTENT"
    assert "candidates" not in blocked
    _, refused = await call(emulator, user({"text": "x"}))
    assert refused["candidates"][0]["finishReason"] == "IMAGE_SAFETY"
    assert "content" not in refused["candidates"][0]


async def test_a_scripted_answer_is_sent_as_the_answer_text(emulator: EmulatorServer) -> None:
    scripted = json.dumps({"regions": [{"weight": 1.9}]})
    emulator.inject("scripted_answer", text=scripted)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    config = {"responseMimeType": "application/json", "responseJsonSchema": schema}
    body = {**user({"text": "x"}), "generationConfig": config}
    status, answer = await call(emulator, body)
    assert status == 200, answer
    assert answer["candidates"][0]["content"]["parts"] == [{"text": scripted}]
    assert answer["candidates"][0]["finishReason"] == "STOP"
    _, events = await call(emulator, body, method="streamGenerateContent", query="?alt=sse")
    streamed = "".join(p["text"] for e in events for p in e["candidates"][0]["content"]["parts"])
    assert json.loads(streamed) != json.loads(scripted), "the rule was spent: synthetic again"
    assert emulator.stats().count(outcome="scripted_answer") == 1
    with pytest.raises(ValueError, match="text"):
        emulator.inject("scripted_answer")
    with pytest.raises(ValueError, match="text"):
        emulator.inject("invalid_answer", text="{}")


async def test_an_error_fault_carries_the_message_asked_for(emulator: EmulatorServer) -> None:
    emulator.inject("error", code=400, message="backend /srv/x failed")
    status, body = await call(emulator, user({"text": "x"}))
    assert status == 400
    assert body["error"]["message"] == "backend /srv/x failed"
    assert body["error"]["status"] == "INVALID_ARGUMENT"
    with pytest.raises(ValueError, match="message"):
        emulator.inject("unavailable", message="only with kind error")


async def test_admin_routes_drive_knobs_and_counters(emulator: EmulatorServer) -> None:
    admin = f"{emulator.base_url}/_emulator"
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{admin}/knobs", json={"latency_s": 0.01}) as response:
            assert response.status == 200
            assert (await response.json())["latency_s"] == 0.01
        async with session.post(f"{admin}/knobs", json={"latency_s": -1}) as response:
            assert response.status == 400
        rule = {"kind": "error", "code": 404, "count": 1}
        async with session.post(f"{admin}/faults", json=rule) as response:
            assert (await response.json())["faults"][0]["code"] == 404
        assert (await call(emulator, user({"text": "x"})))[0] == 404
        async with session.get(f"{admin}/stats") as response:
            stats = await response.json()
        assert stats["by_model"] == {TEXT_MODEL: 1}
        assert stats["by_outcome"] == {TEXT_MODEL: {"error": 1}}
        assert stats["recent"][0]["model"] == TEXT_MODEL
        async with session.post(f"{admin}/reset") as response:
            assert (await response.json())["latency_s"] == 0.0
    assert emulator.stats().requests == 0


async def test_knobs_given_at_start_come_back_on_reset() -> None:
    knobs = Knobs.model_validate({"faults": [{"kind": "unavailable", "count": 1}]})
    async with EmulatorServer(knobs=knobs, latency_s=0.0) as emulator:
        assert (await call(emulator, user({"text": "x"})))[0] == 503
        assert (await call(emulator, user({"text": "x"})))[0] == 200
        emulator.reset()
        assert (await call(emulator, user({"text": "x"})))[0] == 503
