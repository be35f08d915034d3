"""IP allowlists, trusted proxies and CORS through the whole app."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from ccgate.api.deps import app_services
from ccgate.policy import KeyPolicy


def _client(gateway: Any, peer: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app, client=(peer, 5555)),
        base_url="http://ccgate.test",
    )


async def test_network_rules_unlisted_address_gets_403(gateway_factory: Callable[..., Any]) -> None:
    """With CCGATE_ALLOW_CIDRS set, a client outside it is refused before auth."""
    gateway = await gateway_factory(CCGATE_ALLOW_CIDRS="192.168.1.0/24")
    async with (
        _client(gateway, "203.0.113.5") as outside,
        _client(gateway, "192.168.1.7") as inside,
    ):
        refused = await outside.post("/api/v1/run", json={"prompt": "hi"}, headers=gateway.auth())
        admitted = await inside.post("/api/v1/run", json={"prompt": "hi"}, headers=gateway.auth())
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "forbidden"
    assert admitted.status_code == 200


async def test_network_rules_spoofed_forwarded_for_changes_nothing(
    gateway_factory: Callable[..., Any],
) -> None:
    """An untrusted peer cannot claim an allowed address with X-Forwarded-For."""
    gateway = await gateway_factory(
        CCGATE_ALLOW_CIDRS="192.168.1.0/24", CCGATE_TRUSTED_PROXIES="10.0.0.1"
    )
    async with _client(gateway, "203.0.113.5") as outside:
        response = await outside.post(
            "/api/v1/run",
            json={"prompt": "hi"},
            headers={**gateway.auth(), "X-Forwarded-For": "192.168.1.7"},
        )
    assert response.status_code == 403


async def test_network_rules_trusted_proxy_passes_the_real_client(
    gateway_factory: Callable[..., Any],
) -> None:
    """Through a trusted proxy, the forwarded client address is the one checked."""
    gateway = await gateway_factory(
        CCGATE_ALLOW_CIDRS="192.168.1.0/24", CCGATE_TRUSTED_PROXIES="10.0.0.1"
    )
    async with _client(gateway, "10.0.0.1") as proxy:
        inside = await proxy.post(
            "/api/v1/run",
            json={"prompt": "hi"},
            headers={**gateway.auth(), "X-Forwarded-For": "192.168.1.7"},
        )
        outside = await proxy.post(
            "/api/v1/run",
            json={"prompt": "hi"},
            headers={**gateway.auth(), "X-Forwarded-For": "192.168.1.7, 203.0.113.5"},
        )
    assert inside.status_code == 200
    assert outside.status_code == 403


async def test_network_rules_key_cidrs_bind_a_key_to_its_networks(
    gateway_factory: Callable[..., Any],
) -> None:
    """A key with ip_cidrs works from inside them and gets 403 from anywhere else."""
    gateway = await gateway_factory()
    created = await app_services(gateway.app).keyring.create(
        "office", KeyPolicy(ip_cidrs=("198.51.100.0/24",))
    )
    auth = gateway.auth(created.secret)
    async with (
        _client(gateway, "198.51.100.9") as office,
        _client(gateway, "203.0.113.5") as elsewhere,
    ):
        ok = await office.post("/api/v1/run", json={"prompt": "hi"}, headers=auth)
        refused = await elsewhere.post("/api/v1/run", json={"prompt": "hi"}, headers=auth)
    assert ok.status_code == 200
    assert refused.status_code == 403
    assert "ip_cidrs" in refused.json()["error"]["message"]


async def test_network_rules_cors_wildcard_never_allows_credentials(
    gateway_factory: Callable[..., Any],
) -> None:
    """CORS `*` answers any origin with `*` and no Allow-Credentials."""
    gateway = await gateway_factory(CCGATE_CORS_ORIGINS="*")
    response = await gateway.client.options(
        "/api/v1/run",
        headers={
            "Origin": "https://evil.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers


async def test_network_rules_cors_list_reflects_only_listed_origins(
    gateway_factory: Callable[..., Any],
) -> None:
    """A listed origin is allowed; another origin gets no CORS grant."""
    gateway = await gateway_factory(CCGATE_CORS_ORIGINS="https://app.example")
    listed = await gateway.client.get("/health", headers={"Origin": "https://app.example"})
    other = await gateway.client.get("/health", headers={"Origin": "https://evil.example"})
    assert listed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in other.headers


async def test_network_rules_no_cors_setting_sends_no_cors_headers(
    gateway_factory: Callable[..., Any],
) -> None:
    """Without CCGATE_CORS_ORIGINS browsers get no grant at all."""
    gateway = await gateway_factory()
    response = await gateway.client.get("/health", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in response.headers
