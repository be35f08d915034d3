"""The built-in price table: per-family prices, cache multipliers, unknown models."""

from __future__ import annotations

import pytest

from ccgate.pricing import cost_usd

MILLION = 1_000_000


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("claude-sonnet-4-5-20250929", 3.0 + 15.0),
        ("sonnet", 3.0 + 15.0),
        ("claude-opus-4-1-20250805", 15.0 + 75.0),
        ("claude-opus-4-5-20251101", 5.0 + 25.0),
        ("claude-haiku-4-5-20251001", 1.0 + 5.0),
        ("claude-3-5-haiku-20241022", 0.8 + 4.0),
    ],
)
def test_pricing_matches_the_model_family_by_substring(model: str, expected: float) -> None:
    """A million input plus a million output tokens cost the family's list prices."""
    usage = {"input_tokens": MILLION, "output_tokens": MILLION}
    assert cost_usd(model, usage) == pytest.approx(expected)


def test_pricing_cache_writes_and_reads_use_their_multipliers() -> None:
    """Cache writes cost 1.25x and cache reads 0.1x the input price."""
    usage = {"cache_creation_input_tokens": MILLION, "cache_read_input_tokens": MILLION}
    assert cost_usd("claude-sonnet-4-5", usage) == pytest.approx(3.0 * 1.25 + 3.0 * 0.1)


def test_pricing_small_runs_cost_fractions_of_a_cent() -> None:
    """A typical short run costs what its tokens cost, not rounded away to zero."""
    usage = {"input_tokens": 12, "output_tokens": 4, "service_tier_tokens": 0}
    assert cost_usd("claude-haiku-4-5", usage) == pytest.approx((12 * 1.0 + 4 * 5.0) / MILLION)


def test_pricing_unknown_model_has_no_estimate() -> None:
    """A model outside the table gets None rather than a made-up price."""
    assert cost_usd("gpt-4o", {"input_tokens": 100, "output_tokens": 100}) is None
