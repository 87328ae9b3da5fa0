"""Addresses and WireGuard keys, each checked strictly: the rules the firewall's address file and the
installer's settings file share.

Standard library only, like the installer (deploy/server) that reads its settings with the system
python3 before the project's virtualenv exists; the address file's model (config.py) builds on it.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_ADDRESS_CHARS = 64
# Anything broader is almost certainly a typo ("/0" = the whole internet may log in); a real office or
# provider range is never larger than this.
MIN_PREFIX = {4: 8, 6: 32}


class FirewallConfigError(ValueError):
    """The address file is malformed; each line names the offending key and the rule it broke."""


def _beyond_this_host(address: Address) -> bool:
    """An address that names hosts out on a network: not "any" (0.0.0.0, ::), this host (loopback),
    a group (multicast), one link only (link-local, where an address is ambiguous without a zone) or
    a range set aside by the IANA (240.0.0.0/4 and the like: no host has one)."""
    return not (
        address.is_unspecified
        or address.is_loopback
        or address.is_multicast
        or address.is_link_local
        or address.is_reserved
    )


def host_address(value: object) -> Address:
    """One other host's address, as a setting names it (a nameserver, a database, a balancer): an IP,
    never a name (a name is resolved at some other time than the rule that uses it is written),
    unicast and beyond this host, without a %zone, an IPv4 address written as IPv4. ValueError names
    the rule broken, never quoting the value."""
    if not isinstance(value, str) or not 2 <= len(value) <= 45 or value != value.strip():
        raise ValueError("is not an IP address")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("is not an IP address (a host name is not taken)") from None
    if isinstance(address, ipaddress.IPv6Address) and (address.ipv4_mapped is not None or address.scope_id):
        raise ValueError("must be an IPv6 address without a %zone, or an IPv4 address written as IPv4")
    if not _beyond_this_host(address):
        raise ValueError(
            "must be one host's address (not 0.0.0.0, ::, loopback, multicast, link-local or reserved)"
        )
    return address


def network(value: object) -> Network:
    """One address or network (`192.0.2.10`, `2001:db8::/64`), strictly: host bits must be zero."""
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {type(value).__name__}")
    if not value or len(value) > MAX_ADDRESS_CHARS or value != value.strip() or "%" in value:
        raise ValueError("is not an IPv4 or IPv6 address")
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError("is not an IP address or network") from None
        raise ValueError("is not an IP address or network (it has host bits set)") from None
    if network.prefixlen < MIN_PREFIX[network.version]:
        raise ValueError(f"is too broad (IPv{network.version} needs at least /{MIN_PREFIX[network.version]})")
    if not _beyond_this_host(network.network_address):
        raise ValueError("is not a routable host or network address")
    return network


def parse_network(value: object, where: str) -> Network:
    """`network` with the refusal as a FirewallConfigError; the refusal starts with `where`."""
    try:
        return network(value)
    except ValueError as exc:
        raise FirewallConfigError(f"{where}: {exc}") from None


def wg_key(value: object) -> str:
    """A WireGuard key is 32 bytes in standard base64 (44 characters, one '=')."""
    if not isinstance(value, str) or len(value) != 44 or not value.endswith("="):
        raise ValueError("not a WireGuard public key (44 base64 characters)")
    try:
        decoded = base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ValueError("not a WireGuard public key (bad base64)") from None
    if len(decoded) != 32:
        raise ValueError("not a WireGuard public key (not 32 bytes)")
    return value


def check_wg_key(value: object, where: str) -> str:
    """`wg_key` with the refusal as a FirewallConfigError; the refusal starts with `where`."""
    try:
        return wg_key(value)
    except ValueError as exc:
        raise FirewallConfigError(f"{where}: {exc}") from None
