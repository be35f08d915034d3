"""Webhook signatures, the receiver recipes in docs/webhooks.md, and the public delivery view."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import runpy
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from ccgate.security.keys import mint_webhook_secret
from ccgate.store.webhooks import DeliveryRecord, SigningSecrets
from ccgate.webhooks import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WEBHOOK_ID_HEADER,
    WEBHOOK_SIGNATURE_HEADER,
    WEBHOOK_TIMESTAMP_HEADER,
    backoff_ceiling,
    delivery_view,
    sign,
    sign_standard,
    signing_key,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"
Verify = Callable[[str, dict[str, str], bytes], bool]
Receive = Callable[[str | bytes], Callable[[dict[str, str], bytes], Any]]
# A secret minted before ccgate minted the Standard Webhooks form: URL-safe, unpadded.
OLDER_SECRET = "whsec_q-Zp3V_l9x2Hk0sT4bNw8yRcU1aEoJmGdLfIhW6vK7Q"


def _doc_block(tmp_path: Path, marker: str, **globals_: Any) -> dict[str, Any]:
    """Run the one python block of docs/webhooks.md containing ``marker``; its namespace."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    [block] = [b for b in blocks if marker in b]
    script = tmp_path / "recipe.py"
    script.write_text(block, encoding="utf-8")
    return runpy.run_path(str(script), init_globals=globals_)


@pytest.fixture
def verify(tmp_path: Path) -> Verify:
    """The older-headers ``verify`` function exactly as docs/webhooks.md prints it."""
    return _doc_block(tmp_path, "def verify(")["verify"]  # type: ignore[no-any-return]


@pytest.fixture
def receive(tmp_path: Path) -> Receive:
    """The Standard Webhooks ``receive`` recipe of docs/webhooks.md, for a given secret."""
    return lambda secret: _doc_block(tmp_path, "def receive(", WEBHOOK_SECRET=secret)["receive"]


def _standard(secret: str, body: bytes, timestamp: int, *extra: str) -> dict[str, str]:
    """Headers as ccgate sends them, signed with ``secret`` (then each of ``extra``)."""
    signatures = [sign_standard(signing_key(s), "evt_1", timestamp, body) for s in (secret, *extra)]
    return {
        WEBHOOK_ID_HEADER: "evt_1",
        WEBHOOK_TIMESTAMP_HEADER: str(timestamp),
        WEBHOOK_SIGNATURE_HEADER: " ".join(signatures),
    }


def test_mint_webhook_secret_is_whsec_and_standard_base64_of_32_bytes() -> None:
    """A new webhook secret is ``whsec_`` plus padded standard base64 of 32 random bytes."""
    secret = mint_webhook_secret()
    assert secret.startswith("whsec_") and secret != mint_webhook_secret()
    key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    assert len(key) == 32 and signing_key(secret) == key


def test_signing_key_keys_older_secrets_with_their_utf8_bytes() -> None:
    """A secret not in the padded ``whsec_<base64>`` form is keyed with its UTF-8 bytes."""
    for secret in (OLDER_SECRET, "an-admin-chosen-secret", "whsec_!!!!", "whsec_"):
        assert signing_key(secret) == secret.encode("utf-8")


def test_sign_standard_is_verified_by_the_standardwebhooks_library() -> None:
    """The standardwebhooks package accepts ccgate's signature, for a minted secret as a
    string and an older one as bytes, and refuses another secret or a changed body."""
    body = '{"job_id":"job_1","result":"héllo"}'.encode()
    now = int(time.time())
    minted = mint_webhook_secret()
    assert Webhook(minted).verify(body, _standard(minted, body, now))["result"] == "héllo"
    Webhook(OLDER_SECRET.encode()).verify(body, _standard(OLDER_SECRET, body, now))
    with pytest.raises(WebhookVerificationError):
        Webhook(mint_webhook_secret()).verify(body, _standard(minted, body, now))
    with pytest.raises(WebhookVerificationError):
        Webhook(minted).verify(body + b" ", _standard(minted, body, now))


def test_sign_standard_docs_receiver_accepts_any_one_matching_signature(receive: Receive) -> None:
    """The documented receiver accepts a webhook signed by the new and the old secret (a
    rotation), whichever of the two it holds."""
    body = b'{"status":"completed"}'
    new, old = mint_webhook_secret(), mint_webhook_secret()
    headers = _standard(new, body, int(time.time()), old)
    assert receive(new)(headers, body) == {"status": "completed"}
    assert receive(old)(headers, body) == {"status": "completed"}
    assert receive(mint_webhook_secret())(headers, body) is None


def test_sign_standard_docs_receiver_refuses_tampering_and_replays(receive: Receive) -> None:
    """The documented receiver refuses a changed body, a stale timestamp or no signature."""
    body, secret, now = b'{"status":"completed"}', mint_webhook_secret(), int(time.time())
    check = receive(secret)
    assert check(_standard(secret, body, now), body + b" ") is None
    assert check(_standard(secret, body, now - 301), body) is None
    unsigned = _standard(secret, body, now)
    del unsigned[WEBHOOK_SIGNATURE_HEADER]
    assert check(unsigned, body) is None


def test_signing_secrets_keep_the_old_secret_only_within_its_grace() -> None:
    """During a rotation's grace both secrets sign, the new one first; after it, the new one."""
    until = datetime(2026, 1, 2, tzinfo=UTC)
    found = SigningSecrets(kind="app", current="new", previous="old", previous_until=until)
    assert found.active(datetime(2026, 1, 1, tzinfo=UTC)) == ["new", "old"]
    assert found.active(until) == ["new"]
    assert SigningSecrets(kind="app", current=None).active(until) == []


def _signed(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    return {
        EVENT_ID_HEADER: "evt_1",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: f"sha256={sign(secret, timestamp, body)}",
    }


def test_sign_matches_a_manual_hmac() -> None:
    """sign() is hex HMAC-SHA256 of "<timestamp>." followed by the body."""
    body = b'{"job_id":"job_1","status":"completed"}'
    manual = hmac.new(b"whsec", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("whsec", 1700000000, body) == manual
    assert sign("other", 1700000000, body) != manual
    assert sign("whsec", 1700000001, body) != manual


def test_sign_docs_recipe_accepts_a_fresh_signed_webhook(verify: Verify) -> None:
    """The documented verify() accepts what ccgate signs with the same secret."""
    body = '{"result":"héllo"}'.encode()
    assert verify("whsec", _signed("whsec", body, int(time.time())), body)


def test_sign_docs_recipe_rejects_tampering_and_replays(verify: Verify) -> None:
    """verify() refuses another secret, a changed body, a stale timestamp or no signature."""
    body = b'{"status":"completed"}'
    now = int(time.time())
    assert not verify("other", _signed("whsec", body, now), body)
    assert not verify("whsec", _signed("whsec", body, now), body + b" ")
    assert not verify("whsec", _signed("whsec", body, now - 301), body)
    unsigned = _signed("whsec", body, now)
    del unsigned[SIGNATURE_HEADER]
    assert not verify("whsec", unsigned, body)


def test_backoff_ceiling_doubles_up_to_the_cap() -> None:
    """The wait ceiling starts at the base, doubles per attempt and stops at the cap."""
    assert [backoff_ceiling(n, 2, 300) for n in range(1, 10)] == [
        2,
        4,
        8,
        16,
        32,
        64,
        128,
        256,
        300,
    ]


def test_delivery_view_shows_public_state_in_utc() -> None:
    """The view has the documented fields, with ISO 8601 UTC times ending in Z."""
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    record = DeliveryRecord(
        id="evt_1",
        job_id="job_1",
        url="https://example.com/h",
        status="pending",
        attempts=2,
        next_attempt_at=at,
        lease_owner="node",
        lease_expires_at=at,
        created_at=at,
        delivered_at=None,
        last_status_code=500,
        last_error="receiver answered HTTP 500",
        history=[{"at": "2026-01-02T03:04:05Z"}],
    )
    assert delivery_view(record) == {
        "event_id": "evt_1",
        "url": "https://example.com/h",
        "status": "pending",
        "attempts": 2,
        "last_status_code": 500,
        "last_error": "receiver answered HTTP 500",
        "next_attempt_at": "2026-01-02T03:04:05Z",
        "delivered_at": None,
        "redeliveries": 0,
        "attempt_log": [
            {
                "at": "2026-01-02T03:04:05Z",
                "status_code": None,
                "error": None,
                "duration_ms": None,
                "next_attempt_at": None,
            }
        ],
    }
    assert delivery_view(None) is None
