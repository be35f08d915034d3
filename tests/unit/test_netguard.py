"""The outbound guard: which URLs and addresses are refused, and how a checked request is sent."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from ccgate.security.netguard import BlockedDestination, OutboundGuard, ResponseTooLarge

NAMES: dict[str, list[str]] = {
    "private.test": ["10.0.0.1"],
    "metadata.test": ["169.254.169.254"],
    "mapped.test": ["::ffff:127.0.0.1"],
    "nat64.test": ["64:ff9b::a00:1"],
    "mixed.test": ["93.184.216.34", "192.168.1.10"],
    "localhost6.test": ["::1"],
    "public.test": ["93.184.216.34", "2606:4700::1111"],
}


def _guard(
    allow: tuple[str, ...] = (),
    names: dict[str, list[str]] | None = None,
    calls: list[str] | None = None,
) -> OutboundGuard:
    table = NAMES if names is None else names

    async def resolver(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        return list(table[host])

    return OutboundGuard(allow=allow, resolver=resolver)


@pytest.mark.parametrize(
    "name",
    ["private.test", "metadata.test", "mapped.test", "nat64.test", "mixed.test", "localhost6.test"],
)
async def test_netguard_resolve_rejects_names_with_any_blocked_address(name: str) -> None:
    """A name is refused when any one of its addresses is not public."""
    with pytest.raises(BlockedDestination, match="not a public address"):
        await _guard().resolve(f"https://{name}/hook")


async def test_netguard_blocked_name_reason_never_names_its_address() -> None:
    """The reason callers see says only "not a public address", never what the name resolved
    to or which range that is; the detail for the server log keeps both."""
    with pytest.raises(BlockedDestination) as caught:
        await _guard().resolve("https://private.test/hook")
    assert caught.value.reason == "not a public address"
    assert "10.0.0.1" not in str(caught.value) and "private" not in str(caught.value)
    assert caught.value.detail == "10.0.0.1: private address"


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.0.1",
        "100.64.0.1",
        "169.254.169.254",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "192.0.0.8",
        "198.18.0.1",
        "192.0.2.1",
        "198.51.100.1",
        "203.0.113.1",
        "240.0.0.1",
        "[::]",
        "[::1]",
        "[fc00::1]",
        "[fd12::1]",
        "[fe80::1]",
        "[ff02::1]",
        "[2001:db8::1]",
        "[::ffff:10.0.0.1]",
        "[::a00:1]",
        "[64:ff9b::7f00:1]",
        "[2002:a00:1::1]",
        "127.1",
        "0x7f000001",
        "2130706433",
    ],
)
async def test_netguard_rejects_blocked_literal_addresses(address: str) -> None:
    """Literal private, loopback, reserved and embedded-IPv4 addresses are refused at once."""
    guard = _guard(names={})
    with pytest.raises(BlockedDestination):
        guard.check_url(f"http://{address}/hook")
    with pytest.raises(BlockedDestination):
        await guard.resolve(f"http://{address}:8080/hook")


@pytest.mark.parametrize(
    "url",
    [
        "https://public.test/hook",
        "http://93.184.216.34/x",
        "https://[2606:4700::1111]/x",
        "http://[64:ff9b::808:808]/",
        "http://[2002:808:808::1]/",
    ],
)
async def test_netguard_resolve_accepts_public_addresses(url: str) -> None:
    """Public names and addresses, embedded public IPv4 included, pass."""
    target = await _guard().resolve(url)
    assert target.ip
    assert target.scheme in ("http", "https")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "http://user:pw@example.com/",
        "http://user@example.com/",
        "http:///path",
        "https://",
        "http://example.com:0/",
        "gopher://example.com/",
        "http://localhost:8080/",
        "http://app.localhost/",
        "https://example.com/" + "a" * 2048,
        "not a url",
    ],
)
def test_netguard_check_url_rejects_plainly_bad_urls(url: str) -> None:
    """Bad schemes, credentials, missing hosts, port 0, localhost and long URLs are refused."""
    with pytest.raises(BlockedDestination) as caught:
        _guard().check_url(url)
    assert "pw" not in str(caught.value)


async def test_netguard_allow_lets_a_listed_cidr_through() -> None:
    """An allowed CIDR opens its private addresses, and only those."""
    guard = _guard(allow=("10.0.0.0/24",))
    target = await guard.resolve("http://private.test:9000/hook")
    assert target.ip == "10.0.0.1"
    await guard.resolve("http://[::ffff:10.0.0.7]/")
    with pytest.raises(BlockedDestination):
        await guard.resolve("http://10.0.1.1/")
    with pytest.raises(BlockedDestination):
        await guard.resolve("https://metadata.test/")


async def test_netguard_allow_lets_a_listed_host_through() -> None:
    """An allowed host name may resolve to private addresses; other names may not."""
    names = {"receiver.lan": ["192.168.1.5"], "other.lan": ["192.168.1.6"]}
    guard = _guard(allow=("Receiver.LAN", "127.0.0.1"), names=names)
    assert (await guard.resolve("http://receiver.lan/hook")).ip == "192.168.1.5"
    assert (await guard.resolve("http://127.0.0.1:8080/hook")).ip == "127.0.0.1"
    with pytest.raises(BlockedDestination):
        await guard.resolve("http://other.lan/hook")


async def test_netguard_target_keeps_host_port_and_path() -> None:
    """The target carries the original host for Host/SNI and the path with its query."""
    target = await _guard().resolve("https://Public.test:8443/a/b?x=1&y=%20#frag")
    assert (target.host, target.port, target.scheme) == ("public.test", 8443, "https")
    assert target.ip == "93.184.216.34"
    assert target.path == "/a/b?x=1&y=%20"
    assert target.host_header == "public.test:8443"
    assert str(target.request_url()) == "https://93.184.216.34:8443/a/b?x=1&y=%20"


async def test_netguard_send_connects_to_the_checked_ip_with_host_and_sni() -> None:
    """The request goes to the IP literal, names the host in Host and SNI, and is not redirected."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(302, headers={"Location": "http://10.0.0.1/"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        response = await _guard().send(
            client,
            "POST",
            "https://public.test/hook",
            headers={"X-A": "1"},
            content=b"{}",
            timeout=5,
        )
    assert response.status_code == 302
    assert len(seen) == 1
    assert seen[0].url.host == "93.184.216.34"
    assert seen[0].headers["host"] == "public.test"
    assert seen[0].extensions["sni_hostname"] == "public.test"
    assert seen[0].headers["x-a"] == "1"


async def test_netguard_send_resolves_the_name_only_once() -> None:
    """One send makes one lookup, so a second (rebound) answer is never used."""
    calls: list[str] = []
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return httpx.Response(204)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        await _guard(calls=calls).send(
            client, "POST", "http://public.test/", headers={}, content=b"", timeout=5
        )
    assert calls == ["public.test"]
    assert hosts == ["93.184.216.34"]


async def test_netguard_send_refuses_oversized_responses() -> None:
    """A body past the cap raises ResponseTooLarge, which still carries the status."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"x" * 5000)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(ResponseTooLarge) as caught:
            await _guard().send(
                client,
                "GET",
                "http://public.test/",
                headers={},
                content=b"",
                timeout=5,
                max_response_bytes=1000,
            )
    assert caught.value.status_code == 200


async def test_netguard_send_timeout_bounds_the_lookup() -> None:
    """A lookup that hangs is cut off by the call's timeout."""

    async def slow(host: str, port: int) -> list[str]:
        await asyncio.sleep(10)
        return ["93.184.216.34"]

    async with httpx.AsyncClient(
        transport=httpx.MockTransport(lambda r: httpx.Response(200))
    ) as client:
        with pytest.raises(TimeoutError):
            await OutboundGuard(resolver=slow).send(
                client, "GET", "http://slow.test/", headers={}, content=b"", timeout=0.05
            )
