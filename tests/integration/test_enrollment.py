"""Device enrollment end to end: admin routes, bootstrap, refresh, device tokens at the doors."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from ccgate.clock import utcnow
from ccgate.security.enrollment import EnrollmentFull, EnrollmentService, issue_device_token
from ccgate.security.keys import hash_secret, new_id
from ccgate.store import Store
from ccgate.store.enrollments import DeviceKey
from ccgate.store.keys import KeyPolicy
from tests.integration.conftest import Gateway

SECRET = "integration-enrollment-secret-0123456789"
ADMIN = "admin-token-for-enrollment-tests"
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}
GatewayFactory = Callable[..., Any]


async def _gateway(gateway_factory: GatewayFactory, **env: Any) -> Gateway:
    settings = {"CCGATE_ENROLLMENT_SECRET": SECRET, "CCGATE_ADMIN_TOKEN": ADMIN, **env}
    return await gateway_factory(**settings)  # type: ignore[no-any-return]


async def _enrollment(gw: Gateway, **body: Any) -> str:
    """Create an enrollment through the admin API and return its code."""
    response = await gw.client.post("/admin/enrollments", headers=ADMIN_AUTH,
                                    json={"name": "desktop", **body})
    assert response.status_code == 201, response.text
    return str(response.json()["enrollment_code"])


async def _bootstrap(gw: Gateway, code: str | None, device_id: str = "laptop-1",
                     ) -> httpx.Response:
    body = {"device_id": device_id} | ({"enrollment_code": code} if code is not None else {})
    return await gw.client.post("/v1/bootstrap", json=body)


async def _token(gw: Gateway, code: str, device_id: str = "laptop-1") -> str:
    response = await _bootstrap(gw, code, device_id)
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


async def _jobs(gw: Gateway, token: str) -> httpx.Response:
    return await gw.client.get("/api/v1/jobs", headers=gw.auth(token))


def _segment(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_bootstrap_token_runs_a_prompt_as_the_device(
        gateway_factory: GatewayFactory) -> None:
    """A bootstrapped token authenticates a run, which is recorded under the device's key."""
    gw = await _gateway(gateway_factory)
    response = await _bootstrap(gw, await _enrollment(gw), "Alice's MacBook")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["device"]["device_id"] == "Alice's MacBook"
    run = await gw.client.post("/api/v1/run", json={"prompt": "hi"},
                               headers=gw.auth(body["token"]))
    assert run.status_code == 200, run.text
    assert run.json()["result"] == "reply: hi"
    key = await gw.app.state.store.keys.by_name(body["device"]["key_name"])
    assert key.kind == "device" and key.last_used_at is not None


async def test_device_token_works_at_the_anthropic_door(
        gateway_factory: GatewayFactory) -> None:
    """A device token in X-API-Key is accepted by /v1/messages like any key."""
    gw = await _gateway(gateway_factory)
    token = await _token(gw, await _enrollment(gw))
    response = await gw.client.post(
        "/v1/messages", headers={"x-api-key": token, "anthropic-version": "2023-06-01"},
        json={"model": "sonnet", "max_tokens": 64,
              "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["text"] == "reply: hi"


@pytest.mark.parametrize("code", [None, "", "ccgenr_not-a-real-code"], ids=["none", "empty",
                                                                          "wrong"])
async def test_bootstrap_without_a_valid_code_is_401(gateway_factory: GatewayFactory,
                                                     code: str | None) -> None:
    """A missing, empty or unknown code gets 401 with the one shared message."""
    gw = await _gateway(gateway_factory)
    await _enrollment(gw)
    response = await _bootstrap(gw, code)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "authentication_error"
    assert error["message"] == "invalid, expired or revoked enrollment code"


async def test_bootstrap_with_an_expired_or_revoked_code_is_401(
        gateway_factory: GatewayFactory) -> None:
    """Expired and revoked codes get the same 401 as an unknown one."""
    gw = await _gateway(gateway_factory)
    expired = await gw.app.state.enrollment.create(
        "old", KeyPolicy(), max_devices=5, expires_at=utcnow() - timedelta(seconds=1))
    revoked = await _enrollment(gw)
    assert (await gw.client.delete("/admin/enrollments/desktop", headers=ADMIN_AUTH)
            ).status_code == 204
    for code in (expired.code, revoked):
        response = await _bootstrap(gw, code)
        assert response.status_code == 401
        assert response.json()["error"]["message"] == (
            "invalid, expired or revoked enrollment code")


async def test_bootstrap_same_device_twice_reuses_the_device(
        gateway_factory: GatewayFactory) -> None:
    """The same device_id with the same code gets a new token for the same device."""
    gw = await _gateway(gateway_factory)
    code = await _enrollment(gw, max_devices=1)
    first = (await _bootstrap(gw, code)).json()
    second = (await _bootstrap(gw, code)).json()
    assert first["device"]["id"] == second["device"]["id"]
    assert first["token"] != second["token"]
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
    device = (await gw.app.state.enrollment.devices())[0]
    stale, _ = issue_device_token(SECRET, device, KeyPolicy(), ttl_secs=60,
                                  now=utcnow() - timedelta(minutes=5))
    response = await _jobs(gw, stale)
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "invalid, expired or revoked device token"
    refreshed = await gw.client.post("/v1/refresh", headers=gw.auth(stale))
    assert refreshed.status_code == 401


async def test_revoked_device_fails_on_the_next_request(gateway_factory: GatewayFactory) -> None:
    """Revoking a device makes its live token, its refresh and its re-bootstrap fail."""
    gw = await _gateway(gateway_factory)
    code = await _enrollment(gw)
    token = await _token(gw, code)
    assert (await _jobs(gw, token)).status_code == 200
    device = (await gw.client.get("/admin/devices", headers=ADMIN_AUTH)).json()["data"][0]
    revoke = await gw.client.delete(f"/admin/devices/{device['id']}", headers=ADMIN_AUTH)
    assert revoke.status_code == 204
    assert (await _jobs(gw, token)).status_code == 401
    assert (await gw.client.post("/v1/refresh", headers=gw.auth(token))).status_code == 401
    again = await _bootstrap(gw, code)
    assert again.status_code == 401
    assert again.json()["error"]["message"] == "this device has been revoked"


async def test_revoking_a_device_key_cuts_the_device_off(
        gateway_factory: GatewayFactory) -> None:
    """Revoking the device's key (as `ccgate keys revoke` does) revokes the device, frees
    its slot, and its token fails."""
    gw = await _gateway(gateway_factory)
    code = await _enrollment(gw, max_devices=1)
    issued = (await _bootstrap(gw, code, "one")).json()
    assert await gw.app.state.keyring.revoke(issued["device"]["key_name"])
    assert (await _jobs(gw, issued["token"])).status_code == 401
    device = (await gw.client.get("/admin/devices", headers=ADMIN_AUTH)).json()["data"][0]
    assert device["status"] == "revoked"
    assert (await _bootstrap(gw, code, "one")).status_code == 401
    assert (await _bootstrap(gw, code, "two")).status_code == 200


async def test_revoking_an_enrollment_revokes_its_devices(
        gateway_factory: GatewayFactory) -> None:
    """DELETE /admin/enrollments/{name} stops its devices' tokens and shows in the listing."""
    gw = await _gateway(gateway_factory)
    code = await _enrollment(gw, max_devices=3)
    tokens = [await _token(gw, code, name) for name in ("a", "b")]
    assert (await gw.client.delete("/admin/enrollments/desktop", headers=ADMIN_AUTH)
            ).status_code == 204
    for token in tokens:
        assert (await _jobs(gw, token)).status_code == 401
    listed = (await gw.client.get("/admin/enrollments", headers=ADMIN_AUTH)).json()["data"]
    assert listed[0]["status"] == "revoked"
    assert (listed[0]["devices_active"], listed[0]["devices_revoked"]) == (0, 2)
    assert "enrollment_code" not in listed[0]


@pytest.mark.parametrize("forgery", ["wrong-secret", "alg-none", "tampered"])
async def test_forged_device_tokens_are_401(gateway_factory: GatewayFactory,
                                            forgery: str) -> None:
    """Tokens signed with another secret, unsigned, or with an edited payload are refused."""
    gw = await _gateway(gateway_factory)
    token = await _token(gw, await _enrollment(gw))
    header, payload, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = {
        "wrong-secret": jwt.encode(claims, "another-secret-of-at-least-32-characters",
                                   algorithm="HS256"),
        "alg-none": f"{_segment({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "tampered": f"{header}.{_segment({**claims, 'exp': claims['exp'] + 86400})}"
                    f".{signature}",
    }[forgery]
    response = await _jobs(gw, forged)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


async def test_refresh_returns_a_working_token_with_a_later_expiry(
        gateway_factory: GatewayFactory) -> None:
    """POST /v1/refresh with a valid token returns a new token (new jti, later exp) that works."""
    gw = await _gateway(gateway_factory, CCGATE_DEVICE_TOKEN_TTL_SECS="600")
    token = await _token(gw, await _enrollment(gw))
    device = (await gw.app.state.enrollment.devices())[0]
    older, _ = issue_device_token(SECRET, device, KeyPolicy(), ttl_secs=600,
                                  now=utcnow() - timedelta(minutes=5))
    response = await gw.client.post("/v1/refresh", headers=gw.auth(older))
    assert response.status_code == 200, response.text
    fresh = response.json()["token"]
    old_claims, new_claims = (jwt.decode(t, options={"verify_signature": False})
                              for t in (older, fresh))
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
    run = await gw.client.post("/api/v1/run", json={"prompt": "hi", "model": "sonnet"},
                               headers=gw.auth(body["token"]))
    assert run.status_code == 403
    assert run.json()["error"]["type"] == "model_not_allowed"
    key = await gw.app.state.store.keys.by_name(body["device"]["key_name"])
    assert key.policy.rpm == 7 and key.policy.models == ("haiku",)
    listed = (await gw.client.get("/admin/enrollments", headers=ADMIN_AUTH)).json()["data"]
    assert listed[0]["policy"]["rpm"] == 7 and listed[0]["devices_active"] == 1


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/bootstrap"), ("POST", "/v1/refresh"), ("GET", "/admin/enrollments"),
    ("POST", "/admin/enrollments"), ("GET", "/admin/devices"),
    ("DELETE", "/admin/devices/dev_x"),
])
async def test_enrollment_routes_are_404_when_the_feature_is_off(
        gateway_factory: GatewayFactory, method: str, path: str) -> None:
    """Without CCGATE_ENROLLMENT_SECRET every enrollment route says how to turn it on."""
    gw = await gateway_factory(CCGATE_ADMIN_TOKEN=ADMIN)
    response = await gw.client.request(method, path, headers=ADMIN_AUTH,
                                       json={"device_id": "x", "enrollment_code": "y"})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "feature_disabled"
    assert "CCGATE_ENROLLMENT_SECRET" in error["message"]


async def test_enrollment_admin_routes_need_the_admin_token(
        gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    """Enrollment admin routes answer 401 to a wrong token, an app key or none."""
    gw = await _gateway(gateway_factory)
    for headers in ({}, gw.auth(), gw.auth("not-the-admin-token")):
        response = await gw.client.post("/admin/enrollments", json={"name": "x"},
                                        headers=headers)
        assert response.status_code == 401
        assert (await gw.client.get("/admin/devices", headers=headers)).status_code == 401
    off = await gateway_factory(CCGATE_ENROLLMENT_SECRET=SECRET,
                                CCGATE_DATABASE_URL=f"sqlite:///{tmp_path / 'off.db'}")
    response = await off.client.get("/admin/enrollments", headers=ADMIN_AUTH)
    assert response.json()["error"]["type"] == "admin_disabled"


async def test_create_enrollment_shows_the_code_once(gateway_factory: GatewayFactory) -> None:
    """The code is high-entropy, returned at creation only, and stored only as a hash."""
    gw = await _gateway(gateway_factory)
    response = await gw.client.post("/admin/enrollments", headers=ADMIN_AUTH,
                                    json={"name": "desktop", "ttl_secs": 3600})
    body = response.json()
    assert body["enrollment_code"].startswith("ccgenr_") and len(body["enrollment_code"]) > 40
    assert body["max_devices"] == 1 and body["expires_at"] is not None
    listing = (await gw.client.get("/admin/enrollments", headers=ADMIN_AUTH)).text
    assert body["enrollment_code"] not in listing
    store: Store = gw.app.state.store
    assert await store.enrollments.by_code_hash(hash_secret(body["enrollment_code"]))
    dup = await gw.client.post("/admin/enrollments", headers=ADMIN_AUTH, json={"name": "desktop"})
    assert dup.status_code == 409


@pytest.mark.parametrize(("body", "param"), [
    ({"name": "bad name"}, "name"),
    ({"name": "x", "rpm": 0}, "rpm"),
    ({"name": "x", "ip_cidrs": ["not-a-network"]}, "ip_cidrs"),
    ({"name": "x", "max_devices": 0}, "max_devices"),
    ({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
    ({"name": "x", "ttl_secs": 60, "expires_at": "2999-01-01T00:00:00Z"}, None),
])
async def test_create_enrollment_rejects_bad_fields(gateway_factory: GatewayFactory,
                                                    body: dict[str, Any],
                                                    param: str | None) -> None:
    """A bad name, limit, network, slot count or expiry is a 400 naming the field."""
    gw = await _gateway(gateway_factory)
    response = await gw.client.post("/admin/enrollments", headers=ADMIN_AUTH, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    assert error.get("param") == param


@pytest.mark.parametrize("device_id", ["", "x" * 201, "tab\there", "nul\x00"])
async def test_bootstrap_rejects_a_bad_device_id(gateway_factory: GatewayFactory,
                                                 device_id: str) -> None:
    """device_id must be 1-200 printable characters: anything else is a 400."""
    gw = await _gateway(gateway_factory)
    response = await _bootstrap(gw, await _enrollment(gw), device_id)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "device_id"


async def test_enrollment_table_stops_at_max_devices(store: Store) -> None:
    """add_device refuses a device past max_devices and counts only active ones."""
    now = utcnow()
    enrollment = await store.enrollments.insert(
        enrollment_id=new_id("enr"), name="e", code_hash=hash_secret("c"),
        policy=KeyPolicy(rpm=3), max_devices=1, now=now, expires_at=None)

    def key(n: int) -> DeviceKey:
        return DeviceKey(id=f"key_{n}", name=f"device-e-{n}", prefix="ccg_x",
                         secret_hash=hash_secret(f"s{n}"), policy=enrollment.policy)

    first = await store.enrollments.add_device(device_row_id="dev_1", enrollment_id=enrollment.id,
                                               device_id="one", key=key(1), now=now)
    assert first is not None
    assert await store.enrollments.add_device(device_row_id="dev_2", enrollment_id=enrollment.id,
                                              device_id="two", key=key(2), now=now) is None
    assert await store.enrollments.revoke_device("dev_1", now)
    assert (await store.keys.by_id("key_1")).revoked_at is not None  # type: ignore[union-attr]
    assert await store.enrollments.add_device(device_row_id="dev_2", enrollment_id=enrollment.id,
                                              device_id="two", key=key(2), now=now)
    assert (await store.keys.by_id("key_2")).policy.rpm == 3  # type: ignore[union-attr]


async def test_enrollment_service_concurrent_bootstraps_respect_the_rules(store: Store) -> None:
    """At once: one device_id enrolling thrice gets one device; new devices past
    max_devices are refused (on PostgreSQL these really race)."""
    service = EnrollmentService(store, SECRET, 600)
    code = (await service.create("race", KeyPolicy(), max_devices=2, expires_at=None)).code
    same = await asyncio.gather(*(service.bootstrap(code, "laptop") for _ in range(3)))
    assert len({issued.device.id for issued in same}) == 1
    others = await asyncio.gather(*(service.bootstrap(code, f"pc-{n}") for n in range(4)),
                                  return_exceptions=True)
    assert sum(isinstance(o, EnrollmentFull) for o in others) == 3
    assert len([d for d in await service.devices() if d.revoked_at is None]) == 2
