"""Token usage priced in USD, and where usage records go.

`cost_usd` is the one pricing rule: input tokens not served from cache at the input rate, cached
ones at the cached rate, text output at the output rate, thinking at the thinking rate (the
output rate when the table gives none) and image output at the image rate; prices are USD per
million tokens (`gateway.config.ModelPrice`). `PriceBook` looks models up in the configured table;
a request answered through the Batch API costs its interactive price times the batch price
factor (`batch.price_factor`, 0.5: Gemini's Batch API bills half).
The records priced here go to the store's usage ledger (`gateway.store.ledger.StoreUsageSink`:
PostgreSQL's `ai_usage`, or the embedded store's bounded in-process ledger).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from gateway.config import ModelPrice
from gateway.model import Usage

log = logging.getLogger(__name__)

_PER_MILLION = 1_000_000


def cost_usd(usage: Usage, price: ModelPrice) -> float:
    """What `usage` costs at `price`."""
    cached = min(usage.cached_prompt_tokens, usage.prompt_tokens)
    thinking_rate = price.output if price.thinking is None else price.thinking
    micro_usd = (
        (usage.prompt_tokens - cached) * price.input
        + cached * price.cached_input
        + usage.output_tokens * price.output
        + usage.thinking_tokens * thinking_rate
        + usage.image_output_tokens * price.image_output
    )
    return micro_usd / _PER_MILLION


class PriceBook:
    """The configured price table. A model missing from it costs 0, with one warning per model.

    `batch_factor` is what a Batch API answer costs as a fraction of the same answer
    interactively."""

    def __init__(self, prices: Mapping[str, ModelPrice], *, batch_factor: float = 0.5) -> None:
        if not 0 <= batch_factor <= 1:
            raise ValueError(f"the batch price factor is a fraction in [0, 1], got {batch_factor}")
        self._prices = dict(prices)
        self._batch_factor = batch_factor
        self._warned: set[str] = set()

    def price(self, model: str) -> ModelPrice | None:
        """The configured price of `model` (None: it has none)."""
        return self._prices.get(model)

    def cost_usd(self, model: str, usage: Usage, *, batch: bool = False) -> float:
        """What `usage` on `model` costs, answered interactively or (`batch`) in a batch."""
        price = self._prices.get(model)
        if price is None:
            if model not in self._warned:
                self._warned.add(model)
                log.warning(
                    "no price configured for model %r: its usage is recorded at cost 0 "
                    "(add it to VIEWBAIT_GEMINI__PRICES)",
                    model,
                )
            return 0.0
        cost = cost_usd(usage, price)
        return cost * self._batch_factor if batch else cost
