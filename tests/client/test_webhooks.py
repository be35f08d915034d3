"""``verify_webhook``: Standard Webhooks signatures, the X-Ccgate ones, and a real delivery."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import pytest

from ccgate.client import AsyncClient, WebhookVerificationError, verify_webhook
from tests.client.conftest import Gateway
from tests.support.webhook_receiver import WebhookReceiver

SECRET_BYTES = b"0123456789abcdef0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(SECRET_BYTES).decode()
BODY = b'{"job_id":"job_1","status":"completed","result":"hi"}'


def spec_signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, written out from the spec."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def spec_headers(signature: str, timestamp: int | None = None) -> dict[str, str]:
    """Standard Webhooks headers for ``BODY`` as message ``msg_1``."""
    stamp = int(time.time()) if timestamp is None else timestamp
    return {"Webhook-Id": "msg_1", "Webhook-Timestamp": str(stamp), "Webhook-Signature": signature}


def test_verify_webhook_accepts_a_spec_signature() -> None:
    """A body signed as the spec says verifies and comes back parsed."""
    now = int(time.time())
    headers = spec_headers(spec_signature(SECRET_BYTES, "msg_1", now, BODY), now)
    assert verify_webhook(BODY, headers, SECRET)["job_id"] == "job_1"


def test_verify_webhook_accepts_any_one_of_several_signatures() -> None:
    """During a secret rotation one matching signature among several is enough."""
    now = int(time.time())
    old = spec_signature(b"another secret entirely", "msg_1", now, BODY)
    new = spec_signature(SECRET_BYTES, "msg_1", now, BODY)
    assert verify_webhook(BODY, spec_headers(f"{old} {new}", now), SECRET)["status"] == "completed"


@pytest.mark.parametrize(
    ("body", "age"), [(BODY.replace(b"hi", b"ho"), 0), (BODY, 301), (BODY, -301)]
)
def test_verify_webhook_refuses_a_changed_body_or_a_stale_timestamp(body: bytes, age: int) -> None:
    """A changed body, or a timestamp more than five minutes off, is refused."""
    stamp = int(time.time()) - age
    headers = spec_headers(spec_signature(SECRET_BYTES, "msg_1", stamp, BODY), stamp)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, headers, SECRET)


def test_verify_webhook_refuses_an_unsigned_webhook() -> None:
    """A webhook with no signature header is refused."""
    with pytest.raises(WebhookVerificationError, match="no signature"):
        verify_webhook(BODY, {"Content-Type": "application/json"}, SECRET)


def test_verify_webhook_accepts_the_x_ccgate_signature() -> None:
    """The older ``X-Ccgate-Signature: sha256=<hex>`` over ``timestamp.body`` still verifies."""
    stamp = str(int(time.time()))
    mac = hmac.new(SECRET.encode(), stamp.encode() + b"." + BODY, hashlib.sha256).hexdigest()
    headers = {"X-Ccgate-Timestamp": stamp, "X-Ccgate-Signature": f"sha256={mac}"}
    assert verify_webhook(BODY, headers, SECRET)["result"] == "hi"
    with pytest.raises(WebhookVerificationError):
        verify_webhook(BODY, {**headers, "X-Ccgate-Signature": "sha256=00"}, SECRET)


def test_verify_webhook_agrees_with_the_standardwebhooks_package() -> None:
    """What the spec's own Python library signs verifies here, and the reverse."""
    from datetime import UTC, datetime

    from standardwebhooks.webhooks import Webhook

    library = Webhook(SECRET)
    now = datetime.now(tz=UTC)
    signature = library.sign("msg_1", now, BODY.decode())
    headers = spec_headers(signature, int(now.timestamp()))
    assert verify_webhook(BODY, headers, SECRET)["job_id"] == "job_1"
    ours = spec_signature(SECRET_BYTES, "msg_1", int(now.timestamp()), BODY)
    assert library.verify(BODY, spec_headers(ours, int(now.timestamp())))["job_id"] == "job_1"


async def test_verify_webhook_accepts_a_real_delivery(gateway: Gateway) -> None:
    """A webhook ccgate really sent for a job verifies with the key's webhook secret."""
    key, secret = gateway.create_key()
    receiver = await WebhookReceiver().start()
    try:
        async with AsyncClient(gateway.url, key) as gate:
            job = await gate.submit("deliver me", callback_url=receiver.url)
            await gate.wait(job["job_id"], timeout=30)
        for _ in range(200):
            if receiver.received:
                break
            await asyncio.sleep(0.05)
    finally:
        await receiver.close()
    delivered = receiver.received[0]
    payload = verify_webhook(delivered.body, delivered.headers, secret)
    assert payload["job_id"] == job["job_id"]
    with pytest.raises(WebhookVerificationError):
        verify_webhook(delivered.body, delivered.headers, "whsec_" + "A" * 32)
    assert json.loads(delivered.body)["status"] == "completed"
