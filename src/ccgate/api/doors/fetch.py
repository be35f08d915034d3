"""``POST /v1/fetch``: fetch a public page through the outbound guard (off by default)."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import structlog
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ccgate import metrics
from ccgate.api.auth import require_key
from ccgate.api.deps import services_of
from ccgate.api.errors import request_id_of
from ccgate.api.middleware import audit_facts
from ccgate.api.request_body import parse_body
from ccgate.errors import ApiError
from ccgate.fetcher import (
    DEFAULT_MAX_BYTES,
    MAX_BYTES_LIMIT,
    Fetcher,
    HopBlocked,
    Page,
    PageNotStripped,
    UpstreamFailed,
    render_page,
)
from ccgate.limits import LimitExceeded
from ccgate.security.netguard import MAX_URL_CHARS, OutboundGuard
from ccgate.store import KeyRecord

log = structlog.get_logger("ccgate.fetch")
router = APIRouter(prefix="/v1", tags=["fetch"])
CallerKey = Annotated[KeyRecord, Depends(require_key)]


class FetchBody(BaseModel):
    """The body of ``POST /v1/fetch``."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1,
        max_length=MAX_URL_CHARS,
        strict=True,
        description="An http or https URL of a public page.",
    )
    max_bytes: int = Field(
        DEFAULT_MAX_BYTES,
        ge=1,
        le=MAX_BYTES_LIMIT,
        strict=True,
        description="Most body bytes read; past it `truncated` is true.",
    )
    strip: bool = Field(
        True,
        strict=True,
        description="Drop scripts (JSON-LD kept), styles, SVG, noscript and comments from HTML.",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            parsed = httpx.URL(value.strip())
        except (httpx.InvalidURL, ValueError):
            raise ValueError("must be a valid URL") from None
        if parsed.scheme not in ("http", "https"):
            raise ValueError("must be an http or https URL")
        if not parsed.host:
            raise ValueError("must name a host")
        if parsed.userinfo:
            raise ValueError("must not carry a user name or password")
        return str(parsed)


async def require_fetch_enabled(request: Request) -> None:
    """FastAPI dependency: 404 feature_disabled unless CCGATE_FETCH_ENABLED is on."""
    if not services_of(request).settings.fetch_enabled:
        raise ApiError(
            "feature_disabled", "page fetching is off: set CCGATE_FETCH_ENABLED=true to turn it on"
        )


@router.post(
    "/fetch",
    summary="Fetch a public page through the SSRF guard",
    dependencies=[Depends(require_fetch_enabled)],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": FetchBody.model_json_schema()}},
        }
    },
)
async def fetch_page(request: Request, key: CallerKey) -> dict[str, Any]:
    """Fetch ``url`` from the gateway's address, checking every redirect hop."""
    body = await parse_body(request, FetchBody)
    try:
        await services_of(request).limiter.check_fetch(key.id)
    except LimitExceeded as exc:
        metrics.limit_refused(exc.error_type)
        raise
    facts = audit_facts(request)
    settings = services_of(request).settings
    fetcher = Fetcher(OutboundGuard(settings.outbound_allow))
    host = httpx.URL(body.url).host
    try:
        page = await fetcher.fetch(body.url, body.max_bytes)
    except HopBlocked as exc:
        facts.error_type = "destination_blocked"
        log.warning(
            "fetch_blocked",
            request_id=request_id_of(request),
            host=host,
            hop=exc.hop,
            detail=exc.detail,
        )
        raise ApiError("destination_blocked", str(exc), param="url") from None
    except UpstreamFailed as exc:
        facts.error_type = "upstream_error"
        log.info("fetch_failed", request_id=request_id_of(request), host=host, reason=str(exc))
        raise ApiError("upstream_error", str(exc)) from None
    try:
        html = await render_page(page, strip=body.strip)
    except PageNotStripped as exc:
        facts.error_type = "upstream_error"
        log.info(
            "fetch_not_stripped",
            request_id=request_id_of(request),
            host=host,
            body_bytes=page.body_bytes,
        )
        raise ApiError("upstream_error", str(exc)) from None
    facts.response_bytes = len(html.encode("utf-8"))
    log.info(
        "fetch",
        request_id=request_id_of(request),
        host=host,
        status=page.status,
        redirects=page.redirects,
        body_bytes=page.body_bytes,
        truncated=page.truncated,
    )
    return {
        "ok": _problem(page) is None,
        "status": page.status,
        "final_url": page.final_url,
        "truncated": page.truncated,
        "content_type": page.content_type,
        "html": html,
        "message": _problem(page),
    }


def _problem(page: Page) -> str | None:
    """Why the page is not ``ok``, or None when it is."""
    if not 200 <= page.status < 300:
        return f"the page answered HTTP {page.status}"
    if page.text is None:
        return (
            f"the page is {page.content_type}, not text: only HTML, text/*, JSON and XML "
            "are returned"
        )
    return None
