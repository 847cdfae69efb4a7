"""How the operator's configuration is read (`gateway.settings_sources` through
`gateway.config.load_settings`): unknown names refused with the closest valid one, partial
tables merged over the defaults, and the deployment checks (`deployment_problems`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from gateway.config import (
    AuthSettings,
    Backend,
    ConfigError,
    GeminiSettings,
    LimiterSettings,
    ServerSettings,
    Settings,
    StoreSettings,
    Tier,
    deployment_problems,
    gemini_backend,
    load_settings,
)
from gateway.testing.certificates import write_certificates


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The environment with none of the gateway's variables set."""
    import os

    for name in list(os.environ):
        if name.startswith("VIEWBAIT_"):
            monkeypatch.delenv(name)
    return monkeypatch


def refusal(**variables: str) -> list[str]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in variables.items():
            patch.setenv(name, value)
        with pytest.raises(ConfigError) as caught:
            load_settings()
    return caught.value.problems


def test_every_problem_is_reported_at_once(env: pytest.MonkeyPatch) -> None:
    problems = refusal(VIEWBAIT_GEMINI__APIKEY="x", VIEWBAIT_AUTH__JWT_ISSUR="y")
    assert problems == [
        "unknown setting VIEWBAIT_AUTH__JWT_ISSUR; did you mean VIEWBAIT_AUTH__JWT_ISSUER?",
        "unknown setting VIEWBAIT_GEMINI__APIKEY; did you mean VIEWBAIT_GEMINI__API_KEY?",
    ]


def test_a_name_without_a_close_match_is_refused_plainly(env: pytest.MonkeyPatch) -> None:
    assert refusal(VIEWBAIT_QQQQQQ="1") == ["unknown setting VIEWBAIT_QQQQQQ"]


def test_documented_names_are_accepted(env: pytest.MonkeyPatch) -> None:
    env.setenv("VIEWBAIT_GEMINI_API_KEY", "alias-key")
    env.setenv("VIEWBAIT_STORE__SCHEMA", "custom")
    env.setenv("VIEWBAIT_gemini__text_model", "gemini-lower")  # names are case-insensitive
    settings = load_settings()
    assert settings.gemini.api_key == SecretStr("alias-key")
    assert settings.store.schema_name == "custom"
    assert settings.gemini.text_model == "gemini-lower"


def test_a_partial_policy_merges_field_by_field(env: pytest.MonkeyPatch) -> None:
    defaults = Settings()
    env.setenv(
        "VIEWBAIT_POLICIES",
        '{"analyze_video": {"ttl_s": 60, "limits": {"pro": {"admission": {"rate": 7}}}}}',
    )
    env.setenv("VIEWBAIT_POLICIES__CHECK_CHANNEL_CONSISTENCY__TIERS", '["pro"]')
    settings = load_settings()

    video = settings.policies["analyze_video"]
    assert video.ttl_s == 60
    assert video.tiers == defaults.policies["analyze_video"].tiers
    pro = video.limits[Tier.PRO]
    default_pro = defaults.policies["analyze_video"].limits[Tier.PRO]
    assert pro.admission is not None and default_pro.admission is not None
    assert pro.admission.rate == 7 and pro.admission.burst == default_pro.admission.burst
    assert pro.upstream == default_pro.upstream
    assert video.limits[Tier.FREE] == defaults.policies["analyze_video"].limits[Tier.FREE]
    assert settings.policies["check_channel_consistency"].tiers == [Tier.PRO]
    untouched = set(defaults.policies) - {"analyze_video", "check_channel_consistency"}
    assert {name: settings.policies[name] for name in untouched} == {
        name: defaults.policies[name] for name in untouched
    }


def test_the_file_and_the_environment_merge_over_the_defaults(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[gemini]\ntext_model = 'gemini-from-file'\n\n"
        "[gemini.prices.gemini-custom]\ninput = 1.0\noutput = 2.0\n\n"
        "[policies.analyze_video]\nttl_s = 10\n"
    )
    env.setenv("VIEWBAIT_CONFIG_FILE", str(config))
    env.setenv("VIEWBAIT_POLICIES", '{"analyze_video": {"scope": "global"}}')
    env.setenv("VIEWBAIT_LIMITER__MODELS", '{"gemini-3.6-flash": null}')
    env.setenv("VIEWBAIT_JOBS__RUNNING_CAPS", '{"pro": 20, "free": null}')
    settings = load_settings()
    defaults = Settings()

    assert settings.gemini.text_model == "gemini-from-file"
    assert set(settings.gemini.prices) == {*defaults.gemini.prices, "gemini-custom"}
    video = settings.policies["analyze_video"]
    assert (video.ttl_s, video.scope.value) == (10, "global")  # file and environment both
    # null removes a default entry: this model falls back to the default model limit.
    assert "gemini-3.6-flash" not in settings.limiter.models
    assert settings.limiter.model_limit("gemini-3.6-flash") == settings.limiter.model_default
    assert settings.jobs.running_caps == {Tier.STARTER: 2, Tier.ADVANCED: 4, Tier.PRO: 20}


def test_read_limits_and_concurrency_caps_merge_over_the_defaults(
    env: pytest.MonkeyPatch,
) -> None:
    env.setenv(
        "VIEWBAIT_READ_LIMITS",
        '{"free": {"get_job": {"rate": 7}, "cancel_job": null}, "pro": null}',
    )
    env.setenv("VIEWBAIT_CONCURRENCY__USER_RPCS", '{"free": 3, "pro": null}')
    env.setenv("VIEWBAIT_CONCURRENCY__MAX_RPCS_IN_FLIGHT", "50")
    settings = load_settings()
    defaults = Settings()

    free, default_free = settings.read_limits[Tier.FREE], defaults.read_limits[Tier.FREE]
    assert free.get_job is not None and default_free.get_job is not None
    assert (free.get_job.rate, free.get_job.burst) == (7, default_free.get_job.burst)
    assert free.cancel_job is None  # lifted
    assert free.list_jobs == default_free.list_jobs
    assert Tier.PRO not in settings.read_limits  # the tier's reads are not limited
    assert settings.read_limits[Tier.STARTER] == defaults.read_limits[Tier.STARTER]
    caps = settings.concurrency
    assert caps.max_rpcs_in_flight == 50
    assert caps.user_rpcs == {Tier.FREE: 3, Tier.STARTER: 16, Tier.ADVANCED: 32}
    assert caps.user_streams == defaults.concurrency.user_streams


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("VIEWBAIT_POLICIES", '{"analyze_video": null}', "policies.analyze_video"),
        ("VIEWBAIT_POLICIES", '{"analyze_video": {"limitz": {}}}', "policies.analyze_video.limits"),
        ("VIEWBAIT_GEMINI__PRICES", '{"m": {"inptu": 1}}', "gemini.prices.m.input"),
        (
            "VIEWBAIT_LIMITER__MODELS",
            '{"m": {"rate": 1, "period": 1}}',
            "limiter.models.m.period_s",
        ),
        ("VIEWBAIT_JOBS__RUNNING_CAPS", '{"gold": 1}', "jobs.running_caps"),
        ("VIEWBAIT_READ_LIMITS", '{"pro": {"get_jobs": null}}', "read_limits.pro.get_job"),
        ("VIEWBAIT_CONCURRENCY__USER_STREAMS", '{"pro": 0}', "USER_STREAMS__PRO"),
        ("VIEWBAIT_POLICIES", "{not json", "VIEWBAIT_POLICIES is not valid JSON"),
    ],
)
def test_tables_refuse_unknown_keys(
    env: pytest.MonkeyPatch, variable: str, value: str, needle: str
) -> None:
    (problem,) = refusal(**{variable: value})
    assert needle in problem


def test_keyword_arguments_are_taken_as_given(env: pytest.MonkeyPatch) -> None:
    """Code that builds settings (tests, embedders) gets exactly what it passes."""
    settings = Settings(limiter=LimiterSettings(models={}))
    assert settings.limiter.models == {}


def local() -> Settings:
    return Settings(server=ServerSettings(host="127.0.0.1"))


def test_the_emulator_runs_only_in_local_mode_or_when_asked_for(env: pytest.MonkeyPatch) -> None:
    assert gemini_backend(local()) is Backend.EMULATOR
    assert deployment_problems(local()) == []
    with_db = local().model_copy(
        update={"store": StoreSettings(database_url=SecretStr("postgresql://db/x"))}
    )
    with_redis = local().model_copy(
        update={"limiter": LimiterSettings(redis_url=SecretStr("redis://r:6379/0"))}
    )
    public = Settings(server=ServerSettings(host="0.0.0.0"))
    token = AuthSettings(service_token=SecretStr("a-long-enough-service-token"))
    for settings in (with_db, with_redis, public):
        settings = settings.model_copy(update={"auth": token})
        assert gemini_backend(settings) is None
        (problem,) = deployment_problems(settings)
        assert "VIEWBAIT_GEMINI__API_KEY" in problem
        asked = settings.model_copy(update={"gemini": GeminiSettings(backend=Backend.EMULATOR)})
        assert gemini_backend(asked) is Backend.EMULATOR and deployment_problems(asked) == []
    keyed = public.model_copy(
        update={"gemini": GeminiSettings(api_key=SecretStr("k")), "auth": token}
    )
    assert gemini_backend(keyed) is Backend.GEMINI and deployment_problems(keyed) == []


def test_an_upstream_burst_below_a_requests_calls_is_refused(env: pytest.MonkeyPatch) -> None:
    # A run's calls are charged together: four variations could never pass a burst of three.
    env.setenv("VIEWBAIT_POLICIES__GENERATE_THUMBNAIL__LIMITS__FREE__UPSTREAM__BURST", "3")
    (problem,) = deployment_problems(load_settings())
    assert problem.startswith(
        "VIEWBAIT_POLICIES__GENERATE_THUMBNAIL__LIMITS__FREE__UPSTREAM__BURST is 3, below the 4"
    )
    # Fewer variations allowed per request: the same burst is fine.
    env.setenv("VIEWBAIT_BOUNDS__MAX_VARIATIONS", "3")
    assert deployment_problems(load_settings()) == []


def test_an_empty_table_is_refused_as_it_would_change_nothing(env: pytest.MonkeyPatch) -> None:
    # Meant as "no caps", `{}` would keep every default cap: refused, saying what to write.
    (problem,) = refusal(VIEWBAIT_JOBS__RUNNING_CAPS="{}")
    assert "VIEWBAIT_JOBS__RUNNING_CAPS is empty, which changes nothing" in problem
    assert "to null" in problem
    (problem,) = refusal(VIEWBAIT_POLICIES='{"analyze_video": {"limits": {}}}')
    assert "policies.analyze_video.limits" in problem and "is empty" in problem
    # Lifting by name works.
    env.setenv("VIEWBAIT_JOBS__RUNNING_CAPS", '{"free": null, "pro": null}')
    assert set(load_settings().jobs.running_caps) == {Tier.STARTER, Tier.ADVANCED}


def test_tls_is_off_by_default(env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert not settings.tls.enabled and not settings.tls.mutual


def test_tls_files_are_read_from_the_environment(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    files = write_certificates(tmp_path)
    env.setenv("VIEWBAIT_TLS__CERT_FILE", str(files.server_cert))
    env.setenv("VIEWBAIT_TLS__KEY_FILE", str(files.server_key))
    env.setenv("VIEWBAIT_TLS__CLIENT_CA_FILE", str(files.ca))
    settings = load_settings()
    assert settings.tls.enabled and settings.tls.mutual
    assert deployment_problems(settings) == []


def test_a_tls_certificate_without_its_key_is_refused(env: pytest.MonkeyPatch) -> None:
    (problem,) = refusal(VIEWBAIT_TLS__CERT_FILE="/etc/gateway/tls.crt")
    assert "set VIEWBAIT_TLS__KEY_FILE too" in problem
    (problem,) = refusal(VIEWBAIT_TLS__KEY_FILE="/etc/gateway/tls.key")
    assert "set VIEWBAIT_TLS__CERT_FILE too" in problem


def test_a_client_ca_without_tls_is_refused(env: pytest.MonkeyPatch) -> None:
    (problem,) = refusal(VIEWBAIT_TLS__CLIENT_CA_FILE="/etc/gateway/clients.pem")
    assert "VIEWBAIT_TLS__CLIENT_CA_FILE asks for client certificates" in problem
    assert "set VIEWBAIT_TLS__CERT_FILE and VIEWBAIT_TLS__KEY_FILE" in problem


def test_a_misspelled_tls_setting_is_refused(env: pytest.MonkeyPatch) -> None:
    (problem,) = refusal(VIEWBAIT_TLS__CERTFILE="/etc/gateway/tls.crt")
    assert problem.endswith("did you mean VIEWBAIT_TLS__CERT_FILE?")
