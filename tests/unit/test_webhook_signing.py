"""Webhook signatures, the receiver's recipe in docs/webhooks.md, and the public delivery view."""

from __future__ import annotations

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

from ccgate.store.webhooks import DeliveryRecord
from ccgate.webhooks import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    backoff_ceiling,
    delivery_view,
    sign,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"
Verify = Callable[[str, dict[str, str], bytes], bool]


@pytest.fixture
def verify(tmp_path: Path) -> Verify:
    """The ``verify`` function exactly as docs/webhooks.md prints it."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    assert len(blocks) == 1
    script = tmp_path / "recipe.py"
    script.write_text(blocks[0], encoding="utf-8")
    namespace: dict[str, Any] = runpy.run_path(str(script))
    return namespace["verify"]  # type: ignore[no-any-return]


def _signed(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    return {EVENT_ID_HEADER: "evt_1", TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: f"sha256={sign(secret, timestamp, body)}"}


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
        2, 4, 8, 16, 32, 64, 128, 256, 300]


def test_delivery_view_shows_public_state_in_utc() -> None:
    """The view has the documented fields, with ISO 8601 UTC times ending in Z."""
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    record = DeliveryRecord(
        id="evt_1", job_id="job_1", url="https://example.com/h", status="pending",
        attempts=2, next_attempt_at=at, lease_owner="node", lease_expires_at=at, created_at=at,
        delivered_at=None, last_status_code=500, last_error="receiver answered HTTP 500",
        history=[{"at": "2026-01-02T03:04:05Z"}])
    assert delivery_view(record) == {
        "event_id": "evt_1", "url": "https://example.com/h", "status": "pending",
        "attempts": 2, "last_status_code": 500, "last_error": "receiver answered HTTP 500",
        "next_attempt_at": "2026-01-02T03:04:05Z", "delivered_at": None}
    assert delivery_view(None) is None
