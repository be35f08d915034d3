"""Device enrollment: one-time-shown enrollment codes exchanged for short-lived device tokens.

A device token is an HS256 JWT signed with CCGATE_ENROLLMENT_SECRET. Each device acts as its
own key (kind ``device``), so limits, audit and usage treat it like any other key; the token
is only checked against the store on every request, so revocation takes effect at once.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from sqlalchemy.exc import IntegrityError

from ccgate.clock import utcnow as _now
from ccgate.security.keys import hash_secret, mint_key, new_id
from ccgate.store import KeyRecord, Store
from ccgate.store.enrollments import DeviceKey, DeviceRecord, EnrollmentRecord
from ccgate.store.keys import KeyPolicy

ISSUER = "ccgate"
ALGORITHM = "HS256"
CODE_PREFIX = "ccgenr_"
# Enrollment names end up inside device key names, which are at most 100 characters.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
_CODE_BYTES = 32
_JWT_SHAPE = re.compile(r"^eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*$")
_MAX_TOKEN_CHARS = 8192
_TOUCH_EVERY_SECS = 60.0


@dataclass(frozen=True)
class DeviceClaims:
    """What a verified device token says: which device, acting as which key, until when."""

    device: str
    key_id: str
    device_id: str
    enrollment: str
    issued_at: datetime
    expires_at: datetime
    jti: str


@dataclass(frozen=True)
class DeviceToken:
    """A freshly issued device token and the device it belongs to."""

    token: str
    expires_at: datetime
    ttl_secs: int
    device: DeviceRecord


@dataclass(frozen=True)
class CreatedEnrollment:
    """A new enrollment and its code (shown once; only its hash is kept)."""

    record: EnrollmentRecord
    code: str


class EnrollmentNameError(ValueError):
    """An enrollment name that is malformed or already taken."""


class EnrollmentNameTaken(EnrollmentNameError):
    """Another enrollment (active or not) already has this name."""


class BootstrapRefused(Exception):
    """A bootstrap that cannot be granted; the subclass says why."""


class InvalidEnrollmentCode(BootstrapRefused):
    """The code is unknown, expired or revoked (the caller is not told which)."""


class DeviceRevoked(BootstrapRefused):
    """This device was enrolled before and has since been revoked."""


class EnrollmentFull(BootstrapRefused):
    """The enrollment already has ``max_devices`` active devices."""


class DeviceKeyConflict(BootstrapRefused):
    """The generated key name is taken by a key that is not this device's."""


def looks_like_device_token(secret: str) -> bool:
    """True if ``secret`` has a JWT's shape (three base64url segments, a JSON header)."""
    return len(secret) <= _MAX_TOKEN_CHARS and bool(_JWT_SHAPE.fullmatch(secret))


def issue_device_token(secret: str, device: DeviceRecord, policy: KeyPolicy, *, ttl_secs: int,
                       now: datetime) -> tuple[str, datetime]:
    """Sign a token for ``device`` valid ``ttl_secs`` from ``now``; return it and its expiry."""
    issued = int(now.timestamp())
    expires = issued + ttl_secs
    claims: dict[str, Any] = {
        "iss": ISSUER, "sub": device.id, "key": device.key_id, "device_id": device.device_id,
        "enr": device.enrollment_name, "policy": policy.as_json(), "iat": issued,
        "exp": expires, "jti": secrets.token_urlsafe(16)}
    return jwt.encode(claims, secret, algorithm=ALGORITHM), datetime.fromtimestamp(expires, UTC)


def read_device_token(secret: str, token: str) -> DeviceClaims | None:
    """The claims of a token this server signed and that has not expired; None otherwise."""
    if not looks_like_device_token(token):
        return None
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], issuer=ISSUER,
                            options={"require": ["exp", "iat", "sub"]})
    except jwt.PyJWTError:
        return None
    sub, key_id, device_id = claims.get("sub"), claims.get("key"), claims.get("device_id")
    enrollment, jti = claims.get("enr"), claims.get("jti")
    if not (isinstance(sub, str) and isinstance(key_id, str) and isinstance(device_id, str)
            and isinstance(enrollment, str) and isinstance(jti, str)):
        return None
    return DeviceClaims(
        device=sub, key_id=key_id, device_id=device_id, enrollment=enrollment,
        issued_at=datetime.fromtimestamp(claims["iat"], UTC),
        expires_at=datetime.fromtimestamp(claims["exp"], UTC), jti=jti)


def device_key_name(enrollment: str, device_id: str) -> str:
    """The name of the key a device acts as: ``device-<enrollment>-<hash of device_id>``."""
    digest = hashlib.sha256(device_id.encode("utf-8")).hexdigest()[:12]
    return f"device-{enrollment}-{digest}"


class EnrollmentService:
    """Enrollments, devices and their tokens against the store."""

    def __init__(self, store: Store, secret: str, ttl_secs: int) -> None:
        self.store = store
        self._secret = secret
        self.ttl_secs = ttl_secs
        self._touched: dict[str, float] = {}

    async def create(self, name: str, policy: KeyPolicy, *, max_devices: int,
                     expires_at: datetime | None) -> CreatedEnrollment:
        """Create an enrollment; its code is returned here and never again."""
        if not NAME_PATTERN.fullmatch(name):
            raise EnrollmentNameError(f"enrollment name {name!r} must be 1-80 letters, digits, "
                                      "'.', '_' or '-', starting with a letter or digit")
        code = CODE_PREFIX + secrets.token_urlsafe(_CODE_BYTES)
        try:
            record = await self.store.enrollments.insert(
                enrollment_id=new_id("enr"), name=name, code_hash=hash_secret(code),
                policy=policy, max_devices=max_devices, now=_now(), expires_at=expires_at)
        except IntegrityError:
            raise EnrollmentNameTaken(f"an enrollment named {name!r} already exists") from None
        return CreatedEnrollment(record, code)

    async def revoke(self, name: str) -> bool:
        """Close an enrollment and revoke all its devices; False if no active one matched."""
        return await self.store.enrollments.revoke(name, _now())

    async def devices(self, enrollment: str | None = None) -> list[DeviceRecord]:
        """Every enrolled device, or those of one enrollment."""
        return await self.store.enrollments.devices(enrollment)

    async def revoke_device(self, device_row_id: str) -> bool:
        """Revoke a device and its key; its tokens fail from the next request on."""
        return await self.store.enrollments.revoke_device(device_row_id, _now())

    async def bootstrap(self, code: str, device_id: str) -> DeviceToken:
        """Exchange an enrollment code for a token; the same device_id gets the same device.

        Raise a ``BootstrapRefused`` subclass when the code, device or slot count says no.
        """
        now = _now()
        enrollment = await self.store.enrollments.by_code_hash(hash_secret(code))
        if enrollment is None or not enrollment.open_at(now):
            raise InvalidEnrollmentCode
        device = await self.store.enrollments.device_for(enrollment.id, device_id)
        if device is None:
            device = await self._enrol(enrollment, device_id, now)
        key = await self._usable_key(device)
        if key is None:
            raise DeviceRevoked
        return await self._issue(device, key, now)

    async def refresh(self, token: str) -> DeviceToken | None:
        """A new token (new expiry and jti) for a still-valid one; None if it is not."""
        checked = await self._check(token)
        if checked is None:
            return None
        device, key = checked
        return await self._issue(device, key, _now())

    async def verify(self, token: str) -> KeyRecord | None:
        """The active key a valid device token acts as, or None."""
        checked = await self._check(token)
        if checked is None:
            return None
        _, key = checked
        now = time.monotonic()
        if now - self._touched.get(key.id, -_TOUCH_EVERY_SECS) >= _TOUCH_EVERY_SECS:
            self._touched[key.id] = now
            await self.store.keys.touch(key.id, _now())
        return key

    async def _check(self, token: str) -> tuple[DeviceRecord, KeyRecord] | None:
        claims = read_device_token(self._secret, token)
        if claims is None:
            return None
        device = await self.store.enrollments.device(claims.device)
        if device is None or device.key_id != claims.key_id:
            return None
        key = await self._usable_key(device)
        return (device, key) if key is not None else None

    async def _usable_key(self, device: DeviceRecord) -> KeyRecord | None:
        if device.revoked_at is not None:
            return None
        key = await self.store.keys.by_id(device.key_id)
        if key is None or not key.active or key.expired(_now()):
            return None
        return key

    async def _enrol(self, enrollment: EnrollmentRecord, device_id: str,
                     now: datetime) -> DeviceRecord:
        minted = mint_key()  # the secret is dropped: a device only ever presents its token
        key = DeviceKey(id=new_id("key"), name=device_key_name(enrollment.name, device_id),
                        prefix=minted.prefix, secret_hash=minted.secret_hash,
                        policy=enrollment.policy)
        try:
            device = await self.store.enrollments.add_device(
                device_row_id=new_id("dev"), enrollment_id=enrollment.id,
                device_id=device_id, key=key, now=now)
        except IntegrityError:
            # Most likely the same device enrolling twice at once: use the winner's row.
            device = await self.store.enrollments.device_for(enrollment.id, device_id)
            if device is None:
                raise DeviceKeyConflict(f"a key named {key.name!r} already exists") from None
            return device
        if device is None:
            raise EnrollmentFull
        return device

    async def _issue(self, device: DeviceRecord, key: KeyRecord, now: datetime) -> DeviceToken:
        token, expires_at = issue_device_token(self._secret, device, key.policy,
                                               ttl_secs=self.ttl_secs, now=now)
        await self.store.enrollments.touch_device(device.id, now)
        return DeviceToken(token, expires_at, self.ttl_secs, device)

    async def list(self) -> list[EnrollmentRecord]:
        """Every enrollment with its device counts; codes are never returned."""
        return await self.store.enrollments.list()
