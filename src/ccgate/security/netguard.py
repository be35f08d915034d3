"""The one outbound network guard (SSRF): which URLs ccgate may call, and calling them safely.

Webhooks use it today and URL fetching will reuse it. A URL passes only when every address its
host resolves to is public (or listed in ``CCGATE_OUTBOUND_ALLOW``); the request then goes to
the very address that was checked, so a DNS answer that changes between check and connect
(DNS rebinding) cannot redirect it. Redirects are never followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]

MAX_URL_CHARS = 2048
# What a caller is told about any refused address, literal or resolved: never which one.
NOT_PUBLIC = "not a public address"
DEFAULT_MAX_RESPONSE_BYTES = 1_048_576
_SCHEMES = {"http": 80, "https": 443}
# Only these spellings can be legacy IPv4 forms (127.1, 0x7f.0.0.1, 2130706433).
_LEGACY_IPV4 = re.compile(r"^[0-9a-fx.]+$", re.IGNORECASE)

# Named ranges, checked in order so the reason is the most specific one. Anything else that
# Python does not consider globally reachable is refused too, as "not a public address".
_RANGES: tuple[tuple[str, IPNetwork], ...] = tuple(
    (reason, ipaddress.ip_network(cidr))
    for reason, cidr in (
        ("unspecified address", "0.0.0.0/32"),
        ("'this network' address", "0.0.0.0/8"),
        ("loopback address", "127.0.0.0/8"),
        ("private address", "10.0.0.0/8"),
        ("private address", "172.16.0.0/12"),
        ("private address", "192.168.0.0/16"),
        ("shared (CGNAT) address", "100.64.0.0/10"),
        ("link-local address", "169.254.0.0/16"),
        ("IETF protocol assignment", "192.0.0.0/24"),
        ("documentation address", "192.0.2.0/24"),
        ("documentation address", "198.51.100.0/24"),
        ("documentation address", "203.0.113.0/24"),
        ("benchmarking address", "198.18.0.0/15"),
        ("multicast address", "224.0.0.0/4"),
        ("broadcast address", "255.255.255.255/32"),
        ("reserved address", "240.0.0.0/4"),
        ("unspecified address", "::/128"),
        ("loopback address", "::1/128"),
        ("private (ULA) address", "fc00::/7"),
        ("link-local address", "fe80::/10"),
        ("site-local address", "fec0::/10"),
        ("multicast address", "ff00::/8"),
        ("documentation address", "2001:db8::/32"),
        ("documentation address", "3fff::/20"),
        ("discard-only address", "100::/64"),
        ("local-use NAT64 address", "64:ff9b:1::/48"),
        ("IETF protocol assignment", "2001::/23"),
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


class BlockedDestination(ValueError):
    """An outbound URL that ccgate refuses to call.

    ``reason`` is for the caller and never names an address a host name resolved to (that
    would make ccgate an oracle for internal DNS); ``detail`` adds the address and its range,
    for the server log only.
    """

    def __init__(self, reason: str, *, detail: str | None = None) -> None:
        super().__init__(f"blocked destination: {reason}")
        self.reason = reason
        self.detail = detail or reason


class ResponseTooLarge(httpx.HTTPError):
    """The response body went past the size the caller accepts; the status line did arrive."""

    def __init__(self, status_code: int, limit: int) -> None:
        super().__init__(f"the response body is larger than {limit} bytes")
        self.status_code = status_code


@dataclass(frozen=True)
class Target:
    """A checked destination: connect to ``ip``, present ``host``, ask for ``path``."""

    host: str
    port: int
    scheme: str
    ip: str
    path: str

    @property
    def host_header(self) -> str:
        """The ``Host`` header value: the original host, with the port when not the default."""
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return shown if _SCHEMES[self.scheme] == self.port else f"{shown}:{self.port}"

    def request_url(self) -> httpx.URL:
        """The URL to connect to: the checked IP literal instead of the name."""
        return httpx.URL(
            scheme=self.scheme, host=self.ip, port=self.port, raw_path=self.path.encode("ascii")
        )


def parse_ip(text: str) -> IPAddress | None:
    """The address ``text`` spells, legacy IPv4 forms (``127.1``, ``0x7f.1``) included."""
    candidate = text.strip("[]")
    try:
        return ipaddress.ip_address(candidate.split("%", 1)[0])
    except ValueError:
        pass
    if _LEGACY_IPV4.match(candidate):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(candidate))
        except OSError:
            return None
    return None


def blocked_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be reached (ignoring any allowlist), or None for a public address."""
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        inner = blocked_reason(embedded)
        return f"{inner} (embedded in an IPv6 address)" if inner else None
    for reason, network in _RANGES:
        if ip.version == network.version and ip in network:
            return reason
    if not ip.is_global or ip.is_multicast:
        return "not a public address"
    return None


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _NAT64:
        return low32
    # ::/96 holds :: and ::1 too; those are judged as themselves, not as 0.0.0.0/0.0.0.1.
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:
        return low32
    return None


async def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


class OutboundGuard:
    """Decides which URLs ccgate may call and calls them on the checked address."""

    def __init__(self, allow: Sequence[str] = (), resolver: Resolver | None = None) -> None:
        """``allow``: hostnames, IPs or CIDRs reachable even though private or loopback."""
        self._allowed_hosts: set[str] = set()
        self._allowed_nets: list[IPNetwork] = []
        for entry in allow:
            text = entry.strip().lower()
            if not text:
                continue
            try:
                self._allowed_nets.append(ipaddress.ip_network(text.strip("[]"), strict=False))
            except ValueError:
                self._allowed_hosts.add(text.rstrip("."))
        self._resolve = resolver or _getaddrinfo

    def _host_allowed(self, host: str) -> bool:
        return host.lower().rstrip(".") in self._allowed_hosts

    def _ip_allowed(self, ip: IPAddress) -> bool:
        embedded = _embedded_ipv4(ip)
        return any(
            candidate.version == net.version and candidate in net
            for net in self._allowed_nets
            for candidate in (ip, embedded)
            if candidate is not None
        )

    def check_ip(self, ip: IPAddress) -> None:
        """Raise BlockedDestination unless ``ip`` is public or allowed."""
        if self._ip_allowed(ip):
            return
        reason = blocked_reason(ip)
        if reason is not None:
            raise BlockedDestination(NOT_PUBLIC, detail=f"{ip}: {reason}")

    def check_url(self, url: str) -> None:
        """Raise BlockedDestination for a URL that can never be called (checked at submit)."""
        self._parse(url)

    def _parse(self, url: str) -> tuple[httpx.URL, str, int]:
        if len(url) > MAX_URL_CHARS:
            raise BlockedDestination(f"the URL is longer than {MAX_URL_CHARS} characters")
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError):
            raise BlockedDestination("the URL cannot be parsed") from None
        if parsed.scheme not in _SCHEMES:
            raise BlockedDestination("only http and https URLs may be called")
        if parsed.userinfo:
            raise BlockedDestination("URLs may not carry a user name or password")
        host = parsed.raw_host.decode("ascii")
        if not host:
            raise BlockedDestination("the URL has no host")
        port = parsed.port if parsed.port is not None else _SCHEMES[parsed.scheme]
        if port == 0:
            raise BlockedDestination("port 0 cannot be called")
        literal = parse_ip(host)
        if literal is not None:
            self.check_ip(literal)
        elif not self._host_allowed(host) and (
            host.rstrip(".").lower() == "localhost"
            or host.rstrip(".").lower().endswith(".localhost")
        ):
            raise BlockedDestination("localhost names always point at this machine")
        return parsed, host, port

    async def resolve(self, url: str) -> Target:
        """Check ``url``, resolve its host and check every address; return where to connect.

        Raises BlockedDestination when any address is refused, and OSError when the name
        does not resolve.
        """
        parsed, host, port = self._parse(url)
        literal = parse_ip(host)
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            found = await self._resolve(host, port)
            addresses = [ip for ip in (parse_ip(a) for a in found) if ip is not None]
            if not addresses:
                raise OSError(f"{host} did not resolve to any address")
            if not self._host_allowed(host):
                for ip in addresses:
                    self.check_ip(ip)
        return Target(
            host=host if literal is None else str(literal),
            port=port,
            scheme=parsed.scheme,
            ip=str(addresses[0]),
            path=parsed.raw_path.decode("ascii"),
        )

    async def send(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        content: bytes,
        timeout: float,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> httpx.Response:
        """Resolve and check ``url``, then send one request to the checked address.

        ``timeout`` bounds the whole call (lookup, connect, upload, response); redirects
        are returned, never followed; a body past ``max_response_bytes`` raises
        ResponseTooLarge. The response comes back fully read.
        """
        async with asyncio.timeout(timeout):
            request = await self._pinned_request(
                client, method, url, headers, content=content, timeout=timeout
            )
            response = await client.send(request, stream=True, follow_redirects=False)
            try:
                body = await _read_capped(response, max_response_bytes)
            finally:
                await response.aclose()
        kept = [
            (k, v)
            for k, v in response.headers.multi_items()
            if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        ]
        meta = {
            k: v for k, v in response.extensions.items() if k in ("http_version", "reason_phrase")
        }
        return httpx.Response(
            response.status_code, headers=kept, content=body, request=request, extensions=meta
        )

    async def _pinned_request(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        headers: Mapping[str, str],
        *,
        content: bytes | None = None,
        timeout: float | None = None,
    ) -> httpx.Request:
        """A request to the checked address of ``url``, with its Host header and SNI name."""
        target = await self.resolve(url)
        request_headers = {**headers, "Host": target.host_header}
        extensions: dict[str, str] = {}
        if target.scheme == "https":
            extensions["sni_hostname"] = target.host
            # Pooled connections are keyed by IP: never reuse one verified for another name.
            request_headers["Connection"] = "close"
        request = client.build_request(
            method,
            target.request_url(),
            headers=request_headers,
            content=content,
            extensions=extensions,
        )
        if timeout is not None:
            request.extensions["timeout"] = httpx.Timeout(timeout).as_dict()
        return request

    @contextlib.asynccontextmanager
    async def open_get(
        self, client: httpx.AsyncClient, url: str, *, headers: Mapping[str, str]
    ) -> AsyncIterator[httpx.Response]:
        """Resolve and check ``url``, then GET it from the checked address, body unread.

        One hop: a redirect comes back as it is, for the caller to check its Location with
        another ``open_get``. The caller bounds the time (``asyncio.timeout``) and reads the
        body within the block. Raises BlockedDestination, OSError when the name does not
        resolve, and httpx errors.
        """
        request = await self._pinned_request(client, "GET", url, headers)
        response = await client.send(request, stream=True, follow_redirects=False)
        try:
            yield response
        finally:
            await response.aclose()


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise ResponseTooLarge(response.status_code, limit)
        chunks.append(chunk)
    return b"".join(chunks)
