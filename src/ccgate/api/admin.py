"""The admin API (``/admin``, behind CCGATE_ADMIN_TOKEN): keys and their policies, usage,
the audit log and the API backend's circuit breaker."""

from __future__ import annotations

from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from ccgate.api.auth import require_admin
from ccgate.api.native import parse_body
from ccgate.api.usage import GroupByQuery, usage_report
from ccgate.circuit import CircuitBreaker
from ccgate.clock import utcnow
from ccgate.errors import ApiError
from ccgate.security.keyring import NAME_PATTERN, KeyNameError, Keyring, PolicyError, policy_with
from ccgate.store import JobStatus, KeyRecord, Store
from ccgate.store.keys import POLICY_FIELDS, KeyPolicy

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])
log = structlog.get_logger("ccgate.admin")

_MAX_AUDIT_ROWS = 1000


class PolicyBody(BaseModel):
    """Policy fields of a key; on PATCH only the fields sent change, and null clears one."""

    model_config = ConfigDict(extra="forbid")

    rpm: StrictInt | None = Field(None, description="Requests per minute.")
    rpd: StrictInt | None = Field(None, description="Requests per UTC day.")
    tokens_per_day: StrictInt | None = Field(None, description="Input + output tokens per day.")
    budget_usd_per_month: StrictFloat | None = Field(None, description="Spend cap per month.")
    concurrency: StrictInt | None = Field(None, description="Jobs running at once.")
    models: list[StrictStr] | None = Field(None, description="Allowed models; globs allowed.")
    ip_cidrs: list[StrictStr] | None = Field(None, description="Client networks allowed.")
    expires_at: StrictStr | None = Field(None, description="ISO 8601; must be in the future.")


class CreateKeyBody(PolicyBody):
    """The body of ``POST /admin/keys``: a name, an optional policy and webhook secret."""

    name: StrictStr = Field(description="1-100 letters, digits, '.', '_' or '-'.")
    webhook_secret: StrictStr | None = Field(None, min_length=16, max_length=100,
                                             description="Minted when not given.")


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def key_view(record: KeyRecord) -> dict[str, Any]:
    """A key as the admin API shows it: never its secret, hash or webhook secret."""
    return {
        "name": record.name, "prefix": record.prefix, "kind": record.kind,
        "created_at": _iso(record.created_at), "last_used_at": _iso(record.last_used_at),
        "revoked_at": _iso(record.revoked_at), "active": record.active,
        "expired": record.expired(utcnow()), "policy": record.policy.as_json(),
    }


def _policy_changes(body: PolicyBody) -> dict[str, Any]:
    return body.model_dump(exclude_unset=True, include=set(POLICY_FIELDS))


def _bad_policy(exc: PolicyError) -> ApiError:
    return ApiError("invalid_request", str(exc), param=exc.field)


async def _find(request: Request, name: str) -> KeyRecord:
    store: Store = request.app.state.store
    record = await store.keys.by_name(name) if NAME_PATTERN.fullmatch(name) else None
    if record is None:
        raise ApiError("not_found", f"no key named {name!r}")
    return record


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()}}}}


@router.post("/keys", status_code=201, summary="Create a key; its secret is shown once",
             openapi_extra=_body_schema(CreateKeyBody))
async def create_key(request: Request) -> JSONResponse:
    """Mint a key with a policy; the answer holds its secret, which is never shown again."""
    body = await parse_body(request, CreateKeyBody)
    if not NAME_PATTERN.fullmatch(body.name):
        raise ApiError("invalid_request", "name: must be 1-100 letters, digits, '.', '_' or "
                       "'-', starting with a letter or digit", param="name")
    try:
        policy = policy_with(KeyPolicy(), _policy_changes(body))
    except PolicyError as exc:
        raise _bad_policy(exc) from None
    keyring: Keyring = request.app.state.keyring
    try:
        created = await keyring.create(body.name, policy, webhook_secret=body.webhook_secret)
    except KeyNameError:
        raise ApiError("conflict", f"a key named {body.name!r} already exists",
                       param="name") from None
    log.info("admin_key_created", key=body.name)
    record = created.record
    return JSONResponse({
        "name": record.name, "key": created.secret, "webhook_secret": created.webhook_secret,
        "prefix": record.prefix, "created_at": _iso(record.created_at),
        "policy": record.policy.as_json()}, status_code=201)


@router.get("/keys", summary="List keys (never secrets)")
async def list_keys(request: Request) -> dict[str, Any]:
    """Every key, revoked ones included, oldest first."""
    keyring: Keyring = request.app.state.keyring
    return {"data": [key_view(r) for r in await keyring.list()]}


@router.get("/keys/{name}", summary="One key")
async def get_key(request: Request, name: str) -> dict[str, Any]:
    """One key by name, revoked or not."""
    return key_view(await _find(request, name))


@router.patch("/keys/{name}", summary="Change a key's policy",
              openapi_extra=_body_schema(PolicyBody))
async def update_key(request: Request, name: str) -> dict[str, Any]:
    """Change any subset of an active key's policy; its next request obeys the new one."""
    body = await parse_body(request, PolicyBody)
    keyring: Keyring = request.app.state.keyring
    try:
        record = await keyring.update(name, _policy_changes(body)) \
            if NAME_PATTERN.fullmatch(name) else None
    except PolicyError as exc:
        raise _bad_policy(exc) from None
    if record is None:
        raise ApiError("not_found", f"no active key named {name!r}")
    log.info("admin_key_updated", key=name, fields=sorted(_policy_changes(body)))
    return key_view(record)


@router.delete("/keys/{name}", summary="Revoke a key")
async def revoke_key(request: Request, name: str) -> dict[str, Any]:
    """Revoke a key: its very next request gets 401, its queued and running jobs are
    cancelled and its pending webhooks dropped."""
    keyring: Keyring = request.app.state.keyring
    if not NAME_PATTERN.fullmatch(name) or not await keyring.revoke(name):
        raise ApiError("not_found", f"no active key named {name!r}")
    record = await _find(request, name)
    cancelled = await request.app.state.jobs.end_work_of([record.id])
    log.info("admin_key_revoked", key=name, jobs_cancelled=cancelled)
    return key_view(record)


def _key_filter(key: str | None) -> str | None:
    if key is not None and not NAME_PATTERN.fullmatch(key):
        raise ApiError("invalid_request", f"key: {key!r} is not a key name", param="key")
    return key


@router.get("/usage", summary="Requests, tokens, cost and errors per key")
async def usage(request: Request, key: str | None = None, since: str | None = None,
                until: str | None = None, group_by: GroupByQuery = None) -> dict[str, Any]:
    """Usage of every key (or one), optionally per UTC day or per model."""
    return await usage_report(request, key_name=_key_filter(key), since=since, until=until,
                              group_by=group_by)


def _audit_row(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: (v.isoformat() if k == "at" else v) for k, v in row.items()}
    if out.get("prompt_text") is None:
        out.pop("prompt_text", None)
    return out


@router.get("/audit", summary="Audit rows, newest first")
async def audit(
    request: Request, key: str | None = None,
    status: Annotated[str | None, Query(description="An HTTP status (`429`) or a job status "
                                        "(`failed`).")] = None,
    limit: Annotated[int, Query(ge=1, le=_MAX_AUDIT_ROWS)] = 100,
) -> dict[str, Any]:
    """The newest audit rows, filtered by key and by HTTP or job status."""
    http_status: int | None = None
    job_status: str | None = None
    if status is not None:
        if status.isascii() and status.isdigit() and len(status) == 3:
            http_status = int(status)
        elif status in {s.value for s in JobStatus}:
            job_status = status
        else:
            raise ApiError("invalid_request", "status: must be an HTTP status such as 429 or "
                           f"a job status ({', '.join(JobStatus)})", param="status")
    store: Store = request.app.state.store
    rows = await store.audit.recent(limit, key_name=_key_filter(key), http_status=http_status,
                                    job_status=job_status)
    return {"data": [_audit_row(r) for r in rows]}


def _circuit_view(request: Request) -> dict[str, Any]:
    breaker: CircuitBreaker | None = getattr(request.app.state, "breaker", None)
    backend = request.app.state.settings.backend
    if breaker is None:
        return {"backend": backend, "enabled": False}
    return {"backend": backend, "enabled": True, **breaker.snapshot()}


@router.get("/circuit", summary="The API backend's circuit breaker")
async def circuit(request: Request) -> dict[str, Any]:
    """The breaker's state; ``enabled: false`` on the CLI backend, which has none."""
    return _circuit_view(request)


@router.post("/circuit/reset", summary="Close the circuit breaker by hand")
async def circuit_reset(request: Request) -> dict[str, Any]:
    """Close the breaker and forget its failures; a no-op without one."""
    breaker: CircuitBreaker | None = getattr(request.app.state, "breaker", None)
    if breaker is not None:
        breaker.reset()
        log.info("admin_circuit_reset")
    return _circuit_view(request)
