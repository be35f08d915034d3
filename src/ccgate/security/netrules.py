"""Who is calling from where: the client address and the IP allowlists.

The client address is the socket's peer. ``X-Forwarded-For`` is believed only when that peer
is one of ``CCGATE_TRUSTED_PROXIES``, and then only up to the right-most hop that is not a
trusted proxy: everything left of it could have been written by the client itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse IPs or CIDRs (host bits allowed); raise ValueError naming a bad one."""
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{cidr!r} is not an IP address or CIDR") from None
    return tuple(networks)


def _address(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def in_networks(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    """True if ``address`` lies in any of ``networks``."""
    return any(address.version == n.version and address in n for n in networks)


class ClientAddressRules:
    """Works out the client address of a request and whether it may call at all."""

    def __init__(self, allow: Iterable[str] = (), trusted_proxies: Iterable[str] = ()) -> None:
        self.allow = parse_networks(allow)
        self.trusted = parse_networks(trusted_proxies)

    def client_address(
        self, peer: str | None, forwarded_for: Sequence[str] = ()
    ) -> IPAddress | None:
        """The client: the peer, or the right-most untrusted X-Forwarded-For hop when the
        peer is a trusted proxy. None when the peer is unknown (e.g. a Unix socket)."""
        address = _address(peer) if peer else None
        if address is None or not self.trusted or not in_networks(address, self.trusted):
            return address
        hops = [hop for header in forwarded_for for hop in header.split(",") if hop.strip()]
        for hop in reversed(hops):
            hop_address = _address(hop)
            if hop_address is None:
                return address  # garbage in the chain: trust nothing beyond the proxy
            if not in_networks(hop_address, self.trusted):
                return hop_address
            address = hop_address
        return address

    def allowed(self, address: IPAddress | None) -> bool:
        """Loopback always; otherwise any address when no allowlist is set, else the list."""
        if address is None:
            return not self.allow
        if address.is_loopback or not self.allow:
            return True
        return in_networks(address, self.allow)


def key_allows(cidrs: Sequence[str] | None, address: IPAddress | None) -> bool:
    """A key's own ``ip_cidrs``: None means anywhere; loopback is not special here."""
    if cidrs is None:
        return True
    if address is None:
        return False
    return in_networks(address, parse_networks(cidrs))
