"""Client address and IP allowlists: the socket peer, trusted proxies, CIDRs."""

from __future__ import annotations

import ipaddress

import pytest

from ccgate.security.netrules import ClientAddressRules, key_allows


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def test_netrules_forwarded_for_ignored_from_an_untrusted_peer() -> None:
    """A spoofed X-Forwarded-For from a peer that is not a trusted proxy changes nothing."""
    rules = ClientAddressRules(trusted_proxies=["10.0.0.0/8"])
    assert rules.client_address("203.0.113.9", ["127.0.0.1"]) == _ip("203.0.113.9")


def test_netrules_right_most_untrusted_hop_is_the_client() -> None:
    """Behind trusted proxies the client is the right-most hop that is not a proxy."""
    rules = ClientAddressRules(trusted_proxies=["10.0.0.0/8"])
    chain = ["1.1.1.1, 198.51.100.7, 10.0.0.3"]  # 1.1.1.1 was written by the client
    assert rules.client_address("10.0.0.2", chain) == _ip("198.51.100.7")


def test_netrules_several_forwarded_headers_are_one_chain() -> None:
    """Repeated X-Forwarded-For headers are read as one list, in order."""
    rules = ClientAddressRules(trusted_proxies=["10.0.0.2", "10.0.0.3"])
    assert rules.client_address("10.0.0.2", ["198.51.100.7", "10.0.0.3"]) == _ip("198.51.100.7")


def test_netrules_garbage_in_the_chain_stops_at_the_proxy() -> None:
    """An unparsable hop means nothing beyond the proxy is believed."""
    rules = ClientAddressRules(trusted_proxies=["10.0.0.0/8"])
    assert rules.client_address("10.0.0.2", ["not-an-ip"]) == _ip("10.0.0.2")


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("192.168.1.20", True),
        ("192.168.2.1", False),
        ("2001:db8::1", False),
    ],
)
def test_netrules_allowlist_admits_loopback_and_listed_networks(
    address: str, allowed: bool
) -> None:
    """With CCGATE_ALLOW_CIDRS set, loopback and the listed networks pass, nothing else."""
    rules = ClientAddressRules(allow=["192.168.1.0/24"])
    assert rules.allowed(_ip(address)) is allowed


def test_netrules_no_allowlist_admits_everyone() -> None:
    """An empty CCGATE_ALLOW_CIDRS lets any address through."""
    assert ClientAddressRules().allowed(_ip("203.0.113.1"))


def test_netrules_key_cidrs() -> None:
    """A key's ip_cidrs: None is anywhere; a list admits only its networks."""
    assert key_allows(None, _ip("203.0.113.1"))
    assert key_allows(("203.0.113.0/24",), _ip("203.0.113.1"))
    assert not key_allows(("203.0.113.0/24",), _ip("127.0.0.1"))


def test_netrules_ipv4_mapped_v6_peer_is_read_as_v4() -> None:
    """A dual-stack socket's ::ffff:a.b.c.d peer matches IPv4 rules."""
    rules = ClientAddressRules(allow=["198.51.100.0/24"])
    assert rules.allowed(rules.client_address("::ffff:198.51.100.4"))
