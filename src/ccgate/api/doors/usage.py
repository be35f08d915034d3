"""Usage reports: ``GET /api/v1/usage`` for the calling key (the admin API reuses the report)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Query, Request

from ccgate.api.auth import require_key
from ccgate.api.deps import services_of
from ccgate.errors import ApiError
from ccgate.policy import KeyPolicy
from ccgate.store import KeyRecord, Store
from ccgate.store.usage import GroupBy

router = APIRouter(prefix="/api/v1", tags=["native"])
CallerKey = Annotated[KeyRecord, Depends(require_key)]
GroupByQuery = Annotated[GroupBy | None, Query(description="`day` (UTC) or `model`.")]
log = structlog.get_logger("ccgate.usage")


# Bounds past either end of what a datetime can hold are clamped to these instants.
_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)


def parse_bound(name: str, value: str | None, *, end: bool) -> datetime | None:
    """An ISO 8601 date or date-time as UTC; a date as ``until`` means through that day.

    Bounds beyond year 1 or 9999 once in UTC (``until=9999-12-31``) are clamped to the first
    or last representable instant instead of overflowing.
    """
    if value is None:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        pass
    else:
        start = datetime.combine(day, time(), UTC)
        if not end:
            return start
        return _LATEST if day == date.max else start + timedelta(days=1)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(
            "invalid_request", f"{name}: {value!r} is not an ISO 8601 date or date-time", param=name
        ) from None
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    try:
        return when.astimezone(UTC)
    except OverflowError:
        return _EARLIEST if when.year == 1 else _LATEST


async def usage_report(
    request: Request,
    *,
    key_name: str | None,
    since: str | None,
    until: str | None,
    group_by: GroupBy | None,
) -> dict[str, Any]:
    """Usage per key (and day or model) between ``since`` (inclusive) and ``until``."""
    start = parse_bound("since", since, end=False)
    stop = parse_bound("until", until, end=True)
    if start is not None and stop is not None and stop <= start:
        raise ApiError("invalid_request", "until: must be after since", param="until")
    store: Store = services_of(request).store
    rows = await store.usage.totals(key_name=key_name, since=start, until=stop, group_by=group_by)
    return {
        "since": start.isoformat() if start else None,
        "until": stop.isoformat() if stop else None,
        "group_by": group_by,
        "data": [row.as_json(group_by) for row in rows],
    }


# A policy limit and the limiter's live counter it is measured against.
_COUNTED = (
    ("tokens_per_day", "tokens_today"),
    ("budget_usd_per_month", "cost_usd_this_month"),
    ("concurrency", "running"),
)


def _remaining(policy: KeyPolicy, used: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for limit_field, used_field in _COUNTED:
        limit, spent = getattr(policy, limit_field), used.get(used_field)
        out[limit_field] = (
            None if limit is None or spent is None else max(0, round(limit - spent, 6))
        )
    return out


@router.get("/usage", summary="This key's usage, policy and what is left")
async def own_usage(
    request: Request,
    key: CallerKey,
    since: str | None = None,
    until: str | None = None,
    group_by: GroupByQuery = None,
) -> dict[str, Any]:
    """The calling key's own numbers only, with its policy and what its limits leave."""
    report = await usage_report(
        request, key_name=key.name, since=since, until=until, group_by=group_by
    )
    used: dict[str, Any] | None = None
    limiter = services_of(request).limiter
    if limiter is not None:
        try:
            used = dict(await limiter.usage(key.id))
        except Exception:
            log.exception("limiter_usage_failed", key=key.name)
    return {
        "key": key.name,
        **report,
        "policy": key.policy.as_json(),
        "used": used,
        "remaining": _remaining(key.policy, used) if used is not None else None,
    }
