"""Creating, listing, revoking and verifying per-app keys against the store."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from ccgate.clock import utcnow as _now
from ccgate.ids import new_id
from ccgate.policy import KeyPolicy, policy_with
from ccgate.security.keys import hash_secret, mint_key, mint_webhook_secret
from ccgate.store import KeyRecord, Store
from ccgate.store.errors import AlreadyExists

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# last_used_at is refreshed at most this often per key, so auth stays a read, not a write.
_TOUCH_EVERY_SECS = 60.0
# Keys remembered between key writes (cleared whole when full; refilled on use).
_CACHE_SIZE = 10_000


@dataclass(frozen=True)
class CreatedKey:
    """A new key: its record, its secret and its webhook signing secret (each shown once)."""

    record: KeyRecord
    secret: str
    webhook_secret: str


class KeyNameError(ValueError):
    """A key name that is malformed or already taken."""


class Keyring:
    """Per-app keys: secrets are shown once at creation and only their hashes are kept."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._touched: dict[str, float] = {}
        # secret hash -> (record, the store's change marker when it was read); SQLite only.
        self._cache: dict[str, tuple[KeyRecord, tuple[int, int, int]]] = {}

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
        except AlreadyExists:
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
        record = await self._by_hash(hash_secret(secret))
        if record is None or not record.active or record.expired(_now()):
            return None
        now = time.monotonic()
        if now - self._touched.get(record.id, -_TOUCH_EVERY_SECS) >= _TOUCH_EVERY_SECS:
            self._touched[record.id] = now
            await self.store.keys.touch(record.id, _now())
        return record

    async def _by_hash(self, secret_hash: str) -> KeyRecord | None:
        """The key row, from the cache while no key row can have changed since it was read
        (see ``Database.change_marker``: any commit of another process or connection, any
        ``api_keys`` write of this one; a revocation or policy change anywhere is seen at
        the very next request, while audit and job writes keep the cache); from the store
        otherwise, and always on PostgreSQL."""
        marker = self.store.db.change_marker()
        if marker is not None:
            cached = self._cache.get(secret_hash)
            if cached is not None and cached[1] == marker:
                return cached[0]
        record = await self.store.keys.by_hash(secret_hash)
        if marker is not None and record is not None and record.active:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[secret_hash] = (record, marker)
        return record
