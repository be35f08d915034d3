"""Key minting: format, entropy, hashing."""

from __future__ import annotations

from ccgate.security.keys import hash_secret, mint_key


def test_minted_key_format_and_hash() -> None:
    """A key is ``ccg_`` plus at least 32 URL-safe random bytes; only its SHA-256 is kept."""
    key = mint_key()
    assert key.secret.startswith("ccg_")
    assert len(key.secret) >= 4 + 43
    assert key.secret_hash == hash_secret(key.secret)
    assert key.secret not in key.secret_hash
    assert key.prefix == key.secret[:12]


def test_minted_keys_differ() -> None:
    """Two keys never collide."""
    assert len({mint_key().secret for _ in range(50)}) == 50
