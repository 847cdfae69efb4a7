"""Runs the offline Gemini emulator (not Gemini) on its own: `python -m gateway.emulator`.

Prints one line `offline Gemini emulator (not Gemini) listening on http://HOST:PORT` to stdout
once it accepts connections (scripts read the port from it), then serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys

from gateway.emulator.knobs import Knobs
from gateway.emulator.server import EmulatorServer


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.emulator",
        description="Offline Gemini emulator (speaks the Gemini REST wire format; not Gemini).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="TCP port (default 0: any free port)")
    parser.add_argument("--api-key", default="emulator-key", help="the API key to accept")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each answer")
    parser.add_argument("--jitter", type=float, default=0.0, help="extra uniform latency, seconds")
    parser.add_argument(
        "--knobs", default=None, help="full knobs as JSON, e.g. '{\"faults\": [...]}'"
    )
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    knobs = Knobs.model_validate(json.loads(args.knobs)) if args.knobs else Knobs()
    knobs = knobs.model_copy(update={"latency_s": args.latency, "latency_jitter_s": args.jitter})
    emulator = EmulatorServer(host=args.host, port=args.port, api_key=args.api_key, knobs=knobs)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with emulator:
        print(f"offline Gemini emulator (not Gemini) listening on {emulator.base_url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
