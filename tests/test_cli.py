"""The `viewbait-gateway` process refuses configuration it must not run with, before anything
starts: exit status 2, one line per problem naming the setting that fixes it, no traceback.
`check-config` prints the effective configuration (secrets redacted) and fails the same way.

Each case starts the real console script (or `python -m gateway` where it is not installed) in a
working directory of its own, with only the variables the case sets (as a deployment would).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

#: Generous: a refusal comes before anything starts, but the machine may be busy.
EXIT_TIMEOUT_S = 60
#: A database the refusals must never reach (nothing is started before the checks).
UNREACHED_DATABASE = "postgresql://gateway:secret-db-password@127.0.0.1:1/never"
TOKEN = "a-service-token-of-enough-length"


def gateway_command() -> list[str]:
    """The installed console script, else the module (same entry point)."""
    script = shutil.which("viewbait-gateway")
    return [script] if script else [sys.executable, "-m", "gateway"]


def run(workdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`viewbait-gateway <args>` in `workdir` with only `env` among the gateway's variables."""
    workdir.mkdir(parents=True, exist_ok=True)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("VIEWBAIT_")}
    environment.update(env)
    return subprocess.run(
        [*gateway_command(), *args],
        cwd=workdir,
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT_S,
    )


def assert_refused(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The process refused with exactly one line on stderr, which names every needle."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


#: case -> (environment, what the one line must name)
REFUSALS: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "no key with a database": (
        {"VIEWBAIT_STORE__DATABASE_URL": UNREACHED_DATABASE, "VIEWBAIT_AUTH__SERVICE_TOKEN": TOKEN},
        ("VIEWBAIT_GEMINI__API_KEY", "VIEWBAIT_GEMINI__BACKEND=emulator"),
    ),
    "no key with Redis": (
        {
            "VIEWBAIT_LIMITER__REDIS_URL": "redis://127.0.0.1:1/0",
            "VIEWBAIT_AUTH__SERVICE_TOKEN": TOKEN,
        },
        ("VIEWBAIT_GEMINI__API_KEY",),
    ),
    "no key on a public listener": (
        {"VIEWBAIT_SERVER__HOST": "0.0.0.0", "VIEWBAIT_AUTH__SERVICE_TOKEN": TOKEN},
        ("VIEWBAIT_GEMINI__API_KEY",),
    ),
    "a misspelled nested variable": (
        {"VIEWBAIT_GEMINI__APIKEY": "AIza-something"},
        ("VIEWBAIT_GEMINI__APIKEY", "did you mean VIEWBAIT_GEMINI__API_KEY?"),
    ),
    "a misspelled auth variable": (
        {"VIEWBAIT_AUTH__JWT_ISSUR": "https://example.supabase.co/auth/v1"},
        ("VIEWBAIT_AUTH__JWT_ISSUR", "did you mean VIEWBAIT_AUTH__JWT_ISSUER?"),
    ),
    "a misspelled section": (
        {"VIEWBAIT_LIMITR__REDIS_URL": "redis://127.0.0.1:6379/0"},
        ("did you mean VIEWBAIT_LIMITER__REDIS_URL?",),
    ),
    "a misspelled key inside a policy": (
        {"VIEWBAIT_POLICIES": '{"analyze_video": {"limitz": {}}}'},
        ("policies.analyze_video.limitz in VIEWBAIT_POLICIES", "policies.analyze_video.limits"),
    ),
    "an unknown operation": (
        {"VIEWBAIT_POLICIES": '{"analyse_video": {"ttl_s": 60}}'},
        ("policies.analyse_video", "did you mean policies.analyze_video?"),
    ),
    "an unknown tier in a policy's limits": (
        {"VIEWBAIT_POLICIES": '{"analyze_video": {"limits": {"premium": {}}}}'},
        ("policies.analyze_video.limits.premium",),
    ),
    "anonymous callers on a public listener": (
        {
            "VIEWBAIT_GEMINI__BACKEND": "emulator",
            "VIEWBAIT_SERVER__HOST": "0.0.0.0",
            "VIEWBAIT_AUTH__ALLOW_ANONYMOUS": "true",
        },
        ("VIEWBAIT_AUTH__ALLOW_ANONYMOUS", "VIEWBAIT_SERVER__HOST"),
    ),
    "no authentication on a public listener": (
        {"VIEWBAIT_GEMINI__API_KEY": "AIza-something", "VIEWBAIT_SERVER__HOST": "0.0.0.0"},
        ("VIEWBAIT_AUTH__SERVICE_TOKEN",),
    ),
    "a key and the emulator at once": (
        {"VIEWBAIT_GEMINI__API_KEY": "AIza-something", "VIEWBAIT_GEMINI__BACKEND": "emulator"},
        ("VIEWBAIT_GEMINI__API_KEY", "VIEWBAIT_GEMINI__BACKEND=emulator"),
    ),
    "an invalid value": (
        {"VIEWBAIT_STORE__POOL_MAX_SIZE": "lots"},
        ("VIEWBAIT_STORE__POOL_MAX_SIZE",),
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
@pytest.mark.parametrize("command", ["serve", "check-config"])
def test_refusals_name_the_setting_to_fix(tmp_path: Path, case: str, command: str) -> None:
    env, needles = REFUSALS[case]
    result = run(tmp_path, command, **env)
    line = assert_refused(result, *needles)
    assert "secret-db-password" not in line


def test_an_unknown_key_in_the_config_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[gemini]\napikey = "AIza-something"\n\n[policies.analyze_video]\nttl_s = 5\n'
    )
    result = run(tmp_path, "serve", VIEWBAIT_CONFIG_FILE=str(config))
    assert_refused(result, "gemini.apikey", str(config), "did you mean gemini.api_key?")


def test_a_port_in_use_ends_in_one_line_naming_port_and_setting(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # Local mode otherwise: this would serve if the port were free.
        result = run(tmp_path, "serve", VIEWBAIT_SERVER__PORT=str(port))
    assert_refused(result, f"port {port}", "VIEWBAIT_SERVER__PORT")


def test_check_config_prints_the_effective_configuration_without_secrets(tmp_path: Path) -> None:
    key = "AIzaSy-check-config-secret-key"
    result = run(
        tmp_path,
        "check-config",
        VIEWBAIT_GEMINI_API_KEY=key,
        VIEWBAIT_SERVER__HOST="0.0.0.0",
        VIEWBAIT_AUTH__SERVICE_TOKEN=TOKEN,
        VIEWBAIT_STORE__DATABASE_URL=UNREACHED_DATABASE,
        VIEWBAIT_POLICIES='{"analyze_video": {"ttl_s": 60}}',
    )
    assert result.returncode == 0, result.stderr
    for secret in (key, TOKEN, "secret-db-password"):
        assert secret not in result.stdout + result.stderr
    shown = json.loads(result.stdout)
    assert shown["gemini"]["backend"] == "gemini"
    assert shown["gemini"]["api_key"] == shown["auth"]["service_token"] == "**********"
    assert shown["server"]["host"] == "0.0.0.0"
    # The partial policy changed one field; every operation keeps its policy.
    assert shown["policies"]["analyze_video"]["ttl_s"] == 60
    assert shown["policies"]["analyze_video"]["tiers"] == ["pro"]
    assert len(shown["policies"]) == 5


def test_check_config_in_local_mode_resolves_the_emulator(tmp_path: Path) -> None:
    result = run(tmp_path, "check-config")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["gemini"]["backend"] == "emulator"


def test_check_config_checks_the_worker_mode_too(tmp_path: Path) -> None:
    result = run(tmp_path, "check-config", "--worker", VIEWBAIT_GEMINI__API_KEY="AIza-something")
    assert_refused(result, "VIEWBAIT_STORE__DATABASE_URL")
