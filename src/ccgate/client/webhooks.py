"""Check a webhook from ccgate: Standard Webhooks signatures, and the older X-Ccgate ones.

Standard Webhooks: ``webhook-id``, ``webhook-timestamp`` (unix seconds) and
``webhook-signature``, a space-separated list of ``v1,<base64 HMAC-SHA256>`` over
``"<id>.<timestamp>.<body>"`` under the secret's bytes (``whsec_<base64>``). Any one matching
signature passes, so a receiver keeps working while the secret is rotated.

The older form: ``X-Ccgate-Signature: sha256=<hex HMAC-SHA256>`` over
``"<X-Ccgate-Timestamp>.<body>"`` under the secret's text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from ccgate.client.errors import WebhookVerificationError

__all__ = ["DEFAULT_TOLERANCE_SECS", "verify_webhook"]

DEFAULT_TOLERANCE_SECS = 300
SECRET_PREFIX = "whsec_"  # noqa: S105 (the prefix of the secret format, not a secret)


def _secret_keys(secret: str) -> list[bytes]:
    """The HMAC keys a secret may stand for: its base64 bytes after ``whsec_``, its text."""
    keys = []
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        decoded = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if decoded:
        keys.append(decoded)
    keys.append(secret.encode("utf-8"))
    return keys


def _check_timestamp(raw: str, tolerance: float, now: float) -> None:
    if not raw.isdigit() or len(raw) > 12:
        raise WebhookVerificationError("the webhook timestamp is not a number of seconds")
    if abs(now - int(raw)) > tolerance:
        raise WebhookVerificationError("the webhook timestamp is too old or too far ahead")


def _standard(
    body: bytes, headers: Mapping[str, str], keys: list[bytes], tolerance: float, now: float
) -> None:
    event_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    if not event_id or not timestamp:
        raise WebhookVerificationError("webhook-id or webhook-timestamp is missing")
    _check_timestamp(timestamp, tolerance, now)
    message = f"{event_id}.{timestamp}.".encode() + body
    expected = [hmac.new(key, message, hashlib.sha256).digest() for key in keys]
    for item in headers.get("webhook-signature", "").split(" "):
        version, _, encoded = item.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if any(hmac.compare_digest(given, digest) for digest in expected):
            return
    raise WebhookVerificationError("no webhook signature matches the secret")


def _legacy(
    body: bytes, headers: Mapping[str, str], keys: list[bytes], tolerance: float, now: float
) -> None:
    timestamp = headers.get("x-ccgate-timestamp", "")
    _check_timestamp(timestamp, tolerance, now)
    message = f"{timestamp}.".encode() + body
    given = headers.get("x-ccgate-signature", "")
    for key in keys:
        expected = "sha256=" + hmac.new(key, message, hashlib.sha256).hexdigest()
        if hmac.compare_digest(expected.encode(), given.encode()):
            return
    raise WebhookVerificationError("the X-Ccgate-Signature does not match the secret")


def verify_webhook(
    payload: bytes | str,
    headers: Mapping[str, str],
    secret: str,
    *,
    tolerance_secs: float = DEFAULT_TOLERANCE_SECS,
    now: float | None = None,
) -> dict[str, Any]:
    """The webhook's JSON body once its signature and timestamp check out.

    ``payload`` is the raw body exactly as received (before any JSON parsing), ``headers``
    the request's headers (any case), ``secret`` the key's webhook secret. Raises
    ``WebhookVerificationError`` for a missing, wrong or stale signature (older or newer than
    ``tolerance_secs``, five minutes by default).
    """
    body = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    if not secret:
        raise WebhookVerificationError("no webhook secret given")
    lowered = {name.lower(): value for name, value in headers.items()}
    keys = _secret_keys(secret)
    moment = time.time() if now is None else now
    if "webhook-signature" in lowered:
        _standard(body, lowered, keys, tolerance_secs, moment)
    elif "x-ccgate-signature" in lowered:
        _legacy(body, lowered, keys, tolerance_secs, moment)
    else:
        raise WebhookVerificationError("the webhook carries no signature")
    try:
        parsed = json.loads(body)
    except ValueError as exc:
        raise WebhookVerificationError("the webhook body is not JSON") from exc
    if not isinstance(parsed, dict):
        raise WebhookVerificationError("the webhook body is not a JSON object")
    return parsed
