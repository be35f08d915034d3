"""Creating, listing, revoking and verifying per-app keys against the store."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import IntegrityError

from ccgate.clock import utcnow as _now
from ccgate.security.keys import hash_secret, mint_key, mint_webhook_secret, new_id
from ccgate.store import KeyRecord, Store
from ccgate.store.keys import POLICY_FIELDS, KeyPolicy

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# last_used_at is refreshed at most this often per key, so auth stays a read, not a write.
_TOUCH_EVERY_SECS = 60.0


@dataclass(frozen=True)
class CreatedKey:
    """A new key: its record, its secret and its webhook signing secret (each shown once)."""

    record: KeyRecord
    secret: str
    webhook_secret: str


class KeyNameError(ValueError):
    """A key name that is malformed or already taken."""


class PolicyError(ValueError):
    """A policy field given a value it cannot take; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


_MAX_INT = 2**31 - 1  # the limit columns are 32-bit integers
_MAX_NAME_CHARS = 200


def policy_with(base: KeyPolicy, changes: Mapping[str, object]) -> KeyPolicy:
    """``base`` with each of ``changes`` checked and applied; None clears that limit.

    Raises PolicyError naming the first field that is unknown or has a bad value.
    """
    values: dict[str, object] = {}
    for field, value in changes.items():
        if field not in POLICY_FIELDS:
            raise PolicyError(field, "not a policy field")
        values[field] = None if value is None else _checked(field, value)
    return dataclasses.replace(base, **values)  # type: ignore[arg-type]


def _checked(field: str, value: object) -> object:
    if field in ("rpm", "rpd", "tokens_per_day", "concurrency"):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_INT:
            raise PolicyError(field, f"must be a whole number from 1 to {_MAX_INT}")
        return value
    if field == "budget_usd_per_month":
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise PolicyError(field, "must be a number of US dollars, 0 or more")
        return float(value)
    if field == "window_share":
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not 0 < value <= 1
        ):
            raise PolicyError(field, "must be a fraction above 0 and at most 1")
        return float(value)
    if field == "expires_at":
        return _future_time(field, value)
    names = _names(field, value)
    if field == "ip_cidrs":
        try:
            return tuple(dict.fromkeys(str(ipaddress.ip_network(n, strict=False)) for n in names))
        except ValueError as exc:
            raise PolicyError(field, str(exc)) from None
    return names


def _names(field: str, value: object) -> tuple[str, ...]:
    if (
        not isinstance(value, list | tuple)
        or not value
        or not all(
            isinstance(n, str) and n and n == n.strip() and len(n) <= _MAX_NAME_CHARS for n in value
        )
    ):
        raise PolicyError(
            field,
            f"must be a non-empty list of names (1-{_MAX_NAME_CHARS} "
            "characters, no surrounding spaces); null allows any",
        )
    return tuple(dict.fromkeys(value))


def _future_time(field: str, value: object) -> datetime:
    when = value
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise PolicyError(field, f"{value!r} is not an ISO 8601 date or time") from None
    if not isinstance(when, datetime):
        raise PolicyError(field, "must be an ISO 8601 date or time")
    try:
        when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except OverflowError:
        raise PolicyError(field, "must fall between the years 1 and 9999 in UTC") from None
    if when <= _now():
        raise PolicyError(field, "must be in the future")
    return when


class Keyring:
    """Per-app keys: secrets are shown once at creation and only their hashes are kept."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._touched: dict[str, float] = {}

    async def create(
        self,
        name: str,
        policy: KeyPolicy | None = None,
        *,
        webhook_secret: str | None = None,
        kind: str = "app",
    ) -> CreatedKey:
        """Mint a key named ``name``; return its record and the secret (never stored).

        The key also gets its own webhook signing secret (minted unless one is given).
        """
        if not NAME_PATTERN.fullmatch(name):
            raise KeyNameError(
                f"key name {name!r} must be 1-100 letters, digits, '.', '_' or "
                "'-', starting with a letter or digit"
            )
        minted = mint_key()
        webhook_secret = webhook_secret or mint_webhook_secret()
        try:
            record = await self.store.keys.insert(
                key_id=new_id("key"),
                name=name,
                prefix=minted.prefix,
                secret_hash=minted.secret_hash,
                now=_now(),
                webhook_secret=webhook_secret,
                policy=policy,
                kind=kind,
            )
        except IntegrityError:
            raise KeyNameError(f"a key named {name!r} already exists") from None
        return CreatedKey(record, minted.secret, webhook_secret)

    async def list(self) -> list[KeyRecord]:
        """Every key, revoked ones included, without secrets."""
        return await self.store.keys.list()

    async def update(self, name: str, changes: Mapping[str, object]) -> KeyRecord | None:
        """Apply policy ``changes`` to an active key (see ``policy_with``); None: no such key.

        The key's very next request is checked against the new policy.
        """
        record = await self.store.keys.by_name(name)
        if record is None or not record.active:
            return None
        policy = policy_with(record.policy, changes)
        if not await self.store.keys.update_policy(name, policy):
            return None
        return dataclasses.replace(record, policy=policy)

    async def rotate_webhook_secret(self, name: str, grace_secs: float = 0) -> str | None:
        """Give a key a new webhook signing secret and return it (None: no such active key).

        The old secret keeps signing next to the new one for ``grace_secs`` (0: it stops at
        once), so receivers can switch without dropping a webhook.
        """
        secret = mint_webhook_secret()
        until = _now() + timedelta(seconds=grace_secs) if grace_secs > 0 else None
        changed = await self.store.keys.set_webhook_secret(name, secret, previous_until=until)
        return secret if changed else None

    async def revoke(self, name: str) -> bool:
        """Revoke a key; the very next request with it fails. False if no active key matched."""
        return await self.store.keys.revoke(name, _now())

    async def verify(self, secret: str) -> KeyRecord | None:
        """Return the active key whose secret this is, or None.

        The lookup is by SHA-256 of a high-entropy secret, so the index comparison leaks
        nothing useful about any stored key.
        """
        if not secret:
            return None
        record = await self.store.keys.by_hash(hash_secret(secret))
        if record is None or not record.active or record.expired(_now()):
            return None
        now = time.monotonic()
        if now - self._touched.get(record.id, -_TOUCH_EVERY_SECS) >= _TOUCH_EVERY_SECS:
            self._touched[record.id] = now
            await self.store.keys.touch(record.id, _now())
        return record
