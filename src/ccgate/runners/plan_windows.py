"""The subscription's plan windows as the CLI reports them in its ``rate_limit_event`` lines.

A CLI logged in with a subscription reports, after each upstream response, the window that
limits it now (top-level ``status``, ``rateLimitType``, ``utilization``, ``resetsAt``) and,
when the server sends them, every window it tracks (``unifiedWindows``). Only the top-level
status says whether requests are refused: a window listed as ``rejected`` while the top level
is ``allowed`` (overage in use, say) refuses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ccgate.runners.base import RunError

STATUSES = ("allowed", "allowed_warning", "rejected")
# The name a window gets when the CLI reports a status without its type.
UNNAMED = "plan"


@dataclass(frozen=True)
class PlanWindow:
    """One window of the plan as last seen: its state, how much is used, when it resets."""

    name: str
    status: str
    utilization: float | None
    resets_at: datetime | None
    seen_at: datetime

    def closed_at(self, now: datetime) -> bool:
        """True while the window refuses requests: rejected and not yet reset."""
        return self.status == "rejected" and (self.resets_at is None or self.resets_at > now)


class WindowClosed(RunError):
    """The run was refused because a plan window is exhausted until ``resets_at``."""

    def __init__(
        self,
        message: str,
        *,
        resets_at: datetime | None,
        retry_after: float | None,
        windows: tuple[PlanWindow, ...],
    ) -> None:
        super().__init__(
            "upstream_rate_limited", message, retry_after=retry_after, upstream_status=429
        )
        self.resets_at = resets_at
        self.windows = windows


def windows_from_info(info: dict[str, Any], seen_at: datetime) -> list[PlanWindow]:
    """The windows one ``rate_limit_info`` object describes, the limiting one first.

    Values of the wrong type are dropped rather than trusted; an unknown status yields no
    window at all.
    """
    found: dict[str, PlanWindow] = {}
    top = _window(_name(info.get("rateLimitType")), info, seen_at)
    if top is not None:
        found[top.name] = top
    unified = info.get("unifiedWindows")
    if isinstance(unified, dict):
        for raw_name, raw in unified.items():
            name = _name(raw_name)
            if isinstance(raw, dict) and name not in found:
                window = _window(name, raw, seen_at, default_status="allowed")
                if window is not None:
                    found[name] = window
    return list(found.values())


def refusing(info: dict[str, Any] | None) -> bool:
    """True when the CLI says requests are refused now (the top-level status is rejected)."""
    return info is not None and info.get("status") == "rejected"


def epoch_to_datetime(value: Any) -> datetime | None:
    """A Unix-seconds value as an aware UTC datetime; None when it is not a plain number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _name(value: Any) -> str:
    if isinstance(value, str) and value and len(value) <= 40 and value.isascii():
        return value
    return UNNAMED


def _window(
    name: str, raw: dict[str, Any], seen_at: datetime, *, default_status: str | None = None
) -> PlanWindow | None:
    status = raw.get("status", default_status)
    if status not in STATUSES:
        return None
    utilization = raw.get("utilization")
    if (
        isinstance(utilization, bool)
        or not isinstance(utilization, int | float)
        or utilization != utilization
        or not 0 <= utilization < 1e6
    ):
        utilization = None
    return PlanWindow(
        name=name,
        status=str(status),
        utilization=float(utilization) if utilization is not None else None,
        resets_at=epoch_to_datetime(raw.get("resetsAt")),
        seen_at=seen_at,
    )
