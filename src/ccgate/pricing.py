"""An estimate of what a run cost in USD, from its token usage and a built-in price table.

The API backend reports no cost of its own, so budgets use this estimate. Prices are list prices
in USD per million tokens; cache writes cost 1.25x and cache reads 0.1x the input price.
"""

from __future__ import annotations

from collections.abc import Mapping

# (substring of the model id, input price, output price), first match wins: specific
# generations before the family's default.
PRICES_PER_MTOK: tuple[tuple[str, float, float], ...] = (
    ("opus-4-5", 5.0, 25.0),
    ("opus", 15.0, 75.0),
    ("sonnet", 3.0, 15.0),
    ("3-5-haiku", 0.8, 4.0),
    ("3-haiku", 0.25, 1.25),
    ("haiku", 1.0, 5.0),
)

_CACHE_WRITE_FACTOR = 1.25
_CACHE_READ_FACTOR = 0.1


def prices_for(model: str) -> tuple[float, float] | None:
    """The (input, output) USD price per million tokens for ``model``, or None if unknown."""
    name = model.lower()
    for pattern, input_price, output_price in PRICES_PER_MTOK:
        if pattern in name:
            return input_price, output_price
    return None


def cost_usd(model: str, usage: Mapping[str, int]) -> float | None:
    """The estimated cost of ``usage`` on ``model`` in USD, or None for a model not in the table."""
    prices = prices_for(model)
    if prices is None:
        return None
    input_price, output_price = prices

    def tokens(key: str) -> int:
        value = usage.get(key)
        return value if isinstance(value, int) and value > 0 else 0

    input_cost = input_price * (
        tokens("input_tokens")
        + _CACHE_WRITE_FACTOR * tokens("cache_creation_input_tokens")
        + _CACHE_READ_FACTOR * tokens("cache_read_input_tokens")
    )
    return (input_cost + output_price * tokens("output_tokens")) / 1_000_000
