"""What reloadable certificates cost a new connection: the listener's dynamic credentials
(`gateway.tls.CertificateWatcher`: a `stat` of each file before every handshake) vs grpc's
static `grpc.ssl_server_credentials` with the same certificate and key, and (to tell grpc's
mechanism from ours) grpc's dynamic credentials with a callback that does nothing.

The servers are grpc.aio servers serving only the health service, each in a process of its own,
started from this file with the same options and the same PEM files (a CA and an ECDSA P-256
server certificate made by `gateway.testing.certificates`), on loopback. One client, in this
process, opens `--connections` fresh channels one after another (each its own connection:
`grpc.use_local_subchannel_pool`), makes one Health/Check on each and closes it; the wall time per
connection (TCP + TLS handshake + one RPC) is measured, the sides' order rotating over `--rounds`
rounds. The ratio of the medians and the median of the per-round ratios are printed, as the load
of a shared machine drifts.

Also printed: the cost of one `fetch` with unchanged files, called directly (what every handshake
adds on the server), beside the median handshake.

    python bench/tls_handshake.py [--connections 200] [--rounds 12]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.config import TlsSettings
from gateway.testing.certificates import write_certificates
from gateway.tls import CertificateWatcher

#: static: the anchor; callback: grpc's dynamic credentials with a callback that does nothing
#: (what the mechanism itself costs); dynamic: ours.
SIDES = ("static", "callback", "dynamic")


async def serve(side: str, directory: Path) -> None:
    """One side's server: prints its port, serves until stdin closes."""
    tls = TlsSettings(
        cert_file=str(directory / "server.pem"), key_file=str(directory / "server.key")
    )
    if side == "dynamic":
        credentials = CertificateWatcher(tls).credentials()
    elif side == "callback":
        key, chain = Path(str(tls.key_file)).read_bytes(), Path(str(tls.cert_file)).read_bytes()
        credentials = grpc.dynamic_ssl_server_credentials(
            grpc.ssl_server_certificate_configuration([(key, chain)]),
            lambda: None,  # type: ignore[arg-type,return-value]
        )
    else:
        credentials = grpc.ssl_server_credentials(
            [(Path(str(tls.key_file)).read_bytes(), Path(str(tls.cert_file)).read_bytes())]
        )
    server = aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(None)


async def connect_many(port: int, ca: bytes, connections: int) -> float:
    """Seconds per fresh connection (handshake and one Health/Check)."""
    credentials = grpc.ssl_channel_credentials(ca)
    options = [("grpc.use_local_subchannel_pool", 1)]
    start = time.perf_counter()
    for _ in range(connections):
        async with aio.secure_channel(f"127.0.0.1:{port}", credentials, options) as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=30
            )
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    return (time.perf_counter() - start) / connections


def fetch_cost(directory: Path, calls: int = 20_000) -> float:
    """Seconds per `fetch` with unchanged files."""
    watcher = CertificateWatcher(
        TlsSettings(cert_file=str(directory / "server.pem"), key_file=str(directory / "server.key"))
    )
    start = time.perf_counter()
    for _ in range(calls):
        assert watcher.fetch() is None
    return (time.perf_counter() - start) / calls


@contextlib.contextmanager
def servers(directory: Path) -> Iterator[dict[str, int]]:
    """Both sides' servers, in processes of their own; yields their ports."""
    processes = {
        side: subprocess.Popen(
            [sys.executable, __file__, "--serve", side, str(directory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for side in SIDES
    }
    try:
        ports = {}
        for side, process in processes.items():
            assert process.stdout is not None
            ports[side] = int(process.stdout.readline())
        yield ports
    finally:
        for process in processes.values():
            assert process.stdin is not None
            process.stdin.close()
            process.wait(timeout=30)


async def measure(args: argparse.Namespace, ca: bytes, ports: dict[str, int]) -> list[float]:
    """Times the sides in rotating order, prints the medians and the ratios; returns the
    milliseconds per connection of the anchor and of ours."""
    for side in SIDES:  # warm up
        await connect_many(ports[side], ca, 10)
    per_side: dict[str, list[float]] = {side: [] for side in SIDES}
    for round_ in range(args.rounds):
        order = SIDES[round_ % len(SIDES) :] + SIDES[: round_ % len(SIDES)]
        for side in order:
            per_side[side].append(await connect_many(ports[side], ca, args.connections))
    ms = {side: statistics.median(times) * 1000 for side, times in per_side.items()}
    print(
        f"{args.connections} fresh connections x {args.rounds} rounds a side, load average "
        f"{os.getloadavg()[0]:.2f}"
    )
    for side, name in (
        ("static", "static credentials (anchor)"),
        ("callback", "dynamic, callback doing nothing"),
        ("dynamic", "reloadable (CertificateWatcher)"),
    ):
        ratios = [a / b for a, b in zip(per_side[side], per_side["static"], strict=True)]
        print(
            f"{name:<32} {ms[side]:7.3f} ms per connection (median); ratio to the anchor "
            f"{ms[side] / ms['static']:.3f} of the medians, "
            f"{statistics.median(ratios):.3f} median of the rounds"
        )
    static_ms, dynamic_ms = ms["static"], ms["dynamic"]
    return [static_ms, dynamic_ms]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--serve", nargs=2, metavar=("SIDE", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve[0], Path(args.serve[1])))
        return
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        write_certificates(directory)
        with servers(directory) as ports:
            static_ms, _ = asyncio.run(measure(args, (directory / "ca.pem").read_bytes(), ports))
        fetch_us = fetch_cost(directory) * 1e6
    print(
        f"one fetch with unchanged files: {fetch_us:.1f} us "
        f"({fetch_us / (static_ms * 1000) * 100:.2f}% of a connection)"
    )


if __name__ == "__main__":
    main()
