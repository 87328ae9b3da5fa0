"""hardening/firewall/addresses.host_address: the one rule for "another host's address" that the
installer's balancer addresses, its remote database and the resolvers share."""

from __future__ import annotations

import ipaddress

import pytest

from hardening.firewall.addresses import host_address


@pytest.mark.parametrize("value", ["192.0.2.10", "203.0.113.7", "10.1.2.3", "2001:db8::14", "2001:DB8::14"])
def test_one_hosts_address_is_taken(value: str) -> None:
    assert host_address(value) == ipaddress.ip_address(value)


# (value, what the refusal says)
HOSTILE = [
    ("vault.example.internal", "a host name is not taken"),
    ("192.0.2.0/24", "is not an IP address"),
    ("192.0.2.10:443", "is not an IP address"),
    (" 192.0.2.10", "is not an IP address"),
    ("192.0.2.10\nIPAddressAllow=any", "is not an IP address"),
    ("192.0.2.10 } accept", "is not an IP address"),
    ("1" * 46, "is not an IP address"),
    ("", "is not an IP address"),
    (10, "is not an IP address"),
    (None, "is not an IP address"),
    ("0.0.0.0", "one host's address"),  # noqa: S104 - a refused input, nothing binds
    ("::", "one host's address"),
    ("127.0.0.1", "one host's address"),
    ("::1", "one host's address"),
    ("224.0.0.1", "one host's address"),
    ("ff02::1", "one host's address"),
    ("169.254.1.1", "one host's address"),
    ("fe80::1", "one host's address"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("fe80::1%eth0", "without a %zone"),
    ("2001:db8::1%eth0", "without a %zone"),
    ("::ffff:192.0.2.10", "an IPv4 address written as IPv4"),
]


@pytest.mark.parametrize(("value", "why"), HOSTILE)
def test_anything_else_is_refused_with_the_rule_it_broke(value: object, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        host_address(value)
