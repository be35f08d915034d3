"""Device enrollment: admin routes for enrollments and devices; bootstrap and refresh."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    create_model,
    field_validator,
    model_validator,
)

from ccgate.api.auth import presented_secret, require_admin
from ccgate.api.deps import services_of
from ccgate.api.request_body import parse_body
from ccgate.clock import utcnow
from ccgate.errors import ApiError
from ccgate.policy import POLICY_FIELDS, KeyPolicy, PolicyError, body_fields, policy_with
from ccgate.security.enrollment import (
    AddressRefused,
    DeviceKeyConflict,
    DeviceRevoked,
    DeviceSecretRefused,
    DeviceToken,
    EnrollmentFull,
    EnrollmentNameError,
    EnrollmentNameTaken,
    EnrollmentService,
    InvalidEnrollmentCode,
)
from ccgate.store.enrollments import DeviceRecord, EnrollmentRecord

router = APIRouter(tags=["enrollment"])
admin = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])

_INT_MAX = 2_147_483_647
_MAX_TTL_SECS = 10 * 366 * 86400
# The device key policy: the fields an enrollment may set. Not expires_at: the body's own
# expires_at is the enrollment's, which ends enrolment, not devices.
_POLICY_FIELDS = tuple(f.name for f in POLICY_FIELDS if f.device_help is not None)
_NAME_HELP = "1-80 letters, digits, '.', '_' or '-'."
_MAX_CODE_CHARS = 200
_BAD_CODE = "invalid, expired or revoked enrollment code"
_BAD_TOKEN = "invalid, expired or revoked device token"  # noqa: S105 (a message)
_KNOWN_DEVICE = (
    "this device_id is already enrolled: send the device_secret its first bootstrap returned"
)
_BAD_ADDRESS = "this enrollment may not be used from this address (its ip_cidrs)"


# The enrollment's name and the device key policy fields, from ccgate.policy's table.
_EnrollmentFields: Any = create_model(
    "_EnrollmentFields",
    __config__=ConfigDict(extra="forbid"),
    name=(StrictStr, Field(description=_NAME_HELP)),
    **body_fields(device=True),
)


class EnrollmentBody(_EnrollmentFields):  # type: ignore[misc]
    """The body of ``POST /admin/enrollments``: a name, the device key policy, the limits."""

    name: StrictStr = Field(description=_NAME_HELP)  # typed for mypy; first, as declared above
    max_devices: StrictInt = Field(1, ge=1, le=_INT_MAX, description="Active devices at most.")
    expires_at: datetime | None = Field(
        None, description="ISO 8601: the code stops enrolling devices then."
    )
    ttl_secs: StrictInt | None = Field(
        None, ge=1, le=_MAX_TTL_SECS, description="Or: the code enrols devices this long."
    )

    @model_validator(mode="after")
    def _one_expiry(self) -> EnrollmentBody:
        if self.expires_at is not None and self.ttl_secs is not None:
            raise ValueError("give expires_at or ttl_secs, not both")
        return self

    def policy(self) -> KeyPolicy:
        """The key policy every device enrolled with this enrollment gets."""
        changes = self.model_dump(exclude_none=True, include=set(_POLICY_FIELDS))
        try:
            return policy_with(KeyPolicy(), changes)
        except PolicyError as exc:
            raise ApiError("invalid_request", str(exc), param=exc.field) from None

    def expiry(self, now: datetime) -> datetime | None:
        """When the code stops enrolling devices (naive times are UTC); None: never."""
        if self.ttl_secs is not None:
            return now + timedelta(seconds=self.ttl_secs)
        if self.expires_at is None or self.expires_at.tzinfo is None:
            return None if self.expires_at is None else self.expires_at.replace(tzinfo=UTC)
        try:
            return self.expires_at.astimezone(UTC)
        except OverflowError:
            raise ApiError(
                "invalid_request",
                "expires_at: must fall between the years 1 and 9999 in UTC",
                param="expires_at",
            ) from None


class BootstrapBody(BaseModel):
    """The body of ``POST /v1/bootstrap``."""

    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(min_length=1, max_length=200)
    enrollment_code: str | None = None
    device_secret: str | None = Field(
        None,
        max_length=200,
        description="The secret the "
        "device's first bootstrap returned; needed to bootstrap "
        "again as that device.",
    )

    @field_validator("device_id")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("must be printable characters only")
        return value


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _service(request: Request) -> EnrollmentService:
    service: EnrollmentService | None = services_of(request).enrollment
    if service is None:
        raise ApiError(
            "feature_disabled",
            "device enrollment is off: set "
            "CCGATE_ENROLLMENT_SECRET (at least 32 characters) to turn it on",
        )
    return service


def _enrollment_view(record: EnrollmentRecord, now: datetime) -> dict[str, Any]:
    status = "revoked" if record.revoked_at else "active" if record.open_at(now) else "expired"
    return {
        "name": record.name,
        "status": status,
        "max_devices": record.max_devices,
        "devices_active": record.devices_active,
        "devices_revoked": record.devices_revoked,
        "created_at": _iso(record.created_at),
        "expires_at": _iso(record.expires_at),
        "revoked_at": _iso(record.revoked_at),
        "policy": record.policy.as_json(),
    }


def _device_view(device: DeviceRecord) -> dict[str, Any]:
    return {
        "id": device.id,
        "device_id": device.device_id,
        "enrollment": device.enrollment_name,
        "key_name": device.key_name,
        "status": "revoked" if device.revoked_at else "active",
        "created_at": _iso(device.created_at),
        "last_refresh_at": _iso(device.last_refresh_at),
        "revoked_at": _iso(device.revoked_at),
    }


def _token_view(request: Request, issued: DeviceToken) -> dict[str, Any]:
    request.scope["ccgate.key_name"] = issued.device.key_name
    view = {
        "token": issued.token,
        "token_type": "Bearer",
        "expires_in": issued.ttl_secs,
        "expires_at": _iso(issued.expires_at),
        "device": _device_view(issued.device),
    }
    # Secrets just minted are shown this once; the store keeps only what it must.
    if issued.device_secret is not None:
        view["device_secret"] = issued.device_secret
    if issued.webhook_secret is not None:
        view["webhook_secret"] = issued.webhook_secret
    return view


@admin.post(
    "/enrollments",
    status_code=201,
    summary="Create an enrollment code",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": EnrollmentBody.model_json_schema()}},
        }
    },
)
async def create_enrollment(request: Request) -> JSONResponse:
    """Create an enrollment; the code is in this response only."""
    service = _service(request)
    body = await parse_body(request, EnrollmentBody)
    now = utcnow()
    expires_at = body.expiry(now)
    if expires_at is not None and expires_at <= now:
        raise ApiError("invalid_request", "expires_at: must be in the future", param="expires_at")
    try:
        created = await service.create(
            body.name, body.policy(), max_devices=body.max_devices, expires_at=expires_at
        )
    except EnrollmentNameError as exc:
        taken = isinstance(exc, EnrollmentNameTaken)
        raise ApiError("conflict" if taken else "invalid_request", str(exc), param="name") from None
    view = _enrollment_view(created.record, now)
    return JSONResponse({**view, "enrollment_code": created.code}, status_code=201)


@admin.get("/enrollments", summary="List enrollments (codes are never shown again)")
async def list_enrollments(request: Request) -> dict[str, Any]:
    """Every enrollment with its device counts."""
    now = utcnow()
    return {"data": [_enrollment_view(r, now) for r in await _service(request).list()]}


@admin.delete(
    "/enrollments/{name}",
    status_code=204,
    summary="Revoke an enrollment and every device enrolled with it",
)
async def revoke_enrollment(request: Request, name: str) -> Response:
    """Close the code and revoke its devices; their tokens fail from the next request, their
    queued and running jobs are cancelled and their pending webhooks dropped."""
    if not await _service(request).revoke(name):
        raise ApiError("not_found", f"no active enrollment named {name!r}")
    devices = await services_of(request).store.enrollments.devices(name)
    await services_of(request).jobs.end_work_of([d.key_id for d in devices])
    return Response(status_code=204)


@admin.get("/devices", summary="List enrolled devices")
async def list_devices(
    request: Request, enrollment: Annotated[str | None, Query()] = None
) -> dict[str, Any]:
    """Every device, or only those of ``?enrollment=<name>``."""
    return {"data": [_device_view(d) for d in await _service(request).devices(enrollment)]}


@admin.delete("/devices/{device_id}", status_code=204, summary="Revoke one device and its key")
async def revoke_device(request: Request, device_id: str) -> Response:
    """Revoke a device by its id (``dev_…``); its tokens fail from the next request, its
    queued and running jobs are cancelled and its pending webhooks dropped."""
    if not await _service(request).revoke_device(device_id):
        raise ApiError("not_found", f"no active device {device_id!r}")
    device = await services_of(request).store.enrollments.device(device_id)
    if device is not None:
        await services_of(request).jobs.end_work_of([device.key_id])
    return Response(status_code=204)


@router.post(
    "/v1/bootstrap",
    summary="Exchange an enrollment code for a device token",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": BootstrapBody.model_json_schema()}},
        }
    },
)
async def bootstrap(request: Request) -> dict[str, Any]:
    """Enrol a device (or find it again) and return a short-lived token."""
    service = _service(request)
    body = await parse_body(request, BootstrapBody)
    code = body.enrollment_code
    if not code or len(code) > _MAX_CODE_CHARS:
        raise ApiError("authentication_error", _BAD_CODE, param="enrollment_code")
    try:
        issued = await service.bootstrap(
            code,
            body.device_id,
            device_secret=body.device_secret,
            address=request.scope.get("ccgate.client_address"),
        )
    except InvalidEnrollmentCode:
        raise ApiError("authentication_error", _BAD_CODE, param="enrollment_code") from None
    except AddressRefused:
        raise ApiError("forbidden", _BAD_ADDRESS) from None
    except DeviceSecretRefused:
        raise ApiError("authentication_error", _KNOWN_DEVICE, param="device_secret") from None
    except DeviceRevoked:
        raise ApiError(
            "authentication_error", "this device has been revoked", param="device_id"
        ) from None
    except EnrollmentFull:
        raise ApiError(
            "forbidden", "this enrollment has no free device slot (max_devices reached)"
        ) from None
    except DeviceKeyConflict as exc:
        raise ApiError("conflict", str(exc), param="device_id") from None
    return _token_view(request, issued)


@router.post("/v1/refresh", summary="Exchange a valid device token for a fresh one")
async def refresh(request: Request) -> dict[str, Any]:
    """A new token with a later expiry; expired, revoked or forged tokens get 401."""
    service = _service(request)
    token = presented_secret(request)
    try:
        issued = (
            await service.refresh(token, address=request.scope.get("ccgate.client_address"))
            if token
            else None
        )
    except AddressRefused:
        raise ApiError(
            "forbidden", "this device may not be used from this address (its ip_cidrs)"
        ) from None
    if issued is None:
        raise ApiError("authentication_error", _BAD_TOKEN)
    return _token_view(request, issued)


router.include_router(admin)
