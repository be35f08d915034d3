"""The rate state a request sees, and the rate-limit headers each door shows it as."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from ccgate.clock import utcnow
from ccgate.doors import DOOR_NAMES, door_named

DOORS = DOOR_NAMES  # every door of the registry (ccgate.doors)


@dataclass(frozen=True)
class RateState:
    """A key's request and token limits after (or at) one admission; None: the key has none."""

    requests_limit: int | None = None
    requests_remaining: int | None = None
    requests_reset_secs: float | None = None
    tokens_limit: int | None = None
    tokens_remaining: int | None = None
    tokens_reset_secs: float | None = None


def openai_duration(secs: float) -> str:
    """Seconds in OpenAI's reset style, rounded up: ``1s``, ``6m0s``, ``1h0m5s``."""
    total = max(0, math.ceil(secs))
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


def rfc3339_after(secs: float) -> str:
    """The UTC instant ``secs`` from now, to the second (rounded up), as RFC 3339."""
    instant = utcnow().replace(microsecond=0) + timedelta(seconds=max(0, math.ceil(secs)))
    return instant.strftime("%Y-%m-%dT%H:%M:%SZ")


def _header_names(anthropic: bool, unit: str) -> tuple[str, str, str]:
    if anthropic:
        prefix = f"anthropic-ratelimit-{unit}"
        return f"{prefix}-limit", f"{prefix}-remaining", f"{prefix}-reset"
    return f"x-ratelimit-limit-{unit}", f"x-ratelimit-remaining-{unit}", f"x-ratelimit-reset-{unit}"


def rate_headers(door: str, state: RateState) -> dict[str, str]:
    """The rate-limit headers of ``door`` (a name in the door registry) for ``state``, in the
    style the registry gives it.

    Limits the key does not have are left out, so a key without limits gets no headers.
    """
    anthropic = door_named(door).rate_headers == "anthropic"
    reset_text = rfc3339_after if anthropic else openai_duration
    headers: dict[str, str] = {}
    for unit, limit, remaining, reset in (
        ("requests", state.requests_limit, state.requests_remaining, state.requests_reset_secs),
        ("tokens", state.tokens_limit, state.tokens_remaining, state.tokens_reset_secs),
    ):
        if limit is None:
            continue
        limit_name, remaining_name, reset_name = _header_names(anthropic, unit)
        headers[limit_name] = str(limit)
        headers[remaining_name] = str(max(0, remaining if remaining is not None else limit))
        if reset is not None:
            headers[reset_name] = reset_text(reset)
    return headers
