"""Device enrollment end to end: admin routes, bootstrap, refresh, device tokens at the doors."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from ccgate.api.deps import app_services
from ccgate.clock import utcnow
from ccgate.ids import new_id
from ccgate.policy import KeyPolicy
from ccgate.security.enrollment import (
    DeviceSecretRefused,
    DeviceToken,
    EnrollmentFull,
    EnrollmentService,
    issue_device_token,
)
from ccgate.security.keys import hash_secret
from ccgate.store import Store
from ccgate.store.enrollments import DeviceKey
from ccgate.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tests.integration.conftest import Gateway
from tests.support.webhook_receiver import Received, WebhookReceiver

SECRET = "integration-enrollment-secret-0123456789"
ADMIN = "admin-token-for-enrollment-tests"
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}
GatewayFactory = Callable[..., Any]


async def _gateway(gateway_factory: GatewayFactory, **env: Any) -> Gateway:
    settings = {"CCGATE_ENROLLMENT_SECRET": SECRET, "CCGATE_ADMIN_TOKEN": ADMIN, **env}
    return await gateway_factory(**settings)  # type: ignore[no-any-return]


def _service(gw: Gateway) -> EnrollmentService:
    """The gateway's enrollment service (every gateway here is built with enrollment on)."""
    service = app_services(gw.app).enrollment
    assert service is not None
    return service


async def _enrollment(gw: Gateway, **body: Any) -> str:
    """Create an enrollment through the admin API and return its code."""
    response = await gw.client.post(
        "/admin/enrollments", headers=ADMIN_AUTH, json={"name": "desktop", **body}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["enrollment_code"])


async def _bootstrap(
    gw: Gateway, code: str | None, device_id: str = "laptop-1", device_secret: str | None = None
) -> httpx.Response:
    body = {"device_id": device_id} | ({"enrollment_code": code} if code is not None else {})
    if device_secret is not None:
        body["device_secret"] = device_secret
    return await gw.client.post("/v1/bootstrap", json=body)


async def _token(gw: Gateway, code: str, device_id: str = "laptop-1") -> str:
    response = await _bootstrap(gw, code, device_id)
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


async def _jobs(gw: Gateway, token: str) -> httpx.Response:
    return await gw.client.get("/api/v1/jobs", headers=gw.auth(token))


def _segment(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_bootstrap_token_runs_a_prompt_as_the_device(gateway_factory: GatewayFactory) -> None:
    """A bootstrapped token authenticates a run, which is recorded under the device's key."""
    gw = await _gateway(gateway_factory)
    response = await _bootstrap(gw, await _enrollment(gw), "Alice's MacBook")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["device"]["device_id"] == "Alice's MacBook"
    run = await gw.client.post("/api/v1/run", json={"prompt": "hi"}, headers=gw.auth(body["token"]))
    assert run.status_code == 200, run.text
    assert run.json()["result"] == "reply: hi"
    key = await app_services(gw.app).store.keys.by_name(body["device"]["key_name"])
    assert key is not None
    assert key.kind == "device" and key.last_used_at is not None


async def test_device_token_works_at_the_anthropic_door(gateway_factory: GatewayFactory) -> None:
    """A device token in X-API-Key is accepted by /v1/messages like any key."""
    gw = await _gateway(gateway_factory)
    token = await _token(gw, await _enrollment(gw))
    response = await gw.client.post(
        "/v1/messages",
        headers={"x-api-key": token, "anthropic-version": "2023-06-01"},
        json={"model": "sonnet", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["text"] == "reply: hi"


@pytest.mark.parametrize(
    "code", [None, "", "ccgenr_not-a-real-code"], ids=["none", "empty", "wrong"]
)
async def test_bootstrap_without_a_valid_code_is_401(
    gateway_factory: GatewayFactory, code: str | None
) -> None:
    """A missing, empty or unknown code gets 401 with the one shared message."""
    gw = await _gateway(gateway_factory)
    await _enrollment(gw)
    response = await _bootstrap(gw, code)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "authentication_error"
    assert error["message"] == "invalid, expired or revoked enrollment code"


async def test_bootstrap_with_an_expired_or_revoked_code_is_401(
    gateway_factory: GatewayFactory,
) -> None:
    """Expired and revoked codes get the same 401 as an unknown one."""
    gw = await _gateway(gateway_factory)
    expired = await _service(gw).create(
        "old", KeyPolicy(), max_devices=5, expires_at=utcnow() - timedelta(seconds=1)
    )
    revoked = await _enrollment(gw)
    assert (
        await gw.client.delete("/admin/enrollments/desktop", headers=ADMIN_AUTH)
    ).status_code == 204
    for code in (expired.code, revoked):
        response = await _bootstrap(gw, code)
        assert response.status_code == 401
        assert response.json()["error"]["message"] == (
            "invalid, expired or revoked enrollment code"
        )


async def test_bootstrap_same_device_twice_reuses_the_device(
    gateway_factory: GatewayFactory,
) -> None:
    """The same device_id with the same code and its device secret gets a new token for the
    same device, and no secret is shown again."""
    gw = await _gateway(gateway_factory)
    code = await _enrollment(gw, max_devices=1)
    first = (await _bootstrap(gw, code)).json()
    second = (await _bootstrap(gw, code, device_secret=first["device_secret"])).json()
    assert first["device"]["id"] == second["device"]["id"]
    assert first["token"] != second["token"]
    assert "device_secret" not in second and "webhook_secret" not in second
    listed = (await gw.client.get("/admin/devices", headers=ADMIN_AUTH)).json()["data"]
    assert [d["id"] for d in listed] == [first["device"]["id"]]
    assert (await _jobs(gw, first["token"])).status_code == 200


async def test_bootstrap_past_max_devices_is_403(gateway_factory: GatewayFactory) -> None:
    """Once max_devices devices are active, a new device is refused until one is revoked."""
    gw = await _gateway(gateway_factory)
    code = await _enrollment(gw, max_devices=2)
    await _token(gw, code, "one")
    second = (await _bootstrap(gw, code, "two")).json()["device"]
    response = await _bootstrap(gw, code, "three")
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "forbidden"
    await gw.client.delete(f"/admin/devices/{second['id']}", headers=ADMIN_AUTH)
    assert (await _bootstrap(gw, code, "three")).status_code == 200


async def test_device_token_expired_is_401(gateway_factory: GatewayFactory) -> None:
    """A correctly signed token past its exp is refused at the door and by refresh."""
    gw = await _gateway(gateway_factory)
    code = await _enrollment(gw)
    await _token(gw, code)
    device = (await _service(gw).devices())[0]
    stale, _ = issue_device_token(
        SECRET, device, KeyPolicy(), ttl_secs=60, now=utcnow() - timedelta(minutes=5)
    )
    response = await _jobs(gw, stale)
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "invalid, expired or revoked device token"
    refreshed = await gw.client.post("/v1/refresh", headers=gw.auth(stale))
    assert refreshed.status_code == 401


async def test_revoked_device_fails_on_the_next_request(gateway_factory: GatewayFactory) -> None:
    """Revoking a device makes its live token, its refresh and its re-bootstrap fail."""
    gw = await _gateway(gateway_factory)
    code = await _enrollment(gw)
    issued = (await _bootstrap(gw, code)).json()
    token, secret = issued["token"], issued["device_secret"]
    assert (await _jobs(gw, token)).status_code == 200
    device = (await gw.client.get("/admin/devices", headers=ADMIN_AUTH)).json()["data"][0]
    revoke = await gw.client.delete(f"/admin/devices/{device['id']}", headers=ADMIN_AUTH)
    assert revoke.status_code == 204
    assert (await _jobs(gw, token)).status_code == 401
    assert (await gw.client.post("/v1/refresh", headers=gw.auth(token))).status_code == 401
    again = await _bootstrap(gw, code, device_secret=secret)
    assert again.status_code == 401
    assert again.json()["error"]["message"] == "this device has been revoked"


async def test_revoking_a_device_key_cuts_the_device_off(gateway_factory: GatewayFactory) -> None:
    """Revoking the device's key (as `ccgate keys revoke` does) revokes the device, frees
    its slot, and its token fails."""
    gw = await _gateway(gateway_factory)
    code = await _enrollment(gw, max_devices=1)
    issued = (await _bootstrap(gw, code, "one")).json()
    assert await app_services(gw.app).keyring.revoke(issued["device"]["key_name"])
    assert (await _jobs(gw, issued["token"])).status_code == 401
    device = (await gw.client.get("/admin/devices", headers=ADMIN_AUTH)).json()["data"][0]
    assert device["status"] == "revoked"
    assert (await _bootstrap(gw, code, "one")).status_code == 401
    assert (await _bootstrap(gw, code, "two")).status_code == 200


async def test_revoking_an_enrollment_revokes_its_devices(gateway_factory: GatewayFactory) -> None:
    """DELETE /admin/enrollments/{name} stops its devices' tokens and shows in the listing."""
    gw = await _gateway(gateway_factory)
    code = await _enrollment(gw, max_devices=3)
    tokens = [await _token(gw, code, name) for name in ("a", "b")]
    assert (
        await gw.client.delete("/admin/enrollments/desktop", headers=ADMIN_AUTH)
    ).status_code == 204
    for token in tokens:
        assert (await _jobs(gw, token)).status_code == 401
    listed = (await gw.client.get("/admin/enrollments", headers=ADMIN_AUTH)).json()["data"]
    assert listed[0]["status"] == "revoked"
    assert (listed[0]["devices_active"], listed[0]["devices_revoked"]) == (0, 2)
    assert "enrollment_code" not in listed[0]


@pytest.mark.parametrize("forgery", ["wrong-secret", "alg-none", "tampered"])
async def test_forged_device_tokens_are_401(gateway_factory: GatewayFactory, forgery: str) -> None:
    """Tokens signed with another secret, unsigned, or with an edited payload are refused."""
    gw = await _gateway(gateway_factory)
    token = await _token(gw, await _enrollment(gw))
    header, payload, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = {
        "wrong-secret": jwt.encode(
            claims, "another-secret-of-at-least-32-characters", algorithm="HS256"
        ),
        "alg-none": f"{_segment({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "tampered": f"{header}.{_segment({**claims, 'exp': claims['exp'] + 86400})}.{signature}",
    }[forgery]
    response = await _jobs(gw, forged)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


async def test_refresh_returns_a_working_token_with_a_later_expiry(
    gateway_factory: GatewayFactory,
) -> None:
    """POST /v1/refresh with a valid token returns a new token (new jti, later exp) that works."""
    gw = await _gateway(gateway_factory, CCGATE_DEVICE_TOKEN_TTL_SECS="600")
    token = await _token(gw, await _enrollment(gw))
    device = (await _service(gw).devices())[0]
    older, _ = issue_device_token(
        SECRET, device, KeyPolicy(), ttl_secs=600, now=utcnow() - timedelta(minutes=5)
    )
    response = await gw.client.post("/v1/refresh", headers=gw.auth(older))
    assert response.status_code == 200, response.text
    fresh = response.json()["token"]
    old_claims, new_claims = (
        jwt.decode(t, options={"verify_signature": False}) for t in (older, fresh)
    )
    assert new_claims["exp"] > old_claims["exp"] and new_claims["jti"] != old_claims["jti"]
    assert response.json()["expires_in"] == 600
    assert (await _jobs(gw, fresh)).status_code == 200
    assert token != fresh


async def test_refresh_refuses_an_api_key_or_nothing(gateway_factory: GatewayFactory) -> None:
    """Refresh only takes a device token: an app key or no header gets 401."""
    gw = await _gateway(gateway_factory)
    assert (await gw.client.post("/v1/refresh", headers=gw.auth())).status_code == 401
    assert (await gw.client.post("/v1/refresh")).status_code == 401


async def test_device_gets_the_enrollment_policy(gateway_factory: GatewayFactory) -> None:
    """Each device's key carries the enrollment's policy, and the doors enforce it."""
    gw = await _gateway(gateway_factory)
    response = await _bootstrap(gw, await _enrollment(gw, rpm=7, models=["haiku"]))
    body = response.json()
    run = await gw.client.post(
        "/api/v1/run", json={"prompt": "hi", "model": "sonnet"}, headers=gw.auth(body["token"])
    )
    assert run.status_code == 403
    assert run.json()["error"]["type"] == "model_not_allowed"
    key = await app_services(gw.app).store.keys.by_name(body["device"]["key_name"])
    assert key is not None
    assert key.policy.rpm == 7 and key.policy.models == ("haiku",)
    listed = (await gw.client.get("/admin/enrollments", headers=ADMIN_AUTH)).json()["data"]
    assert listed[0]["policy"]["rpm"] == 7 and listed[0]["devices_active"] == 1


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/bootstrap"),
        ("POST", "/v1/refresh"),
        ("GET", "/admin/enrollments"),
        ("POST", "/admin/enrollments"),
        ("GET", "/admin/devices"),
        ("DELETE", "/admin/devices/dev_x"),
    ],
)
async def test_enrollment_routes_are_404_when_the_feature_is_off(
    gateway_factory: GatewayFactory, method: str, path: str
) -> None:
    """Without CCGATE_ENROLLMENT_SECRET every enrollment route says how to turn it on."""
    gw = await gateway_factory(CCGATE_ADMIN_TOKEN=ADMIN)
    response = await gw.client.request(
        method, path, headers=ADMIN_AUTH, json={"device_id": "x", "enrollment_code": "y"}
    )
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "feature_disabled"
    assert "CCGATE_ENROLLMENT_SECRET" in error["message"]


async def test_enrollment_admin_routes_need_the_admin_token(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    """Enrollment admin routes answer 401 to a wrong token, an app key or none."""
    gw = await _gateway(gateway_factory)
    for headers in ({}, gw.auth(), gw.auth("not-the-admin-token")):
        response = await gw.client.post("/admin/enrollments", json={"name": "x"}, headers=headers)
        assert response.status_code == 401
        assert (await gw.client.get("/admin/devices", headers=headers)).status_code == 401
    off = await gateway_factory(
        CCGATE_ENROLLMENT_SECRET=SECRET, CCGATE_DATABASE_URL=f"sqlite:///{tmp_path / 'off.db'}"
    )
    response = await off.client.get("/admin/enrollments", headers=ADMIN_AUTH)
    assert response.json()["error"]["type"] == "admin_disabled"


async def test_create_enrollment_shows_the_code_once(gateway_factory: GatewayFactory) -> None:
    """The code is high-entropy, returned at creation only, and stored only as a hash."""
    gw = await _gateway(gateway_factory)
    response = await gw.client.post(
        "/admin/enrollments", headers=ADMIN_AUTH, json={"name": "desktop", "ttl_secs": 3600}
    )
    body = response.json()
    assert body["enrollment_code"].startswith("ccgenr_") and len(body["enrollment_code"]) > 40
    assert body["max_devices"] == 1 and body["expires_at"] is not None
    listing = (await gw.client.get("/admin/enrollments", headers=ADMIN_AUTH)).text
    assert body["enrollment_code"] not in listing
    store: Store = app_services(gw.app).store
    assert await store.enrollments.by_code_hash(hash_secret(body["enrollment_code"]))
    dup = await gw.client.post("/admin/enrollments", headers=ADMIN_AUTH, json={"name": "desktop"})
    assert dup.status_code == 409


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "bad name"}, "name"),
        ({"name": "x", "rpm": 0}, "rpm"),
        ({"name": "x", "ip_cidrs": ["not-a-network"]}, "ip_cidrs"),
        ({"name": "x", "max_devices": 0}, "max_devices"),
        ({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "x", "expires_at": "0001-01-01T00:00:00+14:00"}, "expires_at"),
        ({"name": "x", "expires_at": "9999-12-31T23:59:59.999999-14:00"}, "expires_at"),
        ({"name": "x", "ttl_secs": 60, "expires_at": "2999-01-01T00:00:00Z"}, None),
    ],
)
async def test_create_enrollment_rejects_bad_fields(
    gateway_factory: GatewayFactory, body: dict[str, Any], param: str | None
) -> None:
    """A bad name, limit, network, slot count or expiry is a 400 naming the field."""
    gw = await _gateway(gateway_factory)
    response = await gw.client.post("/admin/enrollments", headers=ADMIN_AUTH, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    assert error.get("param") == param


@pytest.mark.parametrize("device_id", ["", "x" * 201, "tab\there", "nul\x00"])
async def test_bootstrap_rejects_a_bad_device_id(
    gateway_factory: GatewayFactory, device_id: str
) -> None:
    """device_id must be 1-200 printable characters: anything else is a 400."""
    gw = await _gateway(gateway_factory)
    response = await _bootstrap(gw, await _enrollment(gw), device_id)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "device_id"


async def test_enrollment_table_stops_at_max_devices(store: Store) -> None:
    """add_device refuses a device past max_devices and counts only active ones."""
    now = utcnow()
    enrollment = await store.enrollments.insert(
        enrollment_id=new_id("enr"),
        name="e",
        code_hash=hash_secret("c"),
        policy=KeyPolicy(rpm=3),
        max_devices=1,
        now=now,
        expires_at=None,
    )

    def key(n: int) -> DeviceKey:
        return DeviceKey(
            id=f"key_{n}",
            name=f"device-e-{n}",
            prefix="ccg_x",
            secret_hash=hash_secret(f"s{n}"),
            policy=enrollment.policy,
        )

    first = await store.enrollments.add_device(
        device_row_id="dev_1", enrollment_id=enrollment.id, device_id="one", key=key(1), now=now
    )
    assert first is not None
    assert (
        await store.enrollments.add_device(
            device_row_id="dev_2", enrollment_id=enrollment.id, device_id="two", key=key(2), now=now
        )
        is None
    )
    assert await store.enrollments.revoke_device("dev_1", now)
    assert (await store.keys.by_id("key_1")).revoked_at is not None  # type: ignore[union-attr]
    assert await store.enrollments.add_device(
        device_row_id="dev_2", enrollment_id=enrollment.id, device_id="two", key=key(2), now=now
    )
    assert (await store.keys.by_id("key_2")).policy.rpm == 3  # type: ignore[union-attr]


async def test_enrollment_service_concurrent_bootstraps_respect_the_rules(store: Store) -> None:
    """At once: one device_id enrolling thrice gets one device, and only one caller its
    secret; new devices past max_devices are refused (on PostgreSQL these really race)."""
    service = EnrollmentService(store, SECRET, 600)
    code = (await service.create("race", KeyPolicy(), max_devices=2, expires_at=None)).code
    same = await asyncio.gather(
        *(service.bootstrap(code, "laptop") for _ in range(3)), return_exceptions=True
    )
    won = [issued for issued in same if isinstance(issued, DeviceToken)]
    assert len(won) == 1 and won[0].device_secret is not None
    assert all(isinstance(o, DeviceSecretRefused) for o in same if o is not won[0])
    assert len(await service.devices()) == 1
    others = await asyncio.gather(
        *(service.bootstrap(code, f"pc-{n}") for n in range(4)), return_exceptions=True
    )
    assert sum(isinstance(o, EnrollmentFull) for o in others) == 3
    assert len([d for d in await service.devices() if d.revoked_at is None]) == 2


async def test_bootstrap_shows_the_device_and_webhook_secrets_once(
    gateway_factory: GatewayFactory,
) -> None:
    """A first bootstrap returns a device secret and a webhook secret; the store keeps only
    the device secret's hash, and the device's key signs with that webhook secret."""
    gw = await _gateway(gateway_factory)
    body = (await _bootstrap(gw, await _enrollment(gw))).json()
    assert body["device_secret"].startswith("ccgdev_")
    assert body["webhook_secret"].startswith("whsec_")
    [device] = await _service(gw).devices()
    assert device.secret_hash == hash_secret(body["device_secret"])
    store: Store = app_services(gw.app).store
    assert await store.webhooks.signing_secret(device.key_id) == (body["webhook_secret"], "device")


@pytest.mark.parametrize(
    "presented", [None, "", "ccgdev_not-the-secret"], ids=["none", "empty", "wrong"]
)
async def test_bootstrap_a_known_device_id_without_its_secret_is_401(
    gateway_factory: GatewayFactory, presented: str | None
) -> None:
    """The code plus a device_id seen elsewhere, without that device's secret, gets 401 in
    the documented shape and no token, so it can neither act as the device nor read its jobs."""
    gw = await _gateway(gateway_factory)
    code = await _enrollment(gw)
    await _token(gw, code, "laptop-1")
    response = await _bootstrap(gw, code, "laptop-1", device_secret=presented)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "authentication_error" and error["param"] == "device_secret"
    assert "token" not in response.json()


async def test_device_token_does_not_carry_the_device_id(gateway_factory: GatewayFactory) -> None:
    """A token names its device by the opaque row id; the app's device_id is nowhere in it."""
    gw = await _gateway(gateway_factory)
    body = (await _bootstrap(gw, await _enrollment(gw), "Alice-MacBook-5b0c")).json()
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert claims["sub"] == body["device"]["id"]
    assert "device_id" not in claims and "Alice-MacBook-5b0c" not in json.dumps(claims)


async def _legacy_device_token(gw: Gateway, code: str, device_id: str = "old-laptop") -> str:
    """Enrol ``device_id`` as before device secrets existed (no secret, no webhook secret)."""
    store: Store = app_services(gw.app).store
    enrollment = await store.enrollments.by_code_hash(hash_secret(code))
    assert enrollment is not None
    key = DeviceKey(
        id=new_id("key"),
        name=f"device-desktop-{device_id}",
        prefix="ccg_x",
        secret_hash=hash_secret(new_id("s")),
        policy=enrollment.policy,
    )
    device = await store.enrollments.add_device(
        device_row_id=new_id("dev"),
        enrollment_id=enrollment.id,
        device_id=device_id,
        key=key,
        now=utcnow(),
    )
    assert device is not None and device.secret_hash is None
    token, _ = issue_device_token(SECRET, device, KeyPolicy(), ttl_secs=600, now=utcnow())
    return token


async def test_refresh_gives_an_older_device_its_secrets_once(
    gateway_factory: GatewayFactory,
) -> None:
    """A device enrolled before device secrets cannot re-bootstrap by device_id alone; its
    next refresh returns a device secret and a webhook secret, once, and re-bootstrap then
    works with that secret."""
    gw = await _gateway(gateway_factory)
    code = await _enrollment(gw)
    token = await _legacy_device_token(gw, code)
    assert (await _bootstrap(gw, code, "old-laptop")).status_code == 401
    first = await gw.client.post("/v1/refresh", headers=gw.auth(token))
    assert first.status_code == 200, first.text
    given = first.json()
    assert given["device_secret"].startswith("ccgdev_")
    assert given["webhook_secret"].startswith("whsec_")
    second = (await gw.client.post("/v1/refresh", headers=gw.auth(given["token"]))).json()
    assert "device_secret" not in second and "webhook_secret" not in second
    again = await _bootstrap(gw, code, "old-laptop", device_secret=given["device_secret"])
    assert again.status_code == 200, again.text


SHARED_WEBHOOK_SECRET = "shared-webhook-secret-for-enrollment-tests"


async def _callback_job(gw: Gateway, token: str, url: str) -> str:
    response = await gw.client.post(
        "/api/v1/jobs", headers=gw.auth(token), json={"prompt": "hi", "callback_url": url}
    )
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


async def _webhooks(receiver: WebhookReceiver, count: int) -> dict[str, Received]:
    """Wait for ``count`` webhooks; return them by job id."""
    for _ in range(500):
        if len(receiver.received) >= count:
            break
        await asyncio.sleep(0.02)
    assert len(receiver.received) == count
    return {json.loads(got.body)["job_id"]: got for got in receiver.received}


def _signature_under(secret: str, got: Received) -> str:
    return "sha256=" + sign(secret, int(got.headers[TIMESTAMP_HEADER.lower()]), got.body)


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    """A webhook receiver on loopback."""
    started = await WebhookReceiver().start()
    yield started
    await started.close()


async def test_each_device_signs_its_webhooks_with_its_own_secret(
    gateway_factory: GatewayFactory, receiver: WebhookReceiver
) -> None:
    """Two devices' webhooks carry different signatures, each valid under that device's own
    webhook secret only: never the other's, never CCGATE_WEBHOOK_SECRET."""
    gw = await _gateway(
        gateway_factory,
        CCGATE_WEBHOOK_SECRET=SHARED_WEBHOOK_SECRET,
        CCGATE_OUTBOUND_ALLOW="127.0.0.1",
    )
    code = await _enrollment(gw, max_devices=2)
    one, two = [(await _bootstrap(gw, code, name)).json() for name in ("one", "two")]
    assert one["webhook_secret"] != two["webhook_secret"]
    jobs = {await _callback_job(gw, d["token"], receiver.url): d for d in (one, two)}
    got = await _webhooks(receiver, 2)
    for job_id, device in jobs.items():
        other = two if device is one else one
        signature = got[job_id].headers[SIGNATURE_HEADER.lower()]
        assert signature == _signature_under(device["webhook_secret"], got[job_id])
        assert signature != _signature_under(other["webhook_secret"], got[job_id])
        assert signature != _signature_under(SHARED_WEBHOOK_SECRET, got[job_id])


async def test_older_device_webhooks_never_use_the_shared_secret(
    gateway_factory: GatewayFactory, receiver: WebhookReceiver
) -> None:
    """A device without a webhook secret of its own sends unsigned webhooks (not ones signed
    with CCGATE_WEBHOOK_SECRET) until its refresh gives it a secret, which then signs."""
    gw = await _gateway(
        gateway_factory,
        CCGATE_WEBHOOK_SECRET=SHARED_WEBHOOK_SECRET,
        CCGATE_OUTBOUND_ALLOW="127.0.0.1",
    )
    code = await _enrollment(gw)
    token = await _legacy_device_token(gw, code)
    before = await _callback_job(gw, token, receiver.url)
    assert SIGNATURE_HEADER.lower() not in (await _webhooks(receiver, 1))[before].headers
    given = (await gw.client.post("/v1/refresh", headers=gw.auth(token))).json()
    after = await _callback_job(gw, given["token"], receiver.url)
    got = (await _webhooks(receiver, 2))[after]
    assert got.headers[SIGNATURE_HEADER.lower()] == _signature_under(given["webhook_secret"], got)


def _client_from(gw: Gateway, peer: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=gw.app, client=(peer, 5555))
    return httpx.AsyncClient(transport=transport, base_url="http://ccgate.test")


async def test_bootstrap_outside_the_enrollment_ip_cidrs_is_403(
    gateway_factory: GatewayFactory,
) -> None:
    """A valid code used from outside the enrollment's ip_cidrs gets 403 forbidden and
    enrols nothing; from inside them it enrols the device."""
    gw = await _gateway(gateway_factory)
    code = await _enrollment(gw, ip_cidrs=["198.51.100.0/24"])
    body = {"device_id": "laptop-1", "enrollment_code": code}
    async with _client_from(gw, "203.0.113.9") as outside:
        refused = await outside.post("/v1/bootstrap", json=body)
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "forbidden"
    assert await _service(gw).devices() == []
    async with _client_from(gw, "198.51.100.4") as inside:
        assert (await inside.post("/v1/bootstrap", json=body)).status_code == 200


async def test_refresh_outside_the_device_ip_cidrs_is_403(gateway_factory: GatewayFactory) -> None:
    """A valid device token refreshed from outside its enrollment's ip_cidrs gets 403
    forbidden; from inside them it gets a new token."""
    gw = await _gateway(gateway_factory)
    code = await _enrollment(gw, ip_cidrs=["198.51.100.0/24"])
    async with (
        _client_from(gw, "198.51.100.4") as inside,
        _client_from(gw, "203.0.113.9") as outside,
    ):
        issued = await inside.post(
            "/v1/bootstrap", json={"device_id": "laptop-1", "enrollment_code": code}
        )
        token = issued.json()["token"]
        refused = await outside.post("/v1/refresh", headers=gw.auth(token))
        assert refused.status_code == 403
        assert refused.json()["error"]["type"] == "forbidden"
        assert (await inside.post("/v1/refresh", headers=gw.auth(token))).status_code == 200
