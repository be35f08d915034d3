"""Per-app API keys: ``ccg_`` plus 32 random bytes, stored only as a SHA-256 hash."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass

KEY_PREFIX = "ccg_"
_SECRET_BYTES = 32
_SHOWN_PREFIX_CHARS = 12


@dataclass(frozen=True)
class MintedKey:
    """A freshly minted key: the secret (shown once), its visible prefix and its hash."""

    secret: str
    prefix: str
    secret_hash: str


def hash_secret(secret: str) -> str:
    """SHA-256 hex of a key; what the store keeps and looks keys up by."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def mint_key() -> MintedKey:
    """Create a new random key."""
    secret = KEY_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)
    return MintedKey(secret, secret[:_SHOWN_PREFIX_CHARS], hash_secret(secret))


WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 (a visible prefix, not a secret)


def mint_webhook_secret() -> str:
    """A new secret for signing one key's webhooks, in the Standard Webhooks form:
    ``whsec_`` and the standard base64 of 32 random bytes (the HMAC key)."""
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode()
