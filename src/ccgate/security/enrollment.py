"""Device enrollment: one-time-shown enrollment codes exchanged for short-lived device tokens.

A device token is an HS256 JWT signed with CCGATE_ENROLLMENT_SECRET. Each device acts as its
own key (kind ``device``), so limits, audit and usage treat it like any other key; the token
is only checked against the store on every request, so revocation takes effect at once.

The ``device_id`` an app sends names an installation but proves nothing: at its first
bootstrap a device gets a **device secret** (shown once, stored hashed) that it must show to
bootstrap again as that device, and a webhook secret of its own. Tokens carry the device's
row id, never the ``device_id``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt

from ccgate.clock import utcnow as _now
from ccgate.ids import new_id
from ccgate.policy import KeyPolicy
from ccgate.security.keys import hash_secret, mint_key, mint_webhook_secret
from ccgate.security.netrules import IPAddress, key_allows
from ccgate.store import KeyRecord, Store
from ccgate.store.enrollments import DeviceKey, DeviceRecord, EnrollmentRecord
from ccgate.store.errors import AlreadyExists

ISSUER = "ccgate"
ALGORITHM = "HS256"
CODE_PREFIX = "ccgenr_"
DEVICE_SECRET_PREFIX = "ccgdev_"  # noqa: S105 (a visible prefix, not a secret)
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
    enrollment: str
    issued_at: datetime
    expires_at: datetime
    jti: str


@dataclass(frozen=True)
class DeviceToken:
    """A freshly issued device token and the device it belongs to.

    ``device_secret`` and ``webhook_secret`` are set only when they were just minted (a first
    bootstrap, or the first refresh of a device enrolled before device secrets existed): they
    are shown this once and never again.
    """

    token: str
    expires_at: datetime
    ttl_secs: int
    device: DeviceRecord
    device_secret: str | None = None
    webhook_secret: str | None = None


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


class DeviceSecretRefused(BootstrapRefused):
    """This device_id is enrolled and the device secret sent with it is missing or wrong."""


class AddressRefused(BootstrapRefused):
    """The client address is outside the enrollment's (or the device key's) ``ip_cidrs``;
    raised by refresh too."""


def looks_like_device_token(secret: str) -> bool:
    """True if ``secret`` has a JWT's shape (three base64url segments, a JSON header)."""
    return len(secret) <= _MAX_TOKEN_CHARS and bool(_JWT_SHAPE.fullmatch(secret))


def issue_device_token(
    secret: str, device: DeviceRecord, policy: KeyPolicy, *, ttl_secs: int, now: datetime
) -> tuple[str, datetime]:
    """Sign a token for ``device`` valid ``ttl_secs`` from ``now``; return it and its expiry."""
    issued = int(now.timestamp())
    expires = issued + ttl_secs
    # The client-chosen device_id stays out: tokens travel, and it must not leak with them.
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": device.id,
        "key": device.key_id,
        "enr": device.enrollment_name,
        "policy": policy.as_json(),
        "iat": issued,
        "exp": expires,
        "jti": secrets.token_urlsafe(16),
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM), datetime.fromtimestamp(expires, UTC)


def read_device_token(secret: str, token: str) -> DeviceClaims | None:
    """The claims of a token this server signed and that has not expired; None otherwise."""
    if not looks_like_device_token(token):
        return None
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub"]},
        )
    except jwt.PyJWTError:
        return None
    sub, key_id = claims.get("sub"), claims.get("key")
    enrollment, jti = claims.get("enr"), claims.get("jti")
    if not (
        isinstance(sub, str)
        and isinstance(key_id, str)
        and isinstance(enrollment, str)
        and isinstance(jti, str)
    ):
        return None
    return DeviceClaims(
        device=sub,
        key_id=key_id,
        enrollment=enrollment,
        issued_at=datetime.fromtimestamp(claims["iat"], UTC),
        expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        jti=jti,
    )


def mint_device_secret() -> str:
    """A new device secret: ``ccgdev_`` plus 32 random bytes."""
    return DEVICE_SECRET_PREFIX + secrets.token_urlsafe(_CODE_BYTES)


def device_secret_matches(device: DeviceRecord, presented: str | None) -> bool:
    """True if ``presented`` is this device's secret (compared as hashes, in constant time)."""
    if device.secret_hash is None or not presented:
        return False
    return hmac.compare_digest(device.secret_hash, hash_secret(presented))


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

    async def create(
        self, name: str, policy: KeyPolicy, *, max_devices: int, expires_at: datetime | None
    ) -> CreatedEnrollment:
        """Create an enrollment; its code is returned here and never again."""
        if not NAME_PATTERN.fullmatch(name):
            raise EnrollmentNameError(
                f"enrollment name {name!r} must be 1-80 letters, digits, "
                "'.', '_' or '-', starting with a letter or digit"
            )
        code = CODE_PREFIX + secrets.token_urlsafe(_CODE_BYTES)
        try:
            record = await self.store.enrollments.insert(
                enrollment_id=new_id("enr"),
                name=name,
                code_hash=hash_secret(code),
                policy=policy,
                max_devices=max_devices,
                now=_now(),
                expires_at=expires_at,
            )
        except AlreadyExists:
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

    async def bootstrap(
        self,
        code: str,
        device_id: str,
        *,
        device_secret: str | None = None,
        address: IPAddress | None = None,
    ) -> DeviceToken:
        """Exchange an enrollment code for a token.

        A new ``device_id`` enrols a device, whose token comes with its device secret and
        webhook secret (shown this once). A known one gets a new token for its device only
        with that device secret. ``address`` must lie in the enrollment's ``ip_cidrs`` (and
        the device key's). Raise a ``BootstrapRefused`` subclass when anything says no.
        """
        now = _now()
        enrollment = await self.store.enrollments.by_code_hash(hash_secret(code))
        if enrollment is None or not enrollment.open_at(now):
            raise InvalidEnrollmentCode
        if not key_allows(enrollment.policy.ip_cidrs, address):
            raise AddressRefused
        device = await self.store.enrollments.device_for(enrollment.id, device_id)
        if device is None:
            return await self._enrol(enrollment, device_id, now)
        if not device_secret_matches(device, device_secret):
            raise DeviceSecretRefused
        key = await self._usable_key(device)
        if key is None:
            raise DeviceRevoked
        if not key_allows(key.policy.ip_cidrs, address):
            raise AddressRefused
        return await self._issue(device, key, now)

    async def refresh(self, token: str, *, address: IPAddress | None = None) -> DeviceToken | None:
        """A new token (new expiry and jti) for a still-valid one; None if it is not.

        Raise AddressRefused when ``address`` is outside the device key's ``ip_cidrs``. A
        device enrolled before device secrets existed gets its secrets with this token.
        """
        checked = await self._check(token)
        if checked is None:
            return None
        device, key = checked
        if not key_allows(key.policy.ip_cidrs, address):
            raise AddressRefused
        issued = await self._issue(device, key, _now())
        if device.secret_hash is not None:
            return issued
        device_secret, webhook_secret = mint_device_secret(), mint_webhook_secret()
        secret_set, webhook_set = await self.store.enrollments.give_secrets(
            device.id, secret_hash=hash_secret(device_secret), webhook_secret=webhook_secret
        )
        return dataclasses.replace(
            issued,
            device_secret=device_secret if secret_set else None,
            webhook_secret=webhook_secret if webhook_set else None,
        )

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

    async def _enrol(
        self, enrollment: EnrollmentRecord, device_id: str, now: datetime
    ) -> DeviceToken:
        minted = mint_key()  # the key secret is dropped: a device only ever presents its token
        device_secret, webhook_secret = mint_device_secret(), mint_webhook_secret()
        key = DeviceKey(
            id=new_id("key"),
            name=device_key_name(enrollment.name, device_id),
            prefix=minted.prefix,
            secret_hash=minted.secret_hash,
            policy=enrollment.policy,
            webhook_secret=webhook_secret,
        )
        try:
            device = await self.store.enrollments.add_device(
                device_row_id=new_id("dev"),
                enrollment_id=enrollment.id,
                device_id=device_id,
                key=key,
                now=now,
                secret_hash=hash_secret(device_secret),
            )
        except AlreadyExists:
            # The same device_id enrolling twice at once: the other request won, and only it
            # holds the device secret.
            if await self.store.enrollments.device_for(enrollment.id, device_id) is not None:
                raise DeviceSecretRefused from None
            raise DeviceKeyConflict(f"a key named {key.name!r} already exists") from None
        if device is None:
            raise EnrollmentFull
        record = await self._usable_key(device)
        if record is None:
            raise DeviceRevoked
        issued = await self._issue(device, record, now)
        return dataclasses.replace(
            issued, device_secret=device_secret, webhook_secret=webhook_secret
        )

    async def _issue(self, device: DeviceRecord, key: KeyRecord, now: datetime) -> DeviceToken:
        token, expires_at = issue_device_token(
            self._secret, device, key.policy, ttl_secs=self.ttl_secs, now=now
        )
        await self.store.enrollments.touch_device(device.id, now)
        return DeviceToken(token, expires_at, self.ttl_secs, device)

    async def list(self) -> list[EnrollmentRecord]:
        """Every enrollment with its device counts; codes are never returned."""
        return await self.store.enrollments.list()
