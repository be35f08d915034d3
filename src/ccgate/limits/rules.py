"""The limits a key policy enforces, one small rule object each, which the Limiter iterates.

A request window (``rpm``, ``rpd``) counts admitted requests; a quota (``tokens_per_day``,
``budget_usd_per_month``) counts what finished runs spent plus what running ones reserved.
``concurrency`` is a running slot, taken by the Limiter itself. Adding a limit of one of these
shapes is one rule here (plus its ``ccgate.policy`` row).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ccgate.limits.spend import MICRO_USD, budget_key, next_day, next_month, tokens_key
from ccgate.limits.storage import QuotaState
from ccgate.policy import KeyPolicy


def per(secs: int) -> str:
    """A window length in words: day, minute, or N s."""
    return "day" if secs == 86400 else "minute" if secs == 60 else f"{secs} s"


def usd(micros: int) -> str:
    """Micro-dollars as a short dollar amount ($0.0125)."""
    return f"${micros / MICRO_USD:.4f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class WindowRule:
    """A per-key request window: ``field`` of the policy is its limit per window."""

    field: str
    error_type: str
    namespace: str
    moving: bool  # a moving window, else a fixed one that starts with its first request

    def limit(self, policy: KeyPolicy) -> int | None:
        """The key's limit per window; None: no such limit."""
        value: int | None = getattr(policy, self.field)
        return value

    def what(self, limit: int, window_secs: int) -> str:
        """The limit in words, for the 429's message."""
        return f"this key's limit of {limit} requests per {per(window_secs)}"


@dataclass(frozen=True)
class QuotaRule:
    """A per-key spend quota over a UTC calendar period, reserved before a request runs."""

    field: str
    error_type: str
    kind: str  # names the reservation set, held-<kind>:<key id>
    spent_key: Callable[[str, datetime], str]  # the counter of what the period spent
    renews: Callable[[datetime], datetime]  # when the period ends
    scale: int  # counter units per policy unit (micro-dollars per dollar)
    spent_text: Callable[[Any, int], str]  # (the policy value, spent) -> why it refuses
    held_text: Callable[[int, QuotaState, int], str]  # (limit, found, amount) -> why

    def limit(self, policy: KeyPolicy) -> int | None:
        """The quota in counter units; None: no such quota."""
        value: float | None = getattr(policy, self.field)
        return None if value is None else round(value * self.scale)

    def amount(self, tokens: int, micros: int) -> int:
        """What one request reserves against this quota."""
        return micros if self.scale == MICRO_USD else tokens


RPM = WindowRule("rpm", "rpm_exceeded", "rpm", moving=True)
RPD = WindowRule("rpd", "rpd_exceeded", "rpd", moving=False)
# rpm first: the headers report the first window the key has.
WINDOW_RULES = (RPM, RPD)

TOKENS_PER_DAY = QuotaRule(
    "tokens_per_day",
    "tokens_per_day_exceeded",
    "tokens",
    tokens_key,
    next_day,
    1,
    lambda limit, used: (
        f"this key's quota of {limit} tokens per day is used up ({used} used); "
        "it renews at 00:00 UTC"
    ),
    lambda limit, found, amount: (
        f"this key's quota of {limit} tokens per day cannot cover this request: "
        f"{found.spent} are used and {found.held} held by its running requests, and this one "
        f"may use {amount}; retry when one of them finishes"
    ),
)
BUDGET = QuotaRule(
    "budget_usd_per_month",
    "budget_exceeded",
    "budget",
    budget_key,
    next_month,
    MICRO_USD,
    lambda budget, spent: (
        f"this key's budget of ${budget:.2f} per month is spent "
        f"(${spent / MICRO_USD:.2f}); it renews on the 1st, 00:00 UTC"
    ),
    lambda limit, found, amount: (
        f"this key's budget of {usd(limit)} per month cannot cover this request: "
        f"{usd(found.spent)} is spent and {usd(found.held)} held by its running requests, "
        f"and this one may cost {usd(amount)}; retry when one of them finishes"
    ),
)
# In the order the Limiter reserves them (and reports them when both refuse).
QUOTA_RULES = (TOKENS_PER_DAY, BUDGET)
