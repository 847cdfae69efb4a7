"""Unary RPC throughput and latency: the gateway vs a bare grpc.aio server (the anchor).

The gateway serves AnalyzeVideo for real: auth, validation, the prompt, a google-genai call to
the offline emulator (zero latency, its own process) and the parse. The anchor is a bare grpc.aio
server in its own process answering the same AnalyzeVideoResponse from memory: the physical limit
of this stack. One client process drives both with the same concurrency; the ratio is printed.
Target (until the result cache makes hits cheap): >= 0.5x.

    python bench/rpc.py [--seconds 8] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from grpc import aio
from viewbait.ai.v1 import gateway_service_pb2, gateway_service_pb2_grpc, operations_pb2

SERVICE_TOKEN = "bench-service-token-0123456789"
METADATA = (
    ("authorization", f"Bearer {SERVICE_TOKEN}"),
    ("x-viewbait-user-id", "bench-user"),
    ("x-viewbait-tier", "pro"),
)
REQUEST = operations_pb2.AnalyzeVideoRequest(video_id="dQw4w9WgXcQ", title="Benchmark video")


async def _bare_server(port_file: Path, response_file: Path) -> None:
    """The anchor: GatewayService answering a fixed AnalyzeVideoResponse from memory."""
    response = gateway_service_pb2.AnalyzeVideoResponse.FromString(response_file.read_bytes())

    class Bare(gateway_service_pb2_grpc.GatewayServiceServicer):
        async def AnalyzeVideo(self, request: object, context: object) -> object:
            return response

    server = aio.server()
    gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(Bare(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))
    await server.wait_for_termination()


async def _wait_for(path: Path, process: asyncio.subprocess.Process) -> str:
    for _ in range(600):
        if path.exists() and path.read_text():
            return path.read_text()
        if process.returncode is not None:
            raise RuntimeError(f"{process} exited with {process.returncode}")
        await asyncio.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {path}")


async def _start_emulator() -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.emulator",
        "--port",
        "0",
        "--api-key",
        "bench-key",
        "--log-level",
        "WARNING",
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
    match = re.search(r"listening on (http://\S+)", line)
    if match is None:
        raise RuntimeError(f"the emulator did not start: {line!r}")
    return process, match.group(1)


async def _start_gateway(tmp: Path, emulator_url: str) -> tuple[asyncio.subprocess.Process, int]:
    ready = tmp / "gateway.json"
    env = {
        **os.environ,
        "VIEWBAIT_SERVER__PORT": "0",
        "VIEWBAIT_SERVER__READY_FILE": str(ready),
        "VIEWBAIT_SERVER__LOG_LEVEL": "WARNING",
        "VIEWBAIT_AUTH__SERVICE_TOKEN": SERVICE_TOKEN,
        "VIEWBAIT_GEMINI__API_KEY": "bench-key",
        "VIEWBAIT_GEMINI__BASE_URL": emulator_url,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", env=env
    )
    return process, int(json.loads(await _wait_for(ready, process))["port"])


async def _drive(port: int, seconds: float, concurrency: int) -> tuple[float, list[float]]:
    """(requests per second, latencies in ms) of AnalyzeVideo calls for `seconds`."""
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        for _ in range(20):  # warm up connections and caches
            await stub.AnalyzeVideo(REQUEST, metadata=METADATA)
        latencies: list[float] = []
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                await stub.AnalyzeVideo(REQUEST, metadata=METADATA)
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(latencies) / (time.perf_counter() - started), latencies


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1]


async def main(seconds: float, concurrency: int) -> int:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        processes: list[asyncio.subprocess.Process] = []
        try:
            emulator, url = await _start_emulator()
            processes.append(emulator)
            gateway, gateway_port = await _start_gateway(tmp, url)
            processes.append(gateway)
            async with aio.insecure_channel(f"127.0.0.1:{gateway_port}") as channel:
                stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
                sample = await stub.AnalyzeVideo(REQUEST, metadata=METADATA)
            (tmp / "response.bin").write_bytes(sample.SerializeToString())
            bare = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--bare-server",
                str(tmp / "bare.port"),
                str(tmp / "response.bin"),
            )
            processes.append(bare)
            bare_port = int(await _wait_for(tmp / "bare.port", bare))

            ours_rps, ours_lat = await _drive(gateway_port, seconds, concurrency)
            bare_rps, bare_lat = await _drive(bare_port, seconds, concurrency)
        finally:
            for process in processes:
                if process.returncode is None:
                    process.terminate()
                    await process.wait()
    ratio = ours_rps / bare_rps
    print(f"AnalyzeVideo, concurrency {concurrency}, {seconds:.0f} s each, cores {os.cpu_count()}")
    print(f"{'':24}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, rps, lat in (
        ("gateway (emulator, 0 s)", ours_rps, ours_lat),
        ("bare grpc.aio", bare_rps, bare_lat),
    ):
        print(f"{name:24}{rps:10.0f}{_percentile(lat, 0.5):10.2f}{_percentile(lat, 0.99):10.2f}")
    print(f"throughput ratio {ratio:.2f}x  target >= 0.5x: {'met' if ratio >= 0.5 else 'MISSED'}")
    return 0 if ratio >= 0.5 else 1


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--bare-server":
        asyncio.run(_bare_server(Path(sys.argv[2]), Path(sys.argv[3])))
        raise SystemExit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main(args.seconds, args.concurrency)))
