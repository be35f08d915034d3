"""SQL for device enrollment: enrollment codes (hashed) and the devices enrolled with them.

Each device acts as its own ``api_keys`` row (kind ``device``), so its row and its key are
written in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from ccgate.policy import KeyPolicy, policy_from_json, policy_to_json, policy_to_row
from ccgate.store.engine import Database
from ccgate.store.errors import AlreadyExists
from ccgate.store.schema import api_keys, devices, enrollments


@dataclass(frozen=True)
class EnrollmentRecord:
    """One enrollment: the policy its devices get, how many may enrol and until when."""

    id: str
    name: str
    policy: KeyPolicy
    max_devices: int
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    devices_active: int = 0
    devices_revoked: int = 0

    def open_at(self, now: datetime) -> bool:
        """True while new devices may enrol: neither revoked nor expired."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True)
class DeviceRecord:
    """One enrolled device and the key it acts as."""

    id: str
    enrollment_id: str
    enrollment_name: str
    device_id: str
    key_id: str
    key_name: str
    created_at: datetime
    last_refresh_at: datetime | None
    revoked_at: datetime | None
    # SHA-256 of the device secret; None for a device enrolled before device secrets existed.
    secret_hash: str | None = None


@dataclass(frozen=True)
class DeviceKey:
    """The ``api_keys`` row minted for a new device (its key secret is never stored or shown)."""

    id: str
    name: str
    prefix: str
    secret_hash: str
    policy: KeyPolicy
    webhook_secret: str | None = None


# A device is cut off when its row or its key is revoked (``ccgate keys revoke`` counts too).
_DEVICE_REVOKED_AT = sa.func.coalesce(devices.c.revoked_at, api_keys.c.revoked_at)


def _device_count(enrollment_id: Any, *, revoked: bool) -> sa.Select[Any]:
    condition = _DEVICE_REVOKED_AT.is_not(None) if revoked else _DEVICE_REVOKED_AT.is_(None)
    return (
        sa.select(sa.func.count())
        .select_from(devices)
        .join(api_keys, devices.c.key_id == api_keys.c.id)
        .where(devices.c.enrollment_id == enrollment_id, condition)
    )


_ENROLLMENT_COLUMNS = (
    enrollments.c.id,
    enrollments.c.name,
    enrollments.c.policy,
    enrollments.c.max_devices,
    enrollments.c.created_at,
    enrollments.c.expires_at,
    enrollments.c.revoked_at,
)
_DEVICE_QUERY = (
    sa.select(
        devices.c.id,
        devices.c.enrollment_id,
        devices.c.device_id,
        devices.c.key_id,
        devices.c.created_at,
        devices.c.last_refresh_at,
        devices.c.secret_hash,
        _DEVICE_REVOKED_AT.label("revoked_at"),
        enrollments.c.name.label("enrollment_name"),
        api_keys.c.name.label("key_name"),
    )
    .join(enrollments, devices.c.enrollment_id == enrollments.c.id)
    .join(api_keys, devices.c.key_id == api_keys.c.id)
)


def _enrollment(row: Any, *, counted: bool = False) -> EnrollmentRecord:
    m = row._mapping
    return EnrollmentRecord(
        id=m["id"],
        name=m["name"],
        policy=policy_from_json(m["policy"]),
        max_devices=m["max_devices"],
        created_at=m["created_at"],
        expires_at=m["expires_at"],
        revoked_at=m["revoked_at"],
        devices_active=m["devices_active"] if counted else 0,
        devices_revoked=m["devices_revoked"] if counted else 0,
    )


def _device(row: Any) -> DeviceRecord:
    m = row._mapping
    return DeviceRecord(
        id=m["id"],
        enrollment_id=m["enrollment_id"],
        enrollment_name=m["enrollment_name"],
        device_id=m["device_id"],
        key_id=m["key_id"],
        key_name=m["key_name"],
        created_at=m["created_at"],
        last_refresh_at=m["last_refresh_at"],
        revoked_at=m["revoked_at"],
        secret_hash=m["secret_hash"],
    )


class EnrollmentTable:
    """Inserts, finds and revokes enrollments and their devices."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(
        self,
        *,
        enrollment_id: str,
        name: str,
        code_hash: str,
        policy: KeyPolicy,
        max_devices: int,
        now: datetime,
        expires_at: datetime | None,
    ) -> EnrollmentRecord:
        """Store a new enrollment; raise AlreadyExists if the name is taken."""
        query = enrollments.insert().values(
            id=enrollment_id,
            name=name,
            code_hash=code_hash,
            policy=policy_to_json(policy),
            max_devices=max_devices,
            created_at=now,
            expires_at=expires_at,
        )
        try:
            await self.db.write(lambda conn: conn.execute(query))
        except IntegrityError:
            raise AlreadyExists(name) from None
        return EnrollmentRecord(enrollment_id, name, policy, max_devices, now, expires_at, None)

    async def by_code_hash(self, code_hash: str) -> EnrollmentRecord | None:
        """The enrollment whose code hashes to ``code_hash``, revoked or expired or not."""
        query = sa.select(*_ENROLLMENT_COLUMNS).where(enrollments.c.code_hash == code_hash)

        def op(conn: sa.Connection) -> EnrollmentRecord | None:
            row = conn.execute(query).first()
            return _enrollment(row) if row else None

        return await self.db.read(op)

    async def revoke(self, name: str, now: datetime) -> bool:
        """Revoke an enrollment, its devices and their keys; False when it was not active."""

        def op(conn: sa.Connection) -> bool:
            enrollment_id = conn.execute(
                sa.select(enrollments.c.id).where(
                    enrollments.c.name == name, enrollments.c.revoked_at.is_(None)
                )
            ).scalar()
            if enrollment_id is None:
                return False
            conn.execute(
                enrollments.update().where(enrollments.c.id == enrollment_id).values(revoked_at=now)
            )
            keys = sa.select(devices.c.key_id).where(devices.c.enrollment_id == enrollment_id)
            conn.execute(
                api_keys.update()
                .where(api_keys.c.id.in_(keys), api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            conn.execute(
                devices.update()
                .where(devices.c.enrollment_id == enrollment_id, devices.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            return True

        return await self.db.write(op)

    async def device(self, device_row_id: str) -> DeviceRecord | None:
        """A device by its row id (``dev_…``)."""
        return await self._one_device(devices.c.id == device_row_id)

    async def device_for(self, enrollment_id: str, device_id: str) -> DeviceRecord | None:
        """The device that enrolled as ``device_id`` with this enrollment, if any."""
        return await self._one_device(
            devices.c.enrollment_id == enrollment_id, devices.c.device_id == device_id
        )

    async def devices(self, enrollment_name: str | None = None) -> list[DeviceRecord]:
        """Every device (of one enrollment when named), oldest first."""
        query = _DEVICE_QUERY.order_by(devices.c.created_at, devices.c.id)
        if enrollment_name is not None:
            query = query.where(enrollments.c.name == enrollment_name)
        return await self.db.read(lambda conn: [_device(r) for r in conn.execute(query)])

    async def add_device(
        self,
        *,
        device_row_id: str,
        enrollment_id: str,
        device_id: str,
        key: DeviceKey,
        now: datetime,
        secret_hash: str | None = None,
    ) -> DeviceRecord | None:
        """Insert a device (with the hash of its device secret) and its key in one transaction.

        None when the enrollment is revoked or already has ``max_devices`` active devices.
        Raise AlreadyExists if the device or the key name already exists.
        """

        def op(conn: sa.Connection) -> DeviceRecord | None:
            # FOR UPDATE (PostgreSQL) serialises concurrent enrolments of one enrollment;
            # SQLite writes are serial already and ignore it.
            row = conn.execute(
                sa.select(enrollments.c.name, enrollments.c.max_devices)
                .where(enrollments.c.id == enrollment_id, enrollments.c.revoked_at.is_(None))
                .with_for_update()
            ).first()
            if row is None:
                return None
            active = conn.execute(_device_count(enrollment_id, revoked=False)).scalar_one()
            if active >= row.max_devices:
                return None
            conn.execute(
                api_keys.insert().values(
                    id=key.id,
                    name=key.name,
                    prefix=key.prefix,
                    secret_hash=key.secret_hash,
                    created_at=now,
                    kind="device",
                    webhook_secret=key.webhook_secret,
                    **policy_to_row(key.policy),
                )
            )
            conn.execute(
                devices.insert().values(
                    id=device_row_id,
                    enrollment_id=enrollment_id,
                    device_id=device_id,
                    key_id=key.id,
                    secret_hash=secret_hash,
                    created_at=now,
                    last_refresh_at=now,
                )
            )
            return DeviceRecord(
                device_row_id,
                enrollment_id,
                row.name,
                device_id,
                key.id,
                key.name,
                now,
                now,
                None,
                secret_hash,
            )

        try:
            return await self.db.write(op)
        except IntegrityError:
            raise AlreadyExists(device_id) from None

    async def revoke_device(self, device_row_id: str, now: datetime) -> bool:
        """Revoke a device and its key; False when it was not active."""

        def op(conn: sa.Connection) -> bool:
            key_id = conn.execute(
                sa.select(devices.c.key_id).where(
                    devices.c.id == device_row_id, devices.c.revoked_at.is_(None)
                )
            ).scalar()
            if key_id is None:
                return False
            conn.execute(
                devices.update().where(devices.c.id == device_row_id).values(revoked_at=now)
            )
            conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            return True

        return await self.db.write(op)

    async def give_secrets(
        self, device_row_id: str, *, secret_hash: str, webhook_secret: str
    ) -> tuple[bool, bool]:
        """Give a device enrolled before device secrets existed its secret, and its key a
        webhook secret when it has none. Only where still missing, so of two racing refreshes
        one wins and the other changes nothing. Return which of the two were set."""

        def op(conn: sa.Connection) -> tuple[bool, bool]:
            key_id = conn.execute(
                sa.select(devices.c.key_id).where(devices.c.id == device_row_id)
            ).scalar()
            if key_id is None:
                return False, False
            secret_set = (
                conn.execute(
                    devices.update()
                    .where(devices.c.id == device_row_id, devices.c.secret_hash.is_(None))
                    .values(secret_hash=secret_hash)
                ).rowcount
                == 1
            )
            if not secret_set:
                return False, False
            webhook_set = (
                conn.execute(
                    api_keys.update()
                    .where(api_keys.c.id == key_id, api_keys.c.webhook_secret.is_(None))
                    .values(webhook_secret=webhook_secret)
                ).rowcount
                == 1
            )
            return secret_set, webhook_set

        return await self.db.write(op)

    async def touch_device(self, device_row_id: str, now: datetime) -> None:
        """Record that a token was just issued to this device."""
        query = devices.update().where(devices.c.id == device_row_id).values(last_refresh_at=now)
        await self.db.write(lambda conn: conn.execute(query))

    async def _one_device(self, *where: sa.ColumnElement[bool]) -> DeviceRecord | None:
        query = _DEVICE_QUERY.where(*where)

        def op(conn: sa.Connection) -> DeviceRecord | None:
            row = conn.execute(query).first()
            return _device(row) if row else None

        return await self.db.read(op)

    async def list(self) -> list[EnrollmentRecord]:
        """Every enrollment with its device counts, oldest first."""
        query = sa.select(
            *_ENROLLMENT_COLUMNS,
            _device_count(enrollments.c.id, revoked=False)
            .scalar_subquery()
            .label("devices_active"),
            _device_count(enrollments.c.id, revoked=True)
            .scalar_subquery()
            .label("devices_revoked"),
        ).order_by(enrollments.c.created_at)
        return await self.db.read(
            lambda conn: [_enrollment(r, counted=True) for r in conn.execute(query)]
        )
