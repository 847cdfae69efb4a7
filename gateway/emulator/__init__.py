"""The offline Gemini emulator: an HTTP server that speaks the Gemini REST wire format.

It is an emulator, not Gemini. No request leaves the machine and every answer is synthetic
(deterministic per request): text, JSON satisfying the request's response schema, PNG images
for image-output models, `usageMetadata` shaped like Gemini's. It also speaks the Batch API
(`gateway.emulator.batches`): batches of inline requests whose lines get the same answers.
Tests and the gateway's demo mode drive the real google-genai SDK against it over HTTP; knobs
add latency, inject faults, and hold or fail batches.

    async with EmulatorServer() as emulator:
        emulator.inject("rate_limited", count=2, retry_delay_s=0.1)
        ...  # genai.Client(api_key=emulator.api_key, http_options={"base_url": emulator.base_url})
        emulator.stats().count(outcome="rate_limited")  # -> 2

Standalone: `python -m gateway.emulator --port 8089`.
"""

from gateway.emulator.knobs import FaultKind, FaultRule, Knobs
from gateway.emulator.server import EmulatorServer, EmulatorStats

__all__ = ["EmulatorServer", "EmulatorStats", "FaultKind", "FaultRule", "Knobs"]
