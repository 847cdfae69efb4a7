"""The Gemini adapter's Batch API calls against the emulator (real google-genai over HTTP): lines
read by the interactive rules and priced at batch prices, failed lines as domain errors,
find by display name, cancel, and the price book's batch factor."""

from __future__ import annotations

import pytest

from gateway.config import ModelPrice
from gateway.emulator import EmulatorServer
from gateway.errors import UpstreamRejected, UpstreamUnavailable
from gateway.gemini import GeminiClient
from gateway.model import BatchState, CallLabels, ModelRequest, Part, Usage
from gateway.usage import PriceBook
from tests.fixtures.usage import UsageCollector

MODEL = "gemini-3.6-flash"
SCHEMA = {"type": "object", "properties": {"idea": {"type": "string"}}, "required": ["idea"]}


def ask(n: int) -> ModelRequest:
    return ModelRequest(
        model=MODEL,
        parts=(Part(text=f"A thumbnail idea for video number {n}"),),
        system_instruction="Answer in JSON.",
        response_schema=SCHEMA,
    )


async def finished(client: GeminiClient, name: str) -> BatchState:
    """Reads the batch until it ends (the emulator moves one state per read)."""
    for _ in range(5):
        status = await client.get_batch(name, MODEL)
        if status.state.done:
            return status.state
    raise AssertionError(f"batch {name} did not end")


async def test_lines_answer_like_interactive_calls_at_batch_prices(
    gemini_client: GeminiClient, usage_sink: UsageCollector, emulator: EmulatorServer
) -> None:
    created = await gemini_client.create_batch(
        MODEL, [(f"job-{n}", ask(n)) for n in range(2)], display_name="row-1"
    )
    assert (created.state, created.display_name) == (BatchState.PENDING, "row-1")
    await finished(gemini_client, created.name)
    status = await gemini_client.get_batch(created.name, MODEL)

    alone = await gemini_client.generate(ask(1), labels=CallLabels("analyze_video"))
    line = status.lines[1]
    assert [line.key for line in status.lines] == ["job-0", "job-1"]
    assert line.error is None and line.response is not None
    assert line.response.text == alone.text and line.usage == alone.usage
    assert line.cost_usd == pytest.approx(alone.cost_usd * 0.5) and line.cost_usd > 0
    # Batch lines are the batcher's to record: the adapter recorded only the interactive call.
    assert usage_sink.outcomes() == ["ok"]
    assert emulator.stats().count() == 1


async def test_failed_lines_are_domain_errors(
    gemini_client: GeminiClient, emulator: EmulatorServer
) -> None:
    emulator.set_knobs(batch_fail_lines=[0])
    retryable = await gemini_client.create_batch(MODEL, [("a", ask(0))], display_name="r")
    emulator.set_knobs(batch_fail_code=3)
    final = await gemini_client.create_batch(MODEL, [("b", ask(0))], display_name="f")
    for name in (retryable.name, final.name):
        await finished(gemini_client, name)

    (unavailable,) = (await gemini_client.get_batch(retryable.name, MODEL)).lines
    (rejected,) = (await gemini_client.get_batch(final.name, MODEL)).lines
    assert isinstance(unavailable.error, UpstreamUnavailable) and unavailable.error.retryable
    assert isinstance(rejected.error, UpstreamRejected) and not rejected.error.retryable
    assert unavailable.response is None and unavailable.cost_usd == 0
    assert emulator.api_key not in (rejected.error.message or "")


async def test_a_batch_is_found_by_its_display_name_and_cancelled(
    gemini_client: GeminiClient, emulator: EmulatorServer
) -> None:
    emulator.set_knobs(batch_hold=True)  # listing reads batches too: they would end
    for n in range(3):
        await gemini_client.create_batch(MODEL, [("k", ask(n))], display_name=f"row-{n}")

    found = await gemini_client.find_batch("row-2", MODEL)
    assert found is not None and found.display_name == "row-2"
    assert await gemini_client.find_batch("row-9", MODEL) is None

    await gemini_client.cancel_batch(found.name)
    assert (await gemini_client.get_batch(found.name, MODEL)).state is BatchState.CANCELLED
    with pytest.raises(UpstreamRejected, match="does not know batch"):
        await gemini_client.get_batch("batches/unknown", MODEL)


def test_the_price_book_bills_batches_at_its_factor() -> None:
    prices = {MODEL: ModelPrice(input=1.0, output=2.0)}
    usage = Usage(prompt_tokens=1_000_000, output_tokens=500_000, total_tokens=1_500_000)

    assert PriceBook(prices).cost_usd(MODEL, usage) == pytest.approx(2.0)
    assert PriceBook(prices).cost_usd(MODEL, usage, batch=True) == pytest.approx(1.0)
    assert PriceBook(prices, batch_factor=0.25).cost_usd(MODEL, usage, batch=True) == (
        pytest.approx(0.5)
    )
    with pytest.raises(ValueError, match="fraction"):
        PriceBook(prices, batch_factor=1.5)
