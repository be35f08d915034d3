"""Webhook delivery end to end: a real receiver on loopback, the store on each backend."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from standardwebhooks import Webhook, WebhookVerificationError

from ccgate.api.deps import app_services
from ccgate.clock import utcnow
from ccgate.config import Settings
from ccgate.ids import new_id
from ccgate.security.keyring import Keyring
from ccgate.security.netguard import OutboundGuard
from ccgate.store import JobRecord, Store
from ccgate.store.schema import api_keys
from ccgate.store.webhooks import Attempt, DeliveryRecord, DeliveryTable, insert_delivery
from ccgate.webhooks import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookDispatcher,
    delivery_view,
    sign,
)
from tests.integration.conftest import Gateway
from tests.support.fake_runner import FakeRunner
from tests.support.webhook_receiver import Received, WebhookReceiver

Dispatchers = Callable[..., Any]


def _render(job: JobRecord) -> dict[str, Any]:
    return {"job_id": job.id, "status": job.status.value}


async def _ended_job(store: Store, url: str, key_id: str | None = None) -> str:
    """Store a job and queue its delivery; return the event id."""
    now, job_id = utcnow(), new_id("job")
    await store.jobs.insert(
        job_id=job_id,
        key_id=key_id,
        door="native",
        model="sonnet",
        request={"prompt": "hi"},
        metadata=None,
        now=now,
    )
    event_id: str = await store.db.write(
        lambda conn: insert_delivery(conn, job_id=job_id, url=url, now=now)
    )
    return event_id


async def _settled(store: Store, event_id: str, timeout: float = 10) -> DeliveryRecord:
    """The delivery once it is no longer pending."""
    table, deadline = DeliveryTable(store.db), time.monotonic() + timeout
    while True:
        record = await table.get(event_id)
        assert record is not None
        if record.status != "pending" or time.monotonic() > deadline:
            return record
        await asyncio.sleep(0.02)


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Any]]:
    """Start loopback receivers answering a status script; all closed at the end."""
    started: list[WebhookReceiver] = []

    async def start(statuses: tuple[int, ...] = (), default: int = 200) -> WebhookReceiver:
        started.append(await WebhookReceiver(statuses, default).start())
        return started[-1]

    yield start
    for receiver in started:
        await receiver.close()


@pytest.fixture
async def dispatchers(make_settings: Callable[..., Settings]) -> AsyncIterator[Dispatchers]:
    """Start dispatchers with millisecond backoff and 127.0.0.1 allowed; all stopped at the end."""
    started: list[WebhookDispatcher] = []

    async def start(
        store: Store,
        *,
        http: httpx.AsyncClient | None = None,
        env: dict[str, Any] | None = None,
        **options: Any,
    ) -> WebhookDispatcher:
        settings = make_settings(**{"CCGATE_WEBHOOK_SECRET": "global-secret", **(env or {})})
        options = {"base_delay": 0.01, "max_delay": 0.05, "poll_secs": 0.05, **options}
        dispatcher = WebhookDispatcher(
            store,
            OutboundGuard(allow=["127.0.0.1"]),
            settings,
            _render,
            node_id=new_id("node"),
            http=http,
            **options,
        )
        await dispatcher.start()
        started.append(dispatcher)
        return dispatcher

    yield start
    for dispatcher in started:
        await dispatcher.stop()


async def test_webhook_dispatcher_signs_with_the_keys_secret(
    store: Store, receivers: Callable[..., Any], dispatchers: Dispatchers
) -> None:
    """The receiver gets the rendered job, signed with the key's own webhook secret."""
    receiver = await receivers()
    await store.keys.insert(
        key_id="key_1", name="app", prefix="p", secret_hash="h" * 64, now=utcnow()
    )
    await store.db.write(
        lambda conn: conn.execute(
            api_keys.update().where(api_keys.c.id == "key_1").values(webhook_secret="key-secret")
        )
    )
    event_id = await _ended_job(store, receiver.url, key_id="key_1")
    await dispatchers(store)
    assert (await _settled(store, event_id)).status == "delivered"
    [got] = receiver.received
    expected = sign("key-secret", int(got.headers[TIMESTAMP_HEADER.lower()]), got.body)
    assert got.headers[SIGNATURE_HEADER.lower()] == f"sha256={expected}"
    # A secret not in the whsec_<base64> form is keyed with its UTF-8 bytes.
    assert Webhook(b"key-secret").verify(got.body, got.headers)["job_id"].startswith("job_")
    assert got.headers[EVENT_ID_HEADER.lower()] == event_id
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"].startswith("ccgate-webhooks/")
    assert got.body.startswith(b'{"job_id":"job_')


async def test_webhook_dispatcher_retries_with_the_same_event_id(
    store: Store, receivers: Callable[..., Any], dispatchers: Dispatchers
) -> None:
    """Two 500s then a 200 make three attempts of one event, ending delivered."""
    receiver = await receivers(statuses=(500, 500))
    event_id = await _ended_job(store, receiver.url)
    await dispatchers(store)
    record = await _settled(store, event_id)
    assert record.status == "delivered"
    assert record.attempts == 3
    assert record.delivered_at is not None and record.next_attempt_at is None
    assert [h["status_code"] for h in record.history] == [500, 500, 200]
    assert {r.headers[EVENT_ID_HEADER.lower()] for r in receiver.received} == {event_id}
    assert len(receiver.received) == 3


async def test_webhook_dispatcher_fails_after_max_attempts(
    store: Store, receivers: Callable[..., Any], dispatchers: Dispatchers
) -> None:
    """A receiver that always fails gets exactly the allowed attempts; each is in the history."""
    receiver = await receivers(default=500)
    event_id = await _ended_job(store, receiver.url)
    await dispatchers(store, env={"CCGATE_WEBHOOK_MAX_ATTEMPTS": 3})
    record = await _settled(store, event_id)
    assert record.status == "failed"
    assert record.attempts == 3 and len(receiver.received) == 3
    assert record.last_status_code == 500
    assert record.last_error == "receiver answered HTTP 500"
    assert [h["error"] for h in record.history] == ["receiver answered HTTP 500"] * 3
    assert all(h["duration_ms"] >= 0 and h["at"].endswith("Z") for h in record.history)


async def test_webhook_dispatcher_gives_up_past_the_retry_span(
    store: Store, receivers: Callable[..., Any], dispatchers: Dispatchers
) -> None:
    """A retry that would fall after the retry span is not scheduled: the delivery fails."""
    receiver = await receivers(default=503)
    event_id = await _ended_job(store, receiver.url)
    await dispatchers(
        store,
        env={"CCGATE_WEBHOOK_RETRY_SPAN_SECS": 1},
        base_delay=5.0,
        max_delay=300.0,
        jitter=lambda ceiling: ceiling,
    )
    record = await _settled(store, event_id)
    assert record.status == "failed"
    assert record.attempts == 1 and len(receiver.received) == 1
    assert record.last_status_code == 503


async def test_webhook_dispatcher_blocks_private_callbacks_without_connecting(
    store: Store, dispatchers: Dispatchers
) -> None:
    """A callback to 10.x fails at once as blocked (saying only "not a public address"), and
    no request leaves the process."""
    sent: list[httpx.Request] = []

    def transport(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    event_id = await _ended_job(store, "http://10.1.2.3/hook")
    async with httpx.AsyncClient(transport=httpx.MockTransport(transport)) as http:
        await dispatchers(store, http=http)
        record = await _settled(store, event_id)
    assert record.status == "failed" and record.attempts == 1
    assert record.last_error == "blocked: not a public address"
    assert sent == []


async def test_webhook_dispatcher_never_says_what_a_blocked_name_resolved_to(
    store: Store, make_settings: Callable[..., Settings]
) -> None:
    """A callback whose host resolves to a private address fails as "blocked: not a public
    address": the delivery state never names the address; the server log does."""

    async def intranet_dns(host: str, port: int) -> list[str]:
        return ["10.9.8.7"]

    event_id = await _ended_job(store, "http://intranet.test/hook")
    dispatcher = WebhookDispatcher(
        store,
        OutboundGuard(resolver=intranet_dns),
        make_settings(),
        _render,
        node_id=new_id("node"),
        base_delay=0.01,
        max_delay=0.05,
        poll_secs=0.05,
    )
    with structlog.testing.capture_logs() as logs:
        await dispatcher.start()
        try:
            record = await _settled(store, event_id)
        finally:
            await dispatcher.stop()
    assert record.status == "failed"
    assert record.last_error == "blocked: not a public address"
    assert [e["reason"] for e in logs if e["event"] == "webhook_blocked"] == [
        "10.9.8.7: private address"
    ]


async def test_webhook_dispatcher_resumes_pending_deliveries_after_restart(
    tmp_path: Path, receivers: Callable[..., Any], dispatchers: Dispatchers
) -> None:
    """A delivery still pending when its dispatcher stops is sent by the next one."""
    url = f"sqlite:///{tmp_path}/x.db"
    receiver = await receivers(statuses=(500,))
    first_store = await Store.open(url)
    event_id = await _ended_job(first_store, receiver.url)
    first = await dispatchers(
        first_store, base_delay=1.0, max_delay=1.0, jitter=lambda ceiling: ceiling
    )
    while not receiver.received:
        await asyncio.sleep(0.02)
    await first.stop()
    paused = await DeliveryTable(first_store.db).get(event_id)
    assert paused is not None and paused.status == "pending" and paused.attempts == 1
    await first_store.close()
    second_store = await Store.open(url)
    try:
        second = await dispatchers(second_store)
        record = await _settled(second_store, event_id)
        await second.stop()
    finally:
        await second_store.close()
    assert record.status == "delivered" and record.attempts == 2
    assert len(receiver.received) == 2


async def test_webhook_deliveries_claim_leases_each_row_once(store: Store) -> None:
    """A claimed delivery is not claimable again until its lease runs out, and not before due."""
    table = DeliveryTable(store.db)
    event_id = await _ended_job(store, "https://example.com/hook")
    now = utcnow()
    [claimed] = await table.claim_due("node-a", now, now + timedelta(seconds=30), 10)
    assert claimed.id == event_id and claimed.lease_owner == "node-a"
    assert await table.claim_due("node-b", now, now + timedelta(seconds=30), 10) == []
    later = now + timedelta(seconds=31)
    [again] = await table.claim_due("node-b", later, later + timedelta(seconds=30), 10)
    assert again.lease_owner == "node-b"
    attempt = Attempt(at=later, status_code=500, error="x", duration_ms=1)
    assert (
        await table.record(
            event_id, owner="node-a", attempt=attempt, status="pending", next_attempt_at=later
        )
        is None
    )
    saved = await table.record(
        event_id,
        owner="node-b",
        attempt=attempt,
        status="pending",
        next_attempt_at=later + timedelta(seconds=60),
    )
    assert saved is not None and saved.attempts == 1 and saved.lease_owner is None
    assert await table.claim_due("node-c", later, later + timedelta(seconds=30), 10) == []
    assert (await table.for_job(saved.job_id)) == saved


async def test_webhook_dispatchers_on_two_nodes_send_each_event_once(
    store: Store, receivers: Callable[..., Any], dispatchers: Dispatchers
) -> None:
    """Two dispatchers sharing a store deliver every event exactly once between them."""
    receiver = await receivers()
    events = {await _ended_job(store, receiver.url) for _ in range(12)}
    await asyncio.gather(dispatchers(store, max_in_flight=3), dispatchers(store, max_in_flight=3))
    for event_id in events:
        assert (await _settled(store, event_id)).status == "delivered"
    sent = [r.headers[EVENT_ID_HEADER.lower()] for r in receiver.received]
    assert sorted(sent) == sorted(events)


async def test_webhook_dispatcher_retries_refused_connections(
    store: Store, dispatchers: Dispatchers
) -> None:
    """A receiver that refuses connections is retried, then failed with a neutral error."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    event_id = await _ended_job(store, f"http://127.0.0.1:{port}/hook?token=secret-token")
    await dispatchers(store, env={"CCGATE_WEBHOOK_MAX_ATTEMPTS": 2})
    record = await _settled(store, event_id)
    assert record.status == "failed" and record.attempts == 2
    assert record.last_status_code is None
    assert record.last_error == "request failed: ConnectError"


async def test_webhook_dispatcher_sends_unsigned_and_warns_once_without_a_secret(
    store: Store, receivers: Callable[..., Any], dispatchers: Dispatchers
) -> None:
    """With no secret anywhere, webhooks go out unsigned and the warning is logged once."""
    receiver = await receivers()
    events = [await _ended_job(store, receiver.url) for _ in range(2)]
    with structlog.testing.capture_logs() as logs:
        await dispatchers(store, env={"CCGATE_WEBHOOK_SECRET": ""})
        for event_id in events:
            assert (await _settled(store, event_id)).status == "delivered"
    assert len(receiver.received) == 2
    assert all(SIGNATURE_HEADER.lower() not in r.headers for r in receiver.received)
    assert [e["event"] for e in logs].count("webhook_unsigned") == 1


# -- Standard Webhooks -------------------------------------------------------------------


async def _app_key(store: Store, name: str = "app") -> tuple[str, str]:
    """Create a key the way admins do; return its id and its minted webhook secret."""
    created = await Keyring(store).create(name)
    return created.record.id, created.webhook_secret


def _signatures(got: Received) -> list[str]:
    return got.headers["webhook-signature"].split(" ")


async def test_webhook_dispatcher_delivery_verifies_with_standardwebhooks(
    store: Store, receivers: Callable[..., Any], dispatchers: Dispatchers
) -> None:
    """A delivery signed with a minted key secret passes the standardwebhooks library, its
    webhook-id is the event id and the older X-Ccgate-* headers come along by default."""
    receiver = await receivers()
    key_id, secret = await _app_key(store)
    event_id = await _ended_job(store, receiver.url, key_id=key_id)
    await dispatchers(store)
    assert (await _settled(store, event_id)).status == "delivered"
    [got] = receiver.received
    job = Webhook(secret).verify(got.body, got.headers)
    assert job["status"] == "queued" and got.headers["webhook-id"] == event_id
    assert got.headers[EVENT_ID_HEADER.lower()] == event_id
    assert got.headers[TIMESTAMP_HEADER.lower()] == got.headers["webhook-timestamp"]
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(got.body + b" ", got.headers)


async def test_webhook_dispatcher_without_legacy_headers_sends_only_standard_ones(
    store: Store, receivers: Callable[..., Any], dispatchers: Dispatchers
) -> None:
    """CCGATE_WEBHOOK_LEGACY_HEADERS=false drops every X-Ccgate-* header; the webhook still
    verifies with the standardwebhooks library."""
    receiver = await receivers()
    key_id, secret = await _app_key(store)
    event_id = await _ended_job(store, receiver.url, key_id=key_id)
    await dispatchers(store, env={"CCGATE_WEBHOOK_LEGACY_HEADERS": "false"})
    assert (await _settled(store, event_id)).status == "delivered"
    [got] = receiver.received
    assert not [name for name in got.headers if name.startswith("x-ccgate-")]
    assert Webhook(secret).verify(got.body, got.headers)["job_id"].startswith("job_")


async def test_webhook_dispatcher_signs_with_both_secrets_during_a_rotation_grace(
    store: Store, receivers: Callable[..., Any], dispatchers: Dispatchers
) -> None:
    """After a rotation, the old and the new secret both sign (either verifies) until the
    grace ends; then only the new one does and the old one no longer verifies."""
    receiver = await receivers()
    key_id, old = await _app_key(store)
    rotated_at = time.monotonic()
    new = await Keyring(store).rotate_webhook_secret("app", grace_secs=2)
    assert new is not None and new != old
    await dispatchers(store)
    first = await _ended_job(store, receiver.url, key_id=key_id)
    assert (await _settled(store, first)).status == "delivered"
    assert time.monotonic() - rotated_at < 2, "the first delivery came after the grace"
    [during] = receiver.received
    assert len(_signatures(during)) == 2
    for secret in (new, old):
        Webhook(secret).verify(during.body, during.headers)
    await asyncio.sleep(2.1 - (time.monotonic() - rotated_at))
    second = await _ended_job(store, receiver.url, key_id=key_id)
    assert (await _settled(store, second)).status == "delivered"
    after = receiver.received[1]
    assert len(_signatures(after)) == 1
    Webhook(new).verify(after.body, after.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(after.body, after.headers)


async def test_webhook_dispatcher_attempt_log_keeps_the_newest_twenty(
    store: Store, receivers: Callable[..., Any], dispatchers: Dispatchers
) -> None:
    """Each attempt is logged with its status, error, duration and the retry it scheduled;
    the log keeps the newest 20 while the attempt count keeps them all."""
    receiver = await receivers(default=500)
    event_id = await _ended_job(store, receiver.url)
    await dispatchers(store, env={"CCGATE_WEBHOOK_MAX_ATTEMPTS": 23})
    record = await _settled(store, event_id, timeout=20)
    view = delivery_view(record)
    assert view is not None and view["status"] == "failed" and view["attempts"] == 23
    log = view["attempt_log"]
    assert len(log) == 20 and len(receiver.received) == 23
    assert all(e["status_code"] == 500 and e["duration_ms"] >= 0 for e in log)
    assert all(e["next_attempt_at"] > e["at"] for e in log[:-1])
    assert log[-1]["next_attempt_at"] is None


# -- redelivery through the API ----------------------------------------------------------


async def _hooked_gateway(
    gateway_factory: Callable[..., Any], **env: Any
) -> tuple[Gateway, str, str]:
    """A gateway that may call 127.0.0.1; a key ``hooks`` (its secret, webhook secret)."""
    gateway: Gateway = await gateway_factory(FakeRunner(), CCGATE_OUTBOUND_ALLOW="127.0.0.1", **env)
    created = await app_services(gateway.app).keyring.create("hooks")
    return gateway, created.secret, created.webhook_secret


async def _job_webhook(
    gateway: Gateway, key: str, job_id: str, until: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The job's ``webhook`` object once ``until`` holds for it."""
    async with asyncio.timeout(10):
        while True:
            job = (
                await gateway.client.get(f"/api/v1/jobs/{job_id}", headers=gateway.auth(key))
            ).json()
            if job["status"] == "completed" and until(job.get("webhook") or {}):
                return job.get("webhook") or {}
            await asyncio.sleep(0.02)


async def _submit_hooked(gateway: Gateway, key: str, url: str | None) -> str:
    body: dict[str, Any] = {"prompt": "hi"} | ({"callback_url": url} if url else {})
    response = await gateway.client.post("/api/v1/jobs", json=body, headers=gateway.auth(key))
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


async def test_webhook_redeliver_sends_the_same_webhook_id_again(
    gateway_factory: Callable[..., Any], receivers: Callable[..., Any]
) -> None:
    """Redelivering a delivered webhook sends it again with the same webhook-id and a fresh
    signature; the job shows both attempts and one redelivery."""
    receiver = await receivers()
    gateway, key, secret = await _hooked_gateway(gateway_factory)
    job_id = await _submit_hooked(gateway, key, receiver.url)
    await _job_webhook(gateway, key, job_id, lambda w: w["status"] == "delivered")
    response = await gateway.client.post(
        f"/api/v1/jobs/{job_id}/webhook/redeliver", headers=gateway.auth(key)
    )
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "pending" and response.json()["redeliveries"] == 1
    hook = await _job_webhook(gateway, key, job_id, lambda w: w["status"] == "delivered")
    first, again = receiver.received
    assert first.headers["webhook-id"] == again.headers["webhook-id"] == hook["event_id"]
    assert Webhook(secret).verify(again.body, again.headers)["job_id"] == job_id
    assert hook["attempts"] == 2 and hook["redeliveries"] == 1
    assert [e["status_code"] for e in hook["attempt_log"]] == [200, 200]


async def test_webhook_redeliver_refuses_other_keys_and_jobs_without_a_webhook(
    gateway_factory: Callable[..., Any], receivers: Callable[..., Any]
) -> None:
    """Another key's job is 404; a job without callback_url or not yet ended is 409."""
    receiver = await receivers()
    gateway, key, _ = await _hooked_gateway(gateway_factory)
    hooked = await _submit_hooked(gateway, key, receiver.url)
    await _job_webhook(gateway, key, hooked, lambda w: w["status"] == "delivered")
    other = await gateway.client.post(
        f"/api/v1/jobs/{hooked}/webhook/redeliver", headers=gateway.auth()
    )
    assert other.status_code == 404 and other.json()["error"]["type"] == "not_found"
    plain = await _submit_hooked(gateway, key, None)
    await _job_webhook(gateway, key, plain, lambda w: True)
    refused = await gateway.client.post(
        f"/api/v1/jobs/{plain}/webhook/redeliver", headers=gateway.auth(key)
    )
    assert refused.status_code == 409 and refused.json()["error"]["type"] == "conflict"
    assert "no callback_url" in refused.json()["error"]["message"]
    runner = app_services(gateway.app).backend.runner
    assert isinstance(runner, FakeRunner)
    runner.block = True
    running = await _submit_hooked(gateway, key, receiver.url)
    early = await gateway.client.post(
        f"/api/v1/jobs/{running}/webhook/redeliver", headers=gateway.auth(key)
    )
    runner.released.set()
    assert early.status_code == 409 and "has not ended" in early.json()["error"]["message"]


async def test_webhook_redeliver_is_limited_to_one_pending_and_the_setting(
    gateway_factory: Callable[..., Any], receivers: Callable[..., Any]
) -> None:
    """While a delivery is pending a redelivery is 409; past CCGATE_WEBHOOK_MAX_REDELIVERIES
    it is 409 too, and nothing more is sent."""
    receiver = await receivers(statuses=(500,))
    gateway, key, _ = await _hooked_gateway(gateway_factory, CCGATE_WEBHOOK_MAX_REDELIVERIES=1)
    job_id = await _submit_hooked(gateway, key, receiver.url)
    await _job_webhook(gateway, key, job_id, lambda w: w["attempts"] >= 1)
    url = f"/api/v1/jobs/{job_id}/webhook/redeliver"
    pending = await gateway.client.post(url, headers=gateway.auth(key))
    assert pending.status_code == 409 and "pending" in pending.json()["error"]["message"]
    await _job_webhook(gateway, key, job_id, lambda w: w["status"] == "delivered")
    assert (await gateway.client.post(url, headers=gateway.auth(key))).status_code == 202
    await _job_webhook(gateway, key, job_id, lambda w: w["status"] == "delivered")
    spent = await gateway.client.post(url, headers=gateway.auth(key))
    assert spent.status_code == 409
    assert "CCGATE_WEBHOOK_MAX_REDELIVERIES" in spent.json()["error"]["message"]
    assert len(receiver.received) == 3


@pytest.mark.parametrize(
    ("env", "signing"), [({}, 2), ({"CCGATE_WEBHOOK_ROTATION_GRACE_SECS": 0}, 1)]
)
async def test_webhook_admin_rotation_keeps_the_old_secret_for_the_configured_grace(
    gateway_factory: Callable[..., Any], env: dict[str, Any], signing: int
) -> None:
    """POST /admin/keys/{name}/webhook-secret keeps the old secret signing for the default
    grace, and not at all with CCGATE_WEBHOOK_ROTATION_GRACE_SECS=0."""
    token = "t" * 40
    gateway: Gateway = await gateway_factory(FakeRunner(), CCGATE_ADMIN_TOKEN=token, **env)
    created = await app_services(gateway.app).keyring.create("hooks")
    response = await gateway.client.post(
        "/admin/keys/hooks/webhook-secret", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.text
    new = response.json()["webhook_secret"]
    found = await app_services(gateway.app).store.webhooks.signing_secrets(created.record.id)
    assert found.active(utcnow()) == [new, created.webhook_secret][:signing]
