"""What an upstream attempt is expected to cost before it is made: pure, from the request alone.

The estimate is what a budget reserves for an attempt until its `usageMetadata` says what it
cost. It counts the request's text (prompt and system instruction) at `chars_per_token`, each
inline image and each file part (a video by URL) at a fixed token count, the text output and
thinking at the call's `max_output_tokens` (or `output_tokens` when it sets none), billed at the
dearer of the output and thinking rates, and each generated image at `image_output_tokens`.
It is priced by the one pricing rule (`gateway.usage.cost_usd`) at the configured price table.

An estimate below the real cost (a long video, a long answer) lets a budget be overrun by the
difference for the attempts in flight when it runs out; see docs/budgets.md for the bound.
"""

from __future__ import annotations

import math

from gateway.config import CostEstimate
from gateway.model import ModelRequest, Usage
from gateway.usage import PriceBook

#: Amounts are kept in integer nano-USD (exact in Redis's Lua doubles up to about $9 million).
NANO_PER_USD = 1_000_000_000


def to_nano(usd: float) -> int:
    """`usd` in nano-USD, rounded to the nearest (a settled cost)."""
    return round(usd * NANO_PER_USD)


def to_usd(nano: int) -> float:
    """Nano-USD in USD."""
    return nano / NANO_PER_USD


def estimate_usage(
    request: ModelRequest, estimate: CostEstimate, *, thinking_dearer: bool
) -> Usage:
    """The tokens `request` is expected to use; text output counts as thinking when
    `thinking_dearer` (the price table bills thinking above output), so it is priced at the
    dearer rate."""
    chars = len(request.system_instruction or "")
    images = files = 0
    for part in request.parts:
        if part.text is not None:
            chars += len(part.text)
        elif part.blob is not None:
            images += 1
        else:
            files += 1
    prompt = (
        math.ceil(chars / estimate.chars_per_token)
        + images * estimate.image_input_tokens
        + files * estimate.file_input_tokens
    )
    text_out = (
        estimate.output_tokens if request.max_output_tokens is None else request.max_output_tokens
    )
    image_out = estimate.image_output_tokens if "IMAGE" in request.response_modalities else 0
    output, thinking = (0, text_out) if thinking_dearer else (text_out, 0)
    return Usage(
        prompt_tokens=prompt,
        output_tokens=output,
        thinking_tokens=thinking,
        image_output_tokens=image_out,
        total_tokens=prompt + text_out + image_out,
    )


class Estimator:
    """Estimates attempts at the configured prices (a model without a price estimates at 0,
    as its usage is recorded)."""

    def __init__(self, estimate: CostEstimate, prices: PriceBook) -> None:
        self._estimate = estimate
        self._prices = prices

    def nano_usd(self, request: ModelRequest) -> int:
        """The estimated cost of one attempt of `request`, in nano-USD, rounded up."""
        price = self._prices.price(request.model)
        dearer = price is not None and price.thinking is not None and price.thinking > price.output
        usage = estimate_usage(request, self._estimate, thinking_dearer=dearer)
        return math.ceil(self._prices.cost_usd(request.model, usage) * NANO_PER_USD)


__all__ = ["NANO_PER_USD", "Estimator", "estimate_usage", "to_nano", "to_usd"]
