"""The one file of addresses the firewall and the VPN are generated from.

Example (`/etc/strongroom/network.toml`)::

    admins = ["192.0.2.10", "2001:db8::10"]                 # may reach tcp 22 (sshd)
    employees = ["198.51.100.0/24", "2001:db8:100::/64"]     # may reach tcp 443 (Apache)
    crm = ["203.0.113.7", "2001:db8:200::7"]                 # the CRM application: tcp 443
    local_only_uids = [998, 997]   # optional: these users' sockets may send only on "lo" (numeric uids)

    [connection_limits]        # optional: concurrent TCP connections per source address (defaults shown)
    admins = 10                # to tcp 22: a few shells, an scp, a multiplexed master
    employees = 20             # to tcp 443: a browser opens about 6 per host, more with several windows
    crm = 64                   # to tcp 443: a server application's connection pool

    [vpn]                      # optional: only the "vpn" variant and the WireGuard template use it
    interface = "wg0"
    address = "10.77.0.1/24"   # the server's own address on the VPN, with the VPN's prefix
    address6 = "fd77::1/64"    # optional
    listen_port = 51820

    [[vpn.peers]]
    name = "alice"
    public_key = "base64 of 32 bytes, from `wg pubkey`"
    address = "10.77.0.10"
    address6 = "fd77::10"      # optional

`local_only_uids` are numbers, not names: nft resolves a user name when it loads the file, and a name that
does not exist (yet) would fail the whole ruleset and leave the server unfiltered. The install command
writes the uids of strongroom-web and strongroom-keyd it reads from /etc/passwd.

Parsing is strict: an unknown key, a malformed or overly broad address, a duplicate, a uid that is not a
plain number or is root's, a connection limit that is not a whole number from 1 to
4096, or a peer outside the VPN's network is refused with `FirewallConfigError`
naming the place, and nothing is rendered.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_FILE_BYTES = 64 * 1024
MAX_ENTRIES = 256
MAX_ADDRESS_CHARS = 64
# Anything broader is almost certainly a typo ("/0" = the whole internet may log in); a real office or
# provider range is never larger than this.
MIN_PREFIX = {4: 8, 6: 32}
_IFNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")  # Linux IFNAMSIZ is 16 including the NUL
_PEER_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,31}")
# uid 0 would cut root (apt, postfix's delivery, the admins' shells) off the network; 2**32-1 is
# (uid_t)-1, "no user", which the kernel never gives a socket.
MAX_UID = 2**32 - 2
# Per source address, not per network: one host of a listed network (a compromised laptop) must not hold
# open every Apache worker (384, apache/strongroom-site.conf) while its colleagues wait. Above 4096 a limit
# no longer limits anything on this server; a value outside 1..4096 is a typo.
MAX_CONNECTION_LIMIT = 4096
_TOP_KEYS = frozenset({"admins", "employees", "crm", "local_only_uids", "connection_limits", "vpn"})
_LIMIT_KEYS = frozenset({"admins", "employees", "crm"})
_VPN_KEYS = frozenset({"interface", "address", "address6", "listen_port", "peers"})
_PEER_KEYS = frozenset({"name", "public_key", "address", "address6"})


class FirewallConfigError(ValueError):
    """The address file is malformed; the message names the offending key."""


@dataclass(frozen=True)
class VpnPeer:
    name: str
    public_key: str
    address: ipaddress.IPv4Address
    address6: ipaddress.IPv6Address | None


@dataclass(frozen=True)
class VpnConfig:
    interface: str
    address: ipaddress.IPv4Interface
    address6: ipaddress.IPv6Interface | None
    listen_port: int
    peers: tuple[VpnPeer, ...]


@dataclass(frozen=True)
class ConnectionLimits:
    """Concurrent TCP connections one source address of each list may hold (render: refused with a reset
    above it). The CRM has its own, higher limit: it is one host whose pool serves many users at once."""

    admins: int = 10
    employees: int = 20
    crm: int = 64


@dataclass(frozen=True)
class NetworkConfig:
    admins: tuple[Network, ...]
    employees: tuple[Network, ...]
    crm: tuple[Network, ...]
    vpn: VpnConfig | None
    # Users whose sockets may send only on the loopback interface (render: an OUTPUT reject rule).
    local_only_uids: tuple[int, ...] = ()
    limits: ConnectionLimits = ConnectionLimits()

    @property
    def https_clients(self) -> tuple[Network, ...]:
        """Who may reach 443 (and, in the VPN variant, the WireGuard port): employees and the CRM."""
        seen: dict[Network, None] = dict.fromkeys(self.employees + self.crm)
        return tuple(seen)


def load_config(path: Path) -> NetworkConfig:
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise FirewallConfigError(f"{path}: cannot read ({exc.strerror})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise FirewallConfigError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FirewallConfigError(f"{path}: not UTF-8") from None
    return parse_config(text)


def parse_config(text: str) -> NetworkConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FirewallConfigError(f"not valid TOML: {exc}") from None
    _no_unknown_keys(data, _TOP_KEYS, "top level")
    admins = _networks(data, "admins")
    if not admins:
        # An empty list renders a firewall nobody can administer over SSH.
        raise FirewallConfigError("admins: at least one address is required")
    employees = _networks(data, "employees")
    crm = _networks(data, "crm")
    vpn = _vpn(data["vpn"]) if "vpn" in data else None
    uids = _uids(data.get("local_only_uids", []), "local_only_uids")
    limits = _limits(data.get("connection_limits", {}))
    return NetworkConfig(
        admins=admins, employees=employees, crm=crm, vpn=vpn, local_only_uids=uids, limits=limits
    )


def _limits(table: object) -> ConnectionLimits:
    if not isinstance(table, dict):
        raise FirewallConfigError("connection_limits: must be a table ([connection_limits])")
    _no_unknown_keys(table, _LIMIT_KEYS, "connection_limits")
    for key, value in table.items():
        # bool is an int in Python; `true` or 20.0 is a typo, and 0 would lock the whole list out.
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONNECTION_LIMIT:
            raise FirewallConfigError(
                f"connection_limits.{key}: {value!r} is not a whole number from 1 to {MAX_CONNECTION_LIMIT}"
            )
    return ConnectionLimits(**table)


def _no_unknown_keys(table: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        allowed_list = ", ".join(sorted(allowed))
        raise FirewallConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {allowed_list})")


def _networks(data: dict[str, Any], key: str) -> tuple[Network, ...]:
    if key not in data:
        raise FirewallConfigError(f"{key}: missing (write {key} = [] if there are none)")
    values = data[key]
    if not isinstance(values, list):
        raise FirewallConfigError(f"{key}: must be a list of addresses")
    if len(values) > MAX_ENTRIES:
        raise FirewallConfigError(f"{key}: more than {MAX_ENTRIES} entries")
    result: list[Network] = []
    for index, value in enumerate(values):
        where = f"{key}[{index}]"
        network = parse_network(value, where)
        if network in result:
            raise FirewallConfigError(f"{where}: {value!r} is listed twice")
        result.append(network)
    return tuple(result)


def _uids(values: object, key: str) -> tuple[int, ...]:
    if not isinstance(values, list):
        raise FirewallConfigError(f"{key}: must be a list of numeric uids")
    if len(values) > MAX_ENTRIES:
        raise FirewallConfigError(f"{key}: more than {MAX_ENTRIES} entries")
    result: list[int] = []
    for index, value in enumerate(values):
        where = f"{key}[{index}]"
        # bool is an int in Python; a TOML `true` is a typo, never a uid.
        if isinstance(value, bool) or not isinstance(value, int):
            raise FirewallConfigError(f"{where}: {value!r} is not a numeric uid (names are not accepted)")
        if not 1 <= value <= MAX_UID:
            raise FirewallConfigError(
                f"{where}: {value} is not a uid from 1 to {MAX_UID} (root's 0 is refused)"
            )
        if value in result:
            raise FirewallConfigError(f"{where}: {value} is listed twice")
        result.append(value)
    return tuple(result)


def parse_network(value: object, where: str) -> Network:
    """One address or network (`192.0.2.10`, `2001:db8::/64`), strictly: host bits must be zero."""
    if not isinstance(value, str):
        raise FirewallConfigError(f"{where}: must be a string, not {type(value).__name__}")
    if not value or len(value) > MAX_ADDRESS_CHARS or value != value.strip() or "%" in value:
        raise FirewallConfigError(f"{where}: {value[:MAX_ADDRESS_CHARS]!r} is not an IPv4 or IPv6 address")
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise FirewallConfigError(f"{where}: {value!r} is not an IP address or network ({exc})") from None
    if network.prefixlen < MIN_PREFIX[network.version]:
        raise FirewallConfigError(
            f"{where}: {value!r} is too broad (IPv{network.version} needs at least "
            f"/{MIN_PREFIX[network.version]})"
        )
    address = network.network_address
    if address.is_unspecified or address.is_loopback or address.is_multicast or address.is_link_local:
        raise FirewallConfigError(f"{where}: {value!r} is not a routable host or network address")
    return network


def _vpn(table: object) -> VpnConfig:
    if not isinstance(table, dict):
        raise FirewallConfigError("vpn: must be a table ([vpn])")
    _no_unknown_keys(table, _VPN_KEYS, "vpn")
    for key in ("interface", "address", "listen_port"):
        if key not in table:
            raise FirewallConfigError(f"vpn.{key}: missing")
    interface = table["interface"]
    if not isinstance(interface, str) or not _IFNAME.fullmatch(interface):
        raise FirewallConfigError(f"vpn.interface: {interface!r} is not a valid interface name")
    address = _interface(table["address"], "vpn.address", 4)
    address6 = _interface(table["address6"], "vpn.address6", 6) if "address6" in table else None
    port = table["listen_port"]
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise FirewallConfigError(f"vpn.listen_port: {port!r} is not a port number (1-65535)")
    peers_raw = table.get("peers", [])
    if not isinstance(peers_raw, list) or len(peers_raw) > MAX_ENTRIES:
        raise FirewallConfigError(f"vpn.peers: must be a list of at most {MAX_ENTRIES} [[vpn.peers]] tables")
    peers = _peers(peers_raw, address, address6)
    return VpnConfig(interface=interface, address=address, address6=address6, listen_port=port, peers=peers)


def _interface(value: object, where: str, version: int) -> Any:
    if not isinstance(value, str) or "/" not in value or len(value) > MAX_ADDRESS_CHARS:
        raise FirewallConfigError(f"{where}: {value!r} must be an IPv{version} address with its prefix")
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError as exc:
        raise FirewallConfigError(f"{where}: {value!r} is not an address with a prefix ({exc})") from None
    if iface.version != version:
        raise FirewallConfigError(f"{where}: {value!r} is not an IPv{version} address")
    net = iface.network
    if iface.ip in (net.network_address, net.broadcast_address) and net.num_addresses > 2:
        raise FirewallConfigError(f"{where}: {value!r} is the network's own or broadcast address")
    return iface


def _peers(
    raw: Sequence[object],
    address: ipaddress.IPv4Interface,
    address6: ipaddress.IPv6Interface | None,
) -> tuple[VpnPeer, ...]:
    peers: list[VpnPeer] = []
    used: set[object] = {address.ip} | ({address6.ip} if address6 else set())
    for index, entry in enumerate(raw):
        where = f"vpn.peers[{index}]"
        if not isinstance(entry, dict):
            raise FirewallConfigError(f"{where}: must be a [[vpn.peers]] table")
        _no_unknown_keys(entry, _PEER_KEYS, where)
        name = entry.get("name")
        if not isinstance(name, str) or not _PEER_NAME.fullmatch(name):
            raise FirewallConfigError(f"{where}.name: {name!r} must be 1-32 of a-z 0-9 _ . - (starting a-z)")
        if name in {peer.name for peer in peers}:
            raise FirewallConfigError(f"{where}.name: {name!r} is listed twice")
        key = check_wg_key(entry.get("public_key"), f"{where}.public_key")
        if key in {peer.public_key for peer in peers}:
            raise FirewallConfigError(f"{where}.public_key: the same key is used by two peers")
        ip = _peer_address(entry.get("address"), f"{where}.address", address)
        ip6 = None
        if "address6" in entry:
            if address6 is None:
                raise FirewallConfigError(f"{where}.address6: vpn.address6 is not set")
            ip6 = _peer_address(entry["address6"], f"{where}.address6", address6)
        for value in (ip, ip6):
            if value is not None and value in used:
                raise FirewallConfigError(f"{where}: {value} is already taken")
            used.add(value)
        peers.append(VpnPeer(name=name, public_key=key, address=ip, address6=ip6))
    return tuple(peers)


def _peer_address(value: object, where: str, server: Any) -> Any:
    if not isinstance(value, str) or len(value) > MAX_ADDRESS_CHARS:
        raise FirewallConfigError(f"{where}: {value!r} must be an address string")
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise FirewallConfigError(f"{where}: {value!r} is not an IP address") from None
    if ip not in server.network or ip in (server.network.network_address, server.network.broadcast_address):
        raise FirewallConfigError(f"{where}: {value} is not a host address inside the VPN's {server.network}")
    return ip


def check_wg_key(value: object, where: str) -> str:
    """A WireGuard key is 32 bytes in standard base64 (44 characters, one '=')."""
    if not isinstance(value, str) or len(value) != 44 or not value.endswith("="):
        raise FirewallConfigError(f"{where}: not a WireGuard public key (44 base64 characters)")
    try:
        decoded = base64.b64decode(value, validate=True)
    except binascii.Error:
        raise FirewallConfigError(f"{where}: not a WireGuard public key (bad base64)") from None
    if len(decoded) != 32:
        raise FirewallConfigError(f"{where}: not a WireGuard public key (not 32 bytes)")
    return value
