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

MAX_ADDRESS_CHARS = 64
# Anything broader is almost certainly a typo ("/0" = the whole internet may log in); a real office or
# provider range is never larger than this.
MIN_PREFIX = {4: 8, 6: 32}


class FirewallConfigError(ValueError):
    """The address file is malformed; each line names the offending key and the rule it broke."""


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
    address = network.network_address
    if address.is_unspecified or address.is_loopback or address.is_multicast or address.is_link_local:
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
