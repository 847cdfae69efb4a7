"""Calls per second through the Gemini adapter vs the bare google-genai client (the anchor).

Both drive the same offline Gemini emulator (zero latency, its own process so it does not share
the clients' event loop) with the same request at the same concurrency. Rounds alternate between
the two so drift (CPU frequency, other load) hits both alike. Target: adapter >= 0.9x bare.

Two request shapes:
- `structured` (what the operations send): system instruction + JSON response schema; the bare
  client gets the equivalent `GenerateContentConfig` a hand-written call would pass.
- `plain`: one text part; the bare client passes no config at all. The adapter always passes
  one (to switch off the SDK's hidden function-calling loop and stream continuations and to send
  the deadline as the request timeout), and google-genai's per-call config conversion is not
  free, so this shape shows the price of that floor.

    python bench/adapter.py [--requests 600] [--concurrency 16] [--rounds 3] [--shape both]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from google import genai
from google.genai import types
from pydantic import SecretStr

from gateway.config import GeminiSettings, UsageSettings
from gateway.gemini import GeminiClient
from gateway.model import CallLabels, ModelRequest, Part
from gateway.store.ledger import StoreUsageSink
from gateway.store.memory import MemoryStore

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _rpc_harness import EMULATOR_KEY, Fleet

MODEL = "gemini-3.6-flash"
PROMPT = "Suggest a punchy thumbnail headline for a video about sourdough bread."
SYSTEM = "You are a YouTube thumbnail strategist. Answer in JSON."
SCHEMA = {
    "type": "object",
    "properties": {
        "headline": {"type": "string", "maxLength": 40},
        "emotion": {"type": "string", "enum": ["joy", "awe", "surprise"]},
        "score": {"type": "integer", "minimum": 0, "maximum": 100},
    },
    "required": ["headline", "emotion", "score"],
}


async def run(call: Callable[[], Awaitable[object]], requests: int, concurrency: int) -> float:
    """Seconds taken by `requests` calls, `concurrency` of them in flight at a time."""
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def compare(
    base_url: str, shape: str, requests: int, concurrency: int, rounds: int
) -> tuple[float, float]:
    """(bare, adapter) calls per second for one request shape."""
    bare = genai.Client(
        api_key=EMULATOR_KEY,
        http_options=types.HttpOptions(base_url=base_url, api_version="v1beta"),
    )
    settings = GeminiSettings(api_key=SecretStr(EMULATOR_KEY), base_url=base_url)
    # The embedded gateway's ledger: the adapter's cost includes recording each call (queued,
    # written in the background as the gateway does).
    ledger = StoreUsageSink(MemoryStore(), UsageSettings())
    ledger.start()
    adapter = GeminiClient(settings, usage_sink=ledger)
    labels = CallLabels(operation="bench")
    if shape == "structured":
        request = ModelRequest(
            model=MODEL,
            parts=[Part(text=PROMPT)],
            system_instruction=SYSTEM,
            response_schema=SCHEMA,
        )
        config: types.GenerateContentConfig | None = types.GenerateContentConfig(
            system_instruction=SYSTEM,
            response_mime_type="application/json",
            response_json_schema=SCHEMA,
        )
    else:
        request, config = ModelRequest(model=MODEL, parts=[Part(text=PROMPT)]), None

    async def bare_call() -> object:
        return await bare.aio.models.generate_content(model=MODEL, contents=PROMPT, config=config)

    async def adapter_call() -> object:
        return await adapter.generate(request, labels=labels, deadline=time.monotonic() + 30)

    try:
        for call in (bare_call, adapter_call):  # warm connections, caches and code paths
            await run(call, concurrency * 4, concurrency)
        seconds = {"bare": 0.0, "adapter": 0.0}
        for _ in range(rounds):
            seconds["bare"] += await run(bare_call, requests, concurrency)
            seconds["adapter"] += await run(adapter_call, requests, concurrency)
    finally:
        await adapter.aclose()
        await ledger.aclose()
        await bare.aio.aclose()
        bare.close()
    calls = requests * rounds
    return calls / seconds["bare"], calls / seconds["adapter"]


async def main(requests: int, concurrency: int, rounds: int, shapes: list[str]) -> None:
    async with Fleet(Path(tempfile.gettempdir())) as fleet:
        base_url = await fleet.emulator()
        print(
            f"emulator: zero latency, separate process; concurrency {concurrency}, "
            f"{requests * rounds} calls per client and shape"
        )
        for shape in shapes:
            bare, adapter = await compare(base_url, shape, requests, concurrency, rounds)
            print(
                f"{shape:10s}  bare google-genai {bare:7.1f} calls/s   gateway adapter "
                f"{adapter:7.1f} calls/s   ratio {adapter / bare:5.3f}x  (target >= 0.9x)"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=600, help="calls per round and side")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shape", choices=["structured", "plain", "both"], default="both")
    args = parser.parse_args()
    shapes = ["structured", "plain"] if args.shape == "both" else [args.shape]
    asyncio.run(main(args.requests, args.concurrency, args.rounds, shapes))
