"""``GET /metrics``: the Prometheus text format, for loopback, allowed networks or a token."""

from __future__ import annotations

import hmac
import ipaddress

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ccgate import metrics
from ccgate.api.auth import presented_secret
from ccgate.api.deps import services_of
from ccgate.errors import ApiError

log = structlog.get_logger("ccgate.metrics")
router = APIRouter(tags=["metrics"])

SAMPLE_INTERVAL_SECS = 5.0


def metrics_allowed(request: Request) -> bool:
    """True for a loopback or CCGATE_METRICS_ALLOW_CIDRS socket address, or the right
    CCGATE_METRICS_TOKEN; X-Forwarded-For never counts, whatever CCGATE_TRUSTED_PROXIES says."""
    settings = services_of(request).settings
    token: str | None = settings.metrics_token
    presented = presented_secret(request)
    if (
        token is not None
        and presented is not None
        and hmac.compare_digest(presented.encode(), token.encode())
    ):
        return True
    peer = request.scope.get("client")
    try:
        address = ipaddress.ip_address(peer[0]) if peer else None
    except ValueError:
        return False
    if address is None:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return True
    return any(address in ipaddress.ip_network(cidr) for cidr in settings.metrics_allow_cidrs)


@router.get(
    "/metrics",
    summary="Prometheus metrics (loopback, allowed networks or a token)",
    response_class=Response,
)
async def metrics_page(request: Request) -> Response:
    """Every metric family in the Prometheus text format (docs/metrics.md); 403 unless the
    socket address is loopback or in CCGATE_METRICS_ALLOW_CIDRS, or the bearer token is
    CCGATE_METRICS_TOKEN."""
    if not metrics_allowed(request):
        raise ApiError(
            "forbidden",
            "this address may not read /metrics (allow it with "
            "CCGATE_METRICS_ALLOW_CIDRS or send CCGATE_METRICS_TOKEN as a bearer)",
        )
    await services_of(request).sampling.sample()
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)
