"""The estimate counts what the request says (text, images, file parts, output) at the price
table's rates; the emulator's usage of the same request shows what it is meant to approach."""

from __future__ import annotations

import pytest

from gateway.budgets.estimate import Estimator, estimate_usage
from gateway.config import CostEstimate, ModelPrice
from gateway.model import Blob, FileRef, ModelRequest, Part
from gateway.usage import PriceBook

PRICE = ModelPrice(input=0.5, cached_input=0.05, output=3.0, image_output=60.0)


def _request(**changes: object) -> ModelRequest:
    values: dict[str, object] = {
        "model": "m",
        "parts": (Part(text="x" * 401), Part(blob=Blob(b"png", "image/png"))),
        "system_instruction": "y" * 99,
    }
    values.update(changes)
    return ModelRequest(**values)  # type: ignore[arg-type]


def test_text_images_files_and_output_are_counted() -> None:
    request = _request(
        parts=(
            Part(text="x" * 401),
            Part(blob=Blob(b"a", "image/png")),
            Part(blob=Blob(b"b", "image/jpeg")),
            Part(file=FileRef("https://www.youtube.com/watch?v=x")),
        )
    )
    usage = estimate_usage(request, CostEstimate(), thinking_dearer=False)
    # 500 characters at 4 a token, two images at 258, one video at 174,000.
    assert usage.prompt_tokens == 125 + 2 * 258 + 174_000
    assert (usage.output_tokens, usage.thinking_tokens, usage.image_output_tokens) == (8192, 0, 0)


def test_max_output_tokens_and_image_output() -> None:
    request = _request(max_output_tokens=100, response_modalities=("IMAGE", "TEXT"))
    usage = estimate_usage(request, CostEstimate(), thinking_dearer=True)
    assert (usage.output_tokens, usage.thinking_tokens, usage.image_output_tokens) == (0, 100, 1290)


def test_priced_in_nano_usd_rounded_up() -> None:
    estimator = Estimator(CostEstimate(output_tokens=1000), PriceBook({"m": PRICE}))
    # 125 + 258 input tokens at $0.50/M, 1000 output at $3/M.
    assert estimator.nano_usd(_request()) == 383 * 500 + 1000 * 3000


@pytest.mark.parametrize(("thinking", "rate"), [(None, 3000), (2.0, 3000), (5.0, 5000)])
def test_text_output_is_priced_at_the_dearer_of_output_and_thinking(
    thinking: float | None, rate: int
) -> None:
    price = PRICE.model_copy(update={"thinking": thinking})
    estimator = Estimator(CostEstimate(output_tokens=1000), PriceBook({"m": price}))
    assert estimator.nano_usd(_request(parts=())) == 25 * 500 + 1000 * rate


def test_a_model_without_a_price_estimates_at_zero() -> None:
    assert Estimator(CostEstimate(), PriceBook({})).nano_usd(_request()) == 0
