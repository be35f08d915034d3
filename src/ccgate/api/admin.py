"""The admin API (``/admin``, behind CCGATE_ADMIN_TOKEN): keys and their policies, usage,
the audit log, the API backend's circuit breaker and the server's status."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr, create_model

from ccgate.api.auth import require_admin
from ccgate.api.deps import services_of
from ccgate.api.doors.usage import GroupByQuery, usage_report
from ccgate.api.health import readiness_checks
from ccgate.api.request_body import parse_body
from ccgate.circuit import CircuitBreaker
from ccgate.clock import utcnow
from ccgate.config import Settings
from ccgate.errors import ApiError
from ccgate.jobs import JobService
from ccgate.limits.headers import DOORS
from ccgate.policy import FIELD_NAMES, KeyPolicy, PolicyError, body_fields, policy_with
from ccgate.runners.pooled_cli import PooledCliRunner
from ccgate.security.keyring import NAME_PATTERN, KeyNameError, Keyring
from ccgate.store import JobStatus, KeyRecord, Store
from ccgate.store.audit import AuditPosition

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])
log = structlog.get_logger("ccgate.admin")

_MAX_AUDIT_ROWS = 1000
_MAX_CURSOR_CHARS = 200


# The policy fields, built from ccgate.policy's table (types, descriptions).
_PolicyFields: Any = create_model(
    "_PolicyFields", __config__=ConfigDict(extra="forbid"), **body_fields()
)


class PolicyBody(_PolicyFields):  # type: ignore[misc]
    """Policy fields of a key; on PATCH only the fields sent change, and null clears one."""


class CreateKeyBody(PolicyBody):
    """The body of ``POST /admin/keys``: a name, an optional policy and webhook secret."""

    name: StrictStr = Field(description="1-100 letters, digits, '.', '_' or '-'.")
    webhook_secret: StrictStr | None = Field(
        None, min_length=16, max_length=100, description="Minted when not given."
    )


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def key_view(record: KeyRecord) -> dict[str, Any]:
    """A key as the admin API shows it: never its secret, hash or webhook secret."""
    return {
        "name": record.name,
        "prefix": record.prefix,
        "kind": record.kind,
        "created_at": _iso(record.created_at),
        "last_used_at": _iso(record.last_used_at),
        "revoked_at": _iso(record.revoked_at),
        "active": record.active,
        "expired": record.expired(utcnow()),
        "policy": record.policy.as_json(),
    }


def _policy_changes(body: PolicyBody) -> dict[str, Any]:
    changes: dict[str, Any] = body.model_dump(exclude_unset=True, include=set(FIELD_NAMES))
    return changes


def _bad_policy(exc: PolicyError) -> ApiError:
    return ApiError("invalid_request", str(exc), param=exc.field)


async def _find(request: Request, name: str) -> KeyRecord:
    store: Store = services_of(request).store
    record = await store.keys.by_name(name) if NAME_PATTERN.fullmatch(name) else None
    if record is None:
        raise ApiError("not_found", f"no key named {name!r}")
    return record


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


@router.post(
    "/keys",
    status_code=201,
    summary="Create a key; its secret is shown once",
    openapi_extra=_body_schema(CreateKeyBody),
)
async def create_key(request: Request) -> JSONResponse:
    """Mint a key with a policy; the answer holds its secret, which is never shown again."""
    body = await parse_body(request, CreateKeyBody)
    if not NAME_PATTERN.fullmatch(body.name):
        raise ApiError(
            "invalid_request",
            "name: must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit",
            param="name",
        )
    try:
        policy = policy_with(KeyPolicy(), _policy_changes(body))
    except PolicyError as exc:
        raise _bad_policy(exc) from None
    keyring: Keyring = services_of(request).keyring
    try:
        created = await keyring.create(body.name, policy, webhook_secret=body.webhook_secret)
    except KeyNameError:
        raise ApiError(
            "conflict", f"a key named {body.name!r} already exists", param="name"
        ) from None
    log.info("admin_key_created", key=body.name)
    record = created.record
    return JSONResponse(
        {
            "name": record.name,
            "key": created.secret,
            "webhook_secret": created.webhook_secret,
            "prefix": record.prefix,
            "created_at": _iso(record.created_at),
            "policy": record.policy.as_json(),
        },
        status_code=201,
    )


@router.get("/keys", summary="List keys (never secrets)")
async def list_keys(request: Request) -> dict[str, Any]:
    """Every key, revoked ones included, oldest first."""
    keyring: Keyring = services_of(request).keyring
    return {"data": [key_view(r) for r in await keyring.list()]}


@router.get("/keys/{name}", summary="One key")
async def get_key(request: Request, name: str) -> dict[str, Any]:
    """One key by name, revoked or not."""
    return key_view(await _find(request, name))


@router.patch(
    "/keys/{name}", summary="Change a key's policy", openapi_extra=_body_schema(PolicyBody)
)
async def update_key(request: Request, name: str) -> dict[str, Any]:
    """Change any subset of an active key's policy; its next request obeys the new one."""
    body = await parse_body(request, PolicyBody)
    keyring: Keyring = services_of(request).keyring
    try:
        record = (
            await keyring.update(name, _policy_changes(body))
            if NAME_PATTERN.fullmatch(name)
            else None
        )
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
    keyring: Keyring = services_of(request).keyring
    if not NAME_PATTERN.fullmatch(name) or not await keyring.revoke(name):
        raise ApiError("not_found", f"no active key named {name!r}")
    record = await _find(request, name)
    cancelled = await services_of(request).jobs.end_work_of([record.id])
    log.info("admin_key_revoked", key=name, jobs_cancelled=cancelled)
    return key_view(record)


@router.post("/keys/{name}/webhook-secret", summary="Give a key a new webhook secret")
async def rotate_webhook_secret(request: Request, name: str) -> dict[str, Any]:
    """Mint a new webhook signing secret for an active key and show it, this once; the old
    one keeps signing next to it for CCGATE_WEBHOOK_ROTATION_GRACE_SECS."""
    keyring: Keyring = services_of(request).keyring
    grace = services_of(request).settings.webhook_rotation_grace_secs
    secret = (
        await keyring.rotate_webhook_secret(name, grace) if NAME_PATTERN.fullmatch(name) else None
    )
    if secret is None:
        raise ApiError("not_found", f"no active key named {name!r}")
    log.info("admin_webhook_secret_rotated", key=name)
    return {"name": name, "webhook_secret": secret}


def _key_filter(key: str | None) -> str | None:
    if key is not None and not NAME_PATTERN.fullmatch(key):
        raise ApiError("invalid_request", f"key: {key!r} is not a key name", param="key")
    return key


@router.get("/usage", summary="Requests, tokens, cost and errors per key")
async def usage(
    request: Request,
    key: str | None = None,
    since: str | None = None,
    until: str | None = None,
    group_by: GroupByQuery = None,
) -> dict[str, Any]:
    """Usage of every key (or one), optionally per UTC day or per model."""
    return await usage_report(
        request, key_name=_key_filter(key), since=since, until=until, group_by=group_by
    )


def _audit_row(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: (v.isoformat() if k == "at" else v) for k, v in row.items()}
    if out.get("prompt_text") is None:
        out.pop("prompt_text", None)
    return out


def _audit_cursor(position: AuditPosition) -> str:
    text = f"{position.at.isoformat()}|{position.id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _audit_position(cursor: str | None) -> AuditPosition | None:
    """The position a ``next_cursor`` stands for; 400 for anything this server did not make."""
    if cursor is None:
        return None
    try:
        if len(cursor) > _MAX_CURSOR_CHARS or not cursor.isascii():
            raise ValueError(cursor)
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not text.isascii():
            raise ValueError(cursor)
        at_text, _, id_text = text.partition("|")
        at = datetime.fromisoformat(at_text)
        row_id = int(id_text)
        if at.tzinfo is None or not id_text.isdigit() or not 0 < row_id < 2**63:
            raise ValueError(cursor)
    except ValueError:
        raise ApiError(
            "invalid_request",
            "cursor: not a cursor from a previous page's next_cursor",
            param="cursor",
        ) from None
    return AuditPosition(at=at, id=row_id)


@router.get("/audit", summary="Audit rows, newest first, a page at a time")
async def audit(
    request: Request,
    key: str | None = None,
    status: Annotated[
        str | None, Query(description="An HTTP status (`429`) or a job status (`failed`).")
    ] = None,
    door: Annotated[str | None, Query(description="The door: " + ", ".join(DOORS))] = None,
    limit: Annotated[int, Query(ge=1, le=_MAX_AUDIT_ROWS)] = 100,
    cursor: Annotated[
        str | None,
        Query(description="`next_cursor` of the page before; send the same filters with it."),
    ] = None,
) -> dict[str, Any]:
    """The newest audit rows, filtered by key, door and HTTP or job status; ``next_cursor``
    (null on the last page) fetches the rows after these."""
    http_status: int | None = None
    job_status: str | None = None
    if status is not None:
        if status.isascii() and status.isdigit() and len(status) == 3:
            http_status = int(status)
        elif status in {s.value for s in JobStatus}:
            job_status = status
        else:
            raise ApiError(
                "invalid_request",
                "status: must be an HTTP status such as 429 or "
                f"a job status ({', '.join(JobStatus)})",
                param="status",
            )
    if door is not None and door not in DOORS:
        raise ApiError("invalid_request", f"door: must be one of {', '.join(DOORS)}", param="door")
    store: Store = services_of(request).store
    # One row more than asked says whether a next page exists.
    rows = await store.audit.recent(
        limit + 1,
        key_name=_key_filter(key),
        http_status=http_status,
        job_status=job_status,
        door=door,
        before=_audit_position(cursor),
    )
    page, more = rows[:limit], len(rows) > limit
    last = AuditPosition(at=page[-1]["at"], id=page[-1]["id"]) if more else None
    return {
        "data": [_audit_row(r) for r in page],
        "next_cursor": _audit_cursor(last) if last is not None else None,
    }


def _circuit_view(request: Request) -> dict[str, Any]:
    breaker: CircuitBreaker | None = services_of(request).breaker
    backend = services_of(request).backend.name
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
    breaker: CircuitBreaker | None = services_of(request).breaker
    if breaker is not None:
        breaker.reset()
        log.info("admin_circuit_reset")
    return _circuit_view(request)


@router.get("/status", summary="Readiness, circuit breaker, queue and warm pool")
async def server_status(request: Request) -> dict[str, Any]:
    """Everything the console's Server page shows, in one answer (200 even when not ready):
    readiness as ``/readyz`` details it, the circuit breaker, the queue (all nodes) and this
    node's warm pool."""
    checks, _ = await readiness_checks(request)
    state = services_of(request)
    jobs: JobService = state.jobs
    settings: Settings = state.settings
    store: Store = state.store
    queue: dict[str, Any] = {
        "accepting": jobs.accepting,
        "running_here": jobs.running,
        "concurrency": settings.concurrency,
        "queue_size": settings.queue_size,
    }
    try:
        queue["queued"] = await store.jobs.count(JobStatus.QUEUED)
        queue["processing"] = await store.jobs.count(JobStatus.PROCESSING)
    except Exception as exc:  # the store being down is already a readiness problem
        log.warning("admin_status_queue_unreadable", error=type(exc).__name__)
        queue["queued"] = queue["processing"] = None
    runner = state.backend.runner
    pool = (
        {
            **runner.stats(),
            "max_processes": settings.pool_max_processes,
            "min_idle": settings.pool_min_idle,
        }
        if isinstance(runner, PooledCliRunner)
        else None
    )
    return {**checks, "circuit": _circuit_view(request), "queue": queue, "pool": pool}
