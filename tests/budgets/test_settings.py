"""Budget settings as an operator writes them (environment and TOML), and the combinations the
gateway refuses to start with (`deployment_problems`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.config import (
    BudgetSettings,
    JobRefusal,
    PeriodBudgets,
    Settings,
    Tier,
    deployment_problems,
    load_settings,
)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The environment with none of the gateway's variables set."""
    for name in list(os.environ):
        if name.startswith("VIEWBAIT_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_nothing_is_budgeted_by_default(env: pytest.MonkeyPatch) -> None:
    budgets = load_settings().budgets
    assert not budgets.enabled
    assert budgets.job_refusal is JobRefusal.FAIL
    assert budgets.for_user("anyone", Tier.FREE) == PeriodBudgets()


def test_budgets_from_the_environment(env: pytest.MonkeyPatch) -> None:
    env.setenv("VIEWBAIT_BUDGETS__TIERS", '{"free": {"day_usd": 0.5, "month_usd": 5}}')
    env.setenv("VIEWBAIT_BUDGETS__USERS", '{"vip": {"day_usd": 20}, "staff": {"month_usd": null}}')
    env.setenv("VIEWBAIT_BUDGETS__MODELS", '{"gemini-3.1-flash-image-preview": 200}')
    env.setenv("VIEWBAIT_BUDGETS__JOB_REFUSAL", "wait")
    env.setenv("VIEWBAIT_BUDGETS__ESTIMATE__OUTPUT_TOKENS", "2048")
    budgets = load_settings().budgets
    assert budgets.for_user("someone", Tier.FREE) == PeriodBudgets(day_usd=0.5, month_usd=5)
    assert budgets.for_user("vip", Tier.FREE) == PeriodBudgets(day_usd=20, month_usd=5)
    assert budgets.for_user("staff", Tier.FREE) == PeriodBudgets(day_usd=0.5)
    assert budgets.for_user("vip", Tier.PRO) == PeriodBudgets(day_usd=20)
    assert budgets.models == {"gemini-3.1-flash-image-preview": 200}
    assert budgets.job_refusal is JobRefusal.WAIT
    assert budgets.estimate.output_tokens == 2048


def test_budgets_from_a_toml_file(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[budgets.tiers.pro]\nday_usd = 10.0\n\n[budgets.models]\n"gemini-3.6-flash" = 500.0\n'
    )
    env.setenv("VIEWBAIT_CONFIG_FILE", str(path))
    budgets = load_settings().budgets
    assert budgets.tiers == {Tier.PRO: PeriodBudgets(day_usd=10.0)}
    assert budgets.models == {"gemini-3.6-flash": 500.0}


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        (
            "VIEWBAIT_BUDGETS__TIERS",
            '{"free": {"day": 1}}',
            "did you mean budgets.tiers.free.day_usd",
        ),
        ("VIEWBAIT_BUDGETS__TIERS", '{"gold": {"day_usd": 1}}', "gold"),
        ("VIEWBAIT_BUDGETS__TIERS", '{"free": {"day_usd": -1}}', "greater than or equal to 0"),
        ("VIEWBAIT_BUDGETS__MODELS", '{"m": 2000000}', "between 0 and"),
        ("VIEWBAIT_BUDGETS__JOB_REFUSAL", "queue", "'fail' or 'wait'"),
    ],
)
def test_mistakes_are_refused_by_name(
    env: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    env.setenv(variable, value)
    with pytest.raises(Exception, match=says):
        load_settings()


def problems(**budgets: object) -> list[str]:
    """The deployment problems of local-mode settings with these budgets (none without)."""
    return deployment_problems(Settings(budgets=BudgetSettings(**budgets)))  # type: ignore[arg-type]


def test_a_cap_on_a_model_without_a_price_is_refused() -> None:
    (problem,) = problems(models={"gemini-unpriced": 10.0})
    assert "VIEWBAIT_BUDGETS__MODELS caps gemini-unpriced" in problem
    assert "VIEWBAIT_GEMINI__PRICES" in problem


def test_user_budgets_with_an_unpriced_model_are_refused() -> None:
    settings = Settings(
        budgets=BudgetSettings(tiers={Tier.PRO: PeriodBudgets(day_usd=5.0)}),
        gemini=Settings().gemini.model_copy(update={"text_model": "gemini-unpriced"}),
    )
    assert any("no price for gemini-unpriced" in p for p in deployment_problems(settings))


def test_a_budget_below_one_call_is_refused_but_zero_blocks() -> None:
    found = problems(tiers={Tier.FREE: PeriodBudgets(day_usd=0.01, month_usd=0.0)})
    assert found and all("VIEWBAIT_BUDGETS__TIERS__FREE__DAY_USD is $0.01" in p for p in found)
    assert any("generate_thumbnail" in p for p in found)
    assert problems(tiers={Tier.FREE: PeriodBudgets(day_usd=0.0)}) == []
    (cap,) = problems(models={"gemini-3.6-flash": 0.001})
    assert "the daily cap of gemini-3.6-flash" in cap


def test_sensible_budgets_pass() -> None:
    assert (
        problems(
            tiers={Tier.FREE: PeriodBudgets(day_usd=0.5, month_usd=5.0)},
            users={"vip": PeriodBudgets(day_usd=None)},
            models={"gemini-3.6-flash": 500.0, "gemini-3.1-flash-image-preview": 200.0},
        )
        == []
    )
