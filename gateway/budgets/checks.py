"""Budget settings that cannot work as meant, found before the gateway starts
(`gateway.config.deployment_problems` reports them).

- A model with a fleet-wide cap but no price: its calls cost 0, so the cap never refuses.
- User budgets while a model the operations run has no price: its calls are free to every
  budget, so budgets do not bound what they are meant to.
- A tier budget or a model cap above 0 but below the estimated output of a single call (a
  typo such as cents for dollars): every request it covers would be refused for ever. A budget
  of exactly 0 is a deliberate block and is accepted.
"""

from __future__ import annotations

from gateway.budgets.estimate import Estimator, to_nano, to_usd
from gateway.config import Settings
from gateway.model import Modality, ModelRequest
from gateway.settings_sources import env_name
from gateway.usage import PriceBook


def _one_call(estimator: Estimator, model: str, kind: str) -> int:
    """The smallest estimate of one call to `model` (no input at all), in nano-USD."""
    modalities: tuple[Modality, ...] = ("IMAGE", "TEXT") if kind == "image" else ("TEXT",)
    return estimator.nano_usd(ModelRequest(model=model, parts=(), response_modalities=modalities))


def budget_problems(settings: Settings) -> list[str]:
    """Why the budget settings cannot work as meant, one line each naming what to change."""
    budgets = settings.budgets
    if not budgets.enabled:
        return []
    prices = settings.gemini.prices
    estimator = Estimator(budgets.estimate, PriceBook(prices))
    problems = []
    price_var = env_name("gemini.prices")
    for model in budgets.models:
        if model not in prices:
            problems.append(
                f"{env_name('budgets.models')} caps {model} but {price_var} has no price for "
                "it: its calls would cost 0 and the cap would never refuse; add its price"
            )
    routes = {
        name: (settings.model_name(policy), policy.model, policy.tiers)
        for name, policy in settings.policies.items()
    }
    if budgets.tiers or budgets.users:
        for model in sorted({model for model, _, _ in routes.values()} - set(prices)):
            problems.append(
                f"user budgets are set but {price_var} has no price for {model}: its calls "
                "would cost 0 to every budget; add its price"
            )
    for tier, limits in budgets.tiers.items():
        for period, usd in (("day_usd", limits.day_usd), ("month_usd", limits.month_usd)):
            if not usd:
                continue
            for name, (model, kind, tiers) in routes.items():
                need = _one_call(estimator, model, kind)
                if tier in tiers and to_nano(usd) < need:
                    problems.append(
                        f"{env_name(f'budgets.tiers.{tier.value}.{period}')} is ${usd:g}, below "
                        f"the estimated output of one {name} call (${to_usd(need):g}): such "
                        "requests would never pass; raise it (or set 0 to block the tier)"
                    )
    for model, usd in budgets.models.items():
        kinds = {kind for m, kind, _ in routes.values() if m == model}
        for kind in sorted(kinds):
            need = _one_call(estimator, model, kind)
            if usd and to_nano(usd) < need:
                problems.append(
                    f"the daily cap of {model} in {env_name('budgets.models')} is ${usd:g}, "
                    f"below the estimated output of one call (${to_usd(need):g}): every call "
                    "would be refused; raise it (or set 0 to stop the model)"
                )
    return problems


__all__ = ["budget_problems"]
