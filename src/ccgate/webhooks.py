"""Signed webhook delivery: the outbox rows in ``webhook_deliveries``, sent through the guard.

Each finished job that asked for a callback has a delivery row (written in the transaction
that ended the job). The dispatcher leases due rows, POSTs the job object signed the Standard
Webhooks way (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``; plus the older
``X-Ccgate-*`` headers unless turned off), and records every attempt; failures are retried
with capped exponential backoff and full jitter. Delivery is at least once: receivers dedupe
on the event id, which is the ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import json
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog

from ccgate import __version__, metrics
from ccgate.clock import utcnow
from ccgate.config import Settings
from ccgate.security.keys import WEBHOOK_SECRET_PREFIX
from ccgate.security.netguard import BlockedDestination, OutboundGuard, ResponseTooLarge
from ccgate.store import JobRecord, Store
from ccgate.store.webhooks import (
    DELIVERED,
    FAILED,
    PENDING,
    Attempt,
    DeliveryRecord,
    DeliveryTable,
    Redelivery,
)

log = structlog.get_logger("ccgate.webhooks")

# Standard Webhooks (https://www.standardwebhooks.com/): what receivers' libraries check.
WEBHOOK_ID_HEADER = "webhook-id"
WEBHOOK_TIMESTAMP_HEADER = "webhook-timestamp"
WEBHOOK_SIGNATURE_HEADER = "webhook-signature"
# ccgate's own headers from before, kept for receivers written against them.
EVENT_ID_HEADER = "X-Ccgate-Event-Id"
TIMESTAMP_HEADER = "X-Ccgate-Timestamp"
SIGNATURE_HEADER = "X-Ccgate-Signature"
USER_AGENT = f"ccgate-webhooks/{__version__}"
# Receivers are expected to answer with little or nothing; only the status matters.
_MAX_RESPONSE_BYTES = 65_536

Render = Callable[[JobRecord], dict[str, Any]]


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>." + body`` under ``secret``'s UTF-8 bytes: the
    ``X-Ccgate-Signature`` value, after ``sha256=``."""
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signing_key(secret: str) -> bytes:
    """The HMAC key of a webhook secret for Standard Webhooks signatures.

    ``whsec_`` followed by valid, padded standard base64 is decoded (the form ccgate mints);
    any other secret (for example one minted before, or chosen by an admin) is its UTF-8
    bytes, which receivers pass to their library as bytes.
    """
    if secret.startswith(WEBHOOK_SECRET_PREFIX):
        try:
            key = base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX), validate=True)
        except binascii.Error:
            key = b""
        if key:
            return key
    return secret.encode("utf-8")


def sign_standard(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """One ``webhook-signature`` entry: ``v1,`` and the base64 HMAC-SHA256 under ``key`` of
    ``"<webhook-id>.<timestamp>." + body``."""
    message = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def backoff_ceiling(attempts_done: int, base: float, cap: float) -> float:
    """The largest wait before the next attempt: ``base`` doubling per attempt, up to ``cap``."""
    return float(min(cap, base * 2 ** max(0, attempts_done - 1)))


def full_jitter(ceiling: float) -> float:
    """A wait drawn uniformly from ``[0, ceiling]`` ("full jitter")."""
    # Spreads the retries of many receivers; it needs no cryptographic randomness.
    return random.uniform(0, ceiling)  # noqa: S311


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def delivery_view(record: DeliveryRecord | None) -> dict[str, Any] | None:
    """The public state of a job's webhook delivery, for the job object (None: no callback).

    ``attempt_log`` holds the newest attempts (at most ``HISTORY_LIMIT``), oldest first.
    """
    if record is None:
        return None
    return {
        "event_id": record.id,
        "url": record.url,
        "status": record.status,
        "attempts": record.attempts,
        "last_status_code": record.last_status_code,
        "last_error": record.last_error,
        "next_attempt_at": _iso(record.next_attempt_at) if record.status == PENDING else None,
        "delivered_at": _iso(record.delivered_at),
        "redeliveries": record.redeliveries,
        "attempt_log": [
            {
                "at": entry.get("at"),
                "status_code": entry.get("status_code"),
                "error": entry.get("error"),
                "duration_ms": entry.get("duration_ms"),
                "next_attempt_at": entry.get("next_attempt_at"),
            }
            for entry in record.history
        ],
    }


class WebhookDispatcher:
    """Sends due webhook deliveries from this node, each attempt under a lease."""

    def __init__(
        self,
        store: Store,
        guard: OutboundGuard,
        settings: Settings,
        render: Render,
        node_id: str,
        http: httpx.AsyncClient | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
        base_delay: float = 2.0,
        max_delay: float = 300.0,
        jitter: Callable[[float], float] = full_jitter,
        poll_secs: float = 1.0,
        max_in_flight: int = 16,
        stop_grace_secs: float = 5.0,
    ) -> None:
        """``http`` is borrowed (the caller closes it); without one the dispatcher owns one.

        ``base_delay``/``max_delay`` shape the backoff and ``jitter`` picks a wait up to its
        ceiling; tests shrink or pin them.
        """
        self.store = store
        self.guard = guard
        self.settings = settings
        self.render = render
        self.node_id = node_id
        self.clock = clock
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.jitter = jitter
        self.poll_secs = poll_secs
        self.max_in_flight = max_in_flight
        self.stop_grace_secs = stop_grace_secs
        self.deliveries = DeliveryTable(store.db)
        self._http = http
        self._owns_http = http is None
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._warned_unsigned: set[str | None] = set()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start the delivery loop."""
        self._stopping = False
        if self._http is None:
            # trust_env=False: only config.py reads os.environ, so no proxy/CA variables.
            self._http = httpx.AsyncClient(trust_env=False, follow_redirects=False)
        self._loop_task = asyncio.create_task(self._loop(), name="ccgate-webhooks")

    async def stop(self) -> None:
        """Stop claiming; let attempts in flight finish within the grace, then cancel them.

        Call it before closing the store: attempts in flight still record their outcome.
        """
        self._stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        pending = list(self._in_flight.values())
        if pending:
            _, late = await asyncio.wait(pending, timeout=self.stop_grace_secs)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        if self._owns_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    def wake(self) -> None:
        """Look for due deliveries now rather than at the next poll."""
        self._wake.set()

    async def redeliver(self, job_id: str) -> Redelivery:
        """Queue ``job_id``'s webhook again, with the same event id, and send it soon.

        At most ``CCGATE_WEBHOOK_MAX_REDELIVERIES`` times per job, and never while a
        delivery of it is pending; the result says which.
        """
        outcome = await self.deliveries.redeliver(
            job_id, self.clock(), self.settings.webhook_max_redeliveries
        )
        if outcome is Redelivery.QUEUED:
            self._wake.set()
        return outcome

    # -- the loop ----------------------------------------------------------------------

    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self._claim_and_launch()
            except Exception:
                log.exception("webhook_claim_failed")
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel from stop().
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_secs):
                    await self._wake.wait()

    async def _claim_and_launch(self) -> int:
        free = self.max_in_flight - len(self._in_flight)
        if free <= 0:
            return 0
        now = self.clock()
        lease = timedelta(seconds=self.settings.webhook_timeout_secs + 30)
        due = await self.deliveries.claim_due(self.node_id, now, now + lease, free)
        for delivery in due:
            task = asyncio.create_task(self._attempt(delivery), name=f"ccgate-hook-{delivery.id}")
            self._in_flight[delivery.id] = task
            task.add_done_callback(functools.partial(self._landed, delivery.id))
        return len(due)

    def _landed(self, delivery_id: str, _task: asyncio.Task[None]) -> None:
        self._in_flight.pop(delivery_id, None)
        self._wake.set()

    # -- one attempt -------------------------------------------------------------------

    async def _attempt(self, delivery: DeliveryRecord) -> None:
        """Send ``delivery`` once and record the outcome; never raises except on cancel."""
        try:
            outcome, terminal = await self._send(delivery)
            await self._record(delivery, outcome, terminal=terminal)
        except asyncio.CancelledError:
            # Shutting down mid-attempt: hand the row back so the next node retries it soon.
            with contextlib.suppress(Exception):
                await asyncio.shield(self.deliveries.release(delivery.id, self.node_id))
            raise
        except Exception:
            log.exception("webhook_attempt_crashed", event_id=delivery.id)

    async def _send(self, delivery: DeliveryRecord) -> tuple[Attempt, bool]:
        """POST the job once; return the attempt and whether its failure is final."""
        started_at = self.clock()
        started = time.monotonic()

        def outcome(status_code: int | None, error: str | None) -> Attempt:
            return Attempt(
                at=started_at,
                status_code=status_code,
                error=error,
                duration_ms=int((time.monotonic() - started) * 1000),
            )

        job = await self.store.jobs.get(delivery.job_id)
        if job is None:
            return outcome(None, "the job no longer exists"), True
        body = json.dumps(self.render(job), separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8"
        )
        headers = await self._headers(delivery, job, body, started_at)
        assert self._http is not None, "start() the dispatcher before sending"
        timeout = self.settings.webhook_timeout_secs
        try:
            response = await self.guard.send(
                self._http,
                "POST",
                delivery.url,
                headers=headers,
                content=body,
                timeout=timeout,
                max_response_bytes=_MAX_RESPONSE_BYTES,
            )
            code = response.status_code
        except ResponseTooLarge as exc:
            code = exc.status_code
        except BlockedDestination as exc:
            log.warning("webhook_blocked", event_id=delivery.id, reason=exc.detail)
            return outcome(None, f"blocked: {exc.reason}"), True
        except (TimeoutError, httpx.TimeoutException):
            return outcome(None, f"timed out after {timeout:g}s"), False
        except OSError:
            return outcome(None, "the receiver's host name did not resolve"), False
        except httpx.HTTPError as exc:
            return outcome(None, f"request failed: {type(exc).__name__}"), False
        if 200 <= code < 300:
            return outcome(code, None), False
        return outcome(code, f"receiver answered HTTP {code}"), False

    async def _headers(
        self, delivery: DeliveryRecord, job: JobRecord, body: bytes, now: datetime
    ) -> dict[str, str]:
        timestamp = int(now.timestamp())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            WEBHOOK_ID_HEADER: delivery.id,
            WEBHOOK_TIMESTAMP_HEADER: str(timestamp),
        }
        legacy = self.settings.webhook_legacy_headers
        if legacy:
            headers[EVENT_ID_HEADER] = delivery.id
            headers[TIMESTAMP_HEADER] = str(timestamp)
        secrets: list[str] = []
        kind = None
        if job.key_id is not None:
            found = await self.deliveries.signing_secrets(job.key_id)
            secrets, kind = found.active(now), found.kind
        # The shared secret never signs a device's webhooks: any device could then get
        # payloads of its own making signed with what other receivers trust.
        if not secrets and kind != "device" and self.settings.webhook_secret:
            secrets = [self.settings.webhook_secret]
        if secrets:
            # During a rotation's grace the old secret signs too, after the new one.
            headers[WEBHOOK_SIGNATURE_HEADER] = " ".join(
                sign_standard(signing_key(s), delivery.id, timestamp, body) for s in secrets
            )
            if legacy:
                headers[SIGNATURE_HEADER] = f"sha256={sign(secrets[0], timestamp, body)}"
        elif job.key_id not in self._warned_unsigned:
            self._warned_unsigned.add(job.key_id)
            log.warning(
                "webhook_unsigned",
                key_id=job.key_id,
                hint="set CCGATE_WEBHOOK_SECRET or a key webhook secret",
            )
        return headers

    async def _record(self, delivery: DeliveryRecord, attempt: Attempt, *, terminal: bool) -> None:
        if attempt.error is None:
            status, next_at = DELIVERED, None
        elif terminal:
            status, next_at = FAILED, None
        else:
            status, next_at = self._retry_or_fail(delivery, attempt)
        saved = await self.deliveries.record(
            delivery.id, owner=self.node_id, attempt=attempt, status=status, next_attempt_at=next_at
        )
        if saved is None:
            log.warning("webhook_lease_lost", event_id=delivery.id)
            return
        metrics.webhook_attempted("retry" if next_at is not None else status)
        if next_at is not None:
            delay = (next_at - self.clock()).total_seconds()
            asyncio.get_running_loop().call_later(max(0.0, delay), self._wake.set)
        level = log.info if status != FAILED else log.warning
        level(
            "webhook_attempt",
            event_id=delivery.id,
            job_id=delivery.job_id,
            status=status,
            attempts=saved.attempts,
            status_code=attempt.status_code,
            error=attempt.error,
        )

    def _retry_or_fail(
        self, delivery: DeliveryRecord, attempt: Attempt
    ) -> tuple[str, datetime | None]:
        # Limits count within the round: a redelivery gets a full set of retries again.
        done = delivery.round_attempts + 1
        if done >= self.settings.webhook_max_attempts:
            return FAILED, None
        ceiling = backoff_ceiling(done, self.base_delay, self.max_delay)
        next_at = attempt.at + timedelta(seconds=self.jitter(ceiling))
        first = delivery.round_started_at or attempt.at
        if next_at > first + timedelta(seconds=self.settings.webhook_retry_span_secs):
            return FAILED, None
        return PENDING, next_at
