"""Device tokens: what they carry, and every way a token that should fail does fail."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from ccgate.policy import KeyPolicy
from ccgate.security.enrollment import (
    device_key_name,
    issue_device_token,
    looks_like_device_token,
    read_device_token,
)
from ccgate.security.keyring import NAME_PATTERN
from ccgate.store.enrollments import DeviceRecord

SECRET = "unit-test-enrollment-secret-0123456789"
# Tokens are checked against the real clock: each test reads the time when it runs, never at
# import (a long suite would otherwise see its tokens expire).
CREATED = datetime.now(UTC)
DEVICE = DeviceRecord(
    id="dev_1",
    enrollment_id="enr_1",
    enrollment_name="desktop",
    device_id="laptop-42",
    key_id="key_1",
    key_name="device-desktop-abc",
    created_at=CREATED,
    last_refresh_at=None,
    revoked_at=None,
)


def _token(*, now: datetime | None = None, ttl_secs: int = 3600, secret: str = SECRET) -> str:
    token, _ = issue_device_token(
        secret, DEVICE, KeyPolicy(rpm=5), ttl_secs=ttl_secs, now=now or datetime.now(UTC)
    )
    return token


def _segment(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_read_device_token_returns_the_claims_it_was_issued_with() -> None:
    """A fresh token names its device, key, enrollment and lifetime."""
    token, expires_at = issue_device_token(
        SECRET, DEVICE, KeyPolicy(rpm=5), ttl_secs=600, now=datetime.now(UTC)
    )
    claims = read_device_token(SECRET, token)
    assert claims is not None
    assert (claims.device, claims.key_id, claims.enrollment) == ("dev_1", "key_1", "desktop")
    assert claims.expires_at == expires_at
    assert (claims.expires_at - claims.issued_at).total_seconds() == 600
    raw = jwt.decode(token, options={"verify_signature": False})
    assert raw["iss"] == "ccgate" and raw["policy"]["rpm"] == 5


def test_issue_device_token_leaves_the_device_id_out() -> None:
    """The client-chosen device_id appears nowhere in a token, which travels in headers."""
    raw = jwt.decode(_token(), options={"verify_signature": False})
    assert "device_id" not in raw
    assert DEVICE.device_id not in json.dumps(raw)


def test_issue_device_token_gives_every_token_its_own_jti() -> None:
    """Two tokens for the same device at the same instant still differ by jti."""
    first, second = read_device_token(SECRET, _token()), read_device_token(SECRET, _token())
    assert first is not None and second is not None
    assert first.jti != second.jti


def test_read_device_token_rejects_an_expired_token() -> None:
    """A token whose exp has passed is refused."""
    issued = datetime.now(UTC) - timedelta(hours=2)
    assert read_device_token(SECRET, _token(now=issued, ttl_secs=60)) is None


def test_read_device_token_rejects_another_secret() -> None:
    """A well-formed token signed with some other secret is refused."""
    other = _token(secret="some-other-secret-that-is-long-enough-too")
    assert read_device_token(SECRET, other) is None


def test_read_device_token_rejects_alg_none() -> None:
    """An unsigned token (``alg: none``) carrying valid claims is refused."""
    claims = jwt.decode(_token(), options={"verify_signature": False})
    unsigned = f"{_segment({'alg': 'none', 'typ': 'JWT'})}.{_segment(claims)}."
    assert looks_like_device_token(unsigned)
    assert read_device_token(SECRET, unsigned) is None


def test_read_device_token_rejects_a_tampered_payload() -> None:
    """Swapping the payload under a valid signature breaks the signature."""
    header, _, signature = _token().split(".")
    claims = jwt.decode(_token(), options={"verify_signature": False})
    forged = f"{header}.{_segment({**claims, 'sub': 'dev_someone_else'})}.{signature}"
    assert read_device_token(SECRET, forged) is None


@pytest.mark.parametrize(
    "claims",
    [
        {"iss": "someone-else"},
        {"sub": None},
        {"key": 42},
    ],
    ids=["issuer", "no-sub", "key-not-text"],
)
def test_read_device_token_rejects_tokens_missing_our_claims(claims: dict[str, object]) -> None:
    """Correctly signed tokens with another issuer or malformed claims are refused."""
    base = jwt.decode(_token(), options={"verify_signature": False})
    payload = {k: v for k, v in {**base, **claims}.items() if v is not None}
    token = jwt.encode(payload, SECRET, algorithm="HS256")
    assert read_device_token(SECRET, token) is None


@pytest.mark.parametrize(
    ("secret", "expected"),
    [
        ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", True),
        ("ccg_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", False),
        ("eyJ.only-two", False),
        ("eyJa.b.c.d", False),
        ("eyJa.b c.d", False),
    ],
)
def test_looks_like_device_token_tells_tokens_from_keys(secret: str, expected: bool) -> None:
    """Only three base64url segments starting with ``eyJ`` count as a token."""
    assert looks_like_device_token(secret) is expected


def test_device_key_name_is_a_stable_valid_key_name() -> None:
    """The generated key name is a valid key name, the same for the same device, and
    different for another device."""
    name = device_key_name("a" * 80, "My Laptop (büro) #1")
    assert NAME_PATTERN.fullmatch(name)
    assert name == device_key_name("a" * 80, "My Laptop (büro) #1")
    assert name != device_key_name("a" * 80, "My Laptop (büro) #2")
