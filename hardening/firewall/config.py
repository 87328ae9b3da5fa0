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

The file is declared as a model (common/settings.py) and parsed strictly: an unknown key, a malformed
or overly broad address, a duplicate, a uid that is not a plain number or is root's, a connection limit
that is not a whole number from 1 to 4096, or a peer outside the VPN's network is refused with
`FirewallConfigError`, one line per problem naming the place and the rule (never the value), and
nothing is rendered.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field, PlainValidator, model_validator

from common.settings import Array, SettingsModel, SettingsRefused, read_toml, validate
from common.tomlfile import loads_toml
from hardening.firewall.addresses import MAX_ADDRESS_CHARS, FirewallConfigError, Network
from hardening.firewall.addresses import network as _network
from hardening.firewall.addresses import wg_key as _wg_key

MAX_FILE_BYTES = 64 * 1024
MAX_ENTRIES = 256
_IFNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")  # Linux IFNAMSIZ is 16 including the NUL
_PEER_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,31}")
# uid 0 would cut root (apt, postfix's delivery, the admins' shells) off the network; 2**32-1 is
# (uid_t)-1, "no user", which the kernel never gives a socket.
MAX_UID = 2**32 - 2
# Per source address, not per network: one host of a listed network (a compromised laptop) must not hold
# open every Apache worker (384, apache/strongroom-site.conf) while its colleagues wait. Above 4096 a limit
# no longer limits anything on this server; a value outside 1..4096 is a typo.
MAX_CONNECTION_LIMIT = 4096


# -- the rules for one value: each returns the parsed value or raises ValueError with the rule -------


def _uid(value: object) -> int:
    # bool is an int in Python; a TOML `true` is a typo, never a uid.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("is not a numeric uid (names are not accepted)")
    if not 1 <= value <= MAX_UID:
        raise ValueError(f"is not a uid from 1 to {MAX_UID} (root's 0 is refused)")
    return value


def _interface(version: int) -> Any:
    def check(value: object) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        if not isinstance(value, str) or "/" not in value or len(value) > MAX_ADDRESS_CHARS:
            raise ValueError(f"must be an IPv{version} address with its prefix")
        try:
            iface = ipaddress.ip_interface(value)
        except ValueError:
            raise ValueError("is not an address with a prefix") from None
        if iface.version != version:
            raise ValueError(f"is not an IPv{version} address")
        net = iface.network
        if iface.ip in (net.network_address, net.broadcast_address) and net.num_addresses > 2:
            raise ValueError("is the network's own or broadcast address")
        return iface

    return check


def _address(version: int) -> Any:
    def check(value: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        if not isinstance(value, str) or len(value) > MAX_ADDRESS_CHARS:
            raise ValueError("must be an address string")
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("is not an IP address") from None
        if ip.version != version:
            raise ValueError(f"is not an IPv{version} address")
        return ip

    return check


def _peer_name(value: str) -> str:
    if not _PEER_NAME.fullmatch(value):
        raise ValueError("must be 1-32 of a-z 0-9 _ . - (starting a-z)")
    return value


def _ifname(value: str) -> str:
    if not _IFNAME.fullmatch(value):
        raise ValueError("is not a valid interface name")
    return value


def _distinct(items: tuple[Any, ...]) -> tuple[Any, ...]:
    for index, item in enumerate(items):
        if item in items[:index]:
            raise ValueError(f"[{index}] is listed twice")
    return items


def _some(items: tuple[Any, ...]) -> tuple[Any, ...]:
    if not items:
        # An empty list renders a firewall nobody can administer over SSH.
        raise ValueError("at least one address is required")
    return items


NetworkList = Annotated[
    Array[Annotated[Network, PlainValidator(_network)]],
    Field(max_length=MAX_ENTRIES),
    AfterValidator(_distinct),
]
ConnectionLimit = Annotated[int, Field(ge=1, le=MAX_CONNECTION_LIMIT)]


# -- the file, declared ------------------------------------------------------------------------------


class VpnPeer(SettingsModel):
    name: Annotated[str, AfterValidator(_peer_name)]
    public_key: Annotated[str, PlainValidator(_wg_key)]
    address: Annotated[ipaddress.IPv4Address, PlainValidator(_address(4))]
    address6: Annotated[ipaddress.IPv6Address, PlainValidator(_address(6))] | None = None


class VpnConfig(SettingsModel):
    interface: Annotated[str, AfterValidator(_ifname)]
    address: Annotated[ipaddress.IPv4Interface, PlainValidator(_interface(4))] = Field(
        description="the server's own IPv4 address on the VPN, with the VPN's prefix"
    )
    address6: Annotated[ipaddress.IPv6Interface, PlainValidator(_interface(6))] | None = None
    listen_port: int = Field(ge=1, le=65535)
    peers: Array[VpnPeer] = Field(default=(), max_length=MAX_ENTRIES)

    @model_validator(mode="after")
    def _peers_fit(self) -> VpnConfig:
        used: set[object] = {self.address.ip} | ({self.address6.ip} if self.address6 else set())
        names: set[str] = set()
        keys: set[str] = set()
        for index, peer in enumerate(self.peers):
            where = f"peers[{index}]"
            if peer.name in names:
                raise ValueError(f"{where}.name is listed twice")
            if peer.public_key in keys:
                raise ValueError(f"{where}.public_key: the same key is used by two peers")
            names.add(peer.name)
            keys.add(peer.public_key)
            if peer.address6 is not None and self.address6 is None:
                raise ValueError(f"{where}.address6 is set but vpn.address6 is not")
            for key, ip, server in (
                ("address", peer.address, self.address),
                ("address6", peer.address6, self.address6),
            ):
                if ip is None or server is None:
                    continue
                net = server.network
                if ip not in net or ip in (net.network_address, net.broadcast_address):
                    raise ValueError(f"{where}.{key} is not a host address inside the VPN's {net}")
                if ip in used:
                    raise ValueError(f"{where}.{key} is already taken")
                used.add(ip)
        return self


class ConnectionLimits(SettingsModel):
    """Concurrent TCP connections one source address of each list may hold (render: refused with a reset
    above it). The CRM has its own, higher limit: it is one host whose pool serves many users at once."""

    admins: ConnectionLimit = 10
    employees: ConnectionLimit = 20
    crm: ConnectionLimit = 64


class NetworkConfig(SettingsModel):
    admins: Annotated[NetworkList, AfterValidator(_some)] = Field(description="write the admins' addresses")
    employees: NetworkList = Field(description="write employees = [] if there are none")
    crm: NetworkList = Field(description="write crm = [] if there are none")
    vpn: VpnConfig | None = None
    # Users whose sockets may send only on the loopback interface (render: an OUTPUT reject rule).
    local_only_uids: Annotated[
        Array[Annotated[int, PlainValidator(_uid)]], Field(max_length=MAX_ENTRIES), AfterValidator(_distinct)
    ] = ()
    limits: ConnectionLimits = Field(default=ConnectionLimits(), alias="connection_limits")

    @property
    def https_clients(self) -> tuple[Network, ...]:
        """Who may reach 443 (and, in the VPN variant, the WireGuard port): employees and the CRM."""
        seen: dict[Network, None] = dict.fromkeys(self.employees + self.crm)
        return tuple(seen)


def load_config(path: Path) -> NetworkConfig:
    try:
        raw = read_toml(path, max_bytes=MAX_FILE_BYTES)
    except SettingsRefused as exc:
        raise FirewallConfigError(str(exc)) from None
    return _validate(raw)


def parse_config(text: str) -> NetworkConfig:
    try:
        raw = loads_toml(text)
    except SettingsRefused as exc:
        raise FirewallConfigError(str(exc)) from None
    return _validate(raw)


def _validate(raw: dict[str, Any]) -> NetworkConfig:
    try:
        # No source: the command that read the file names it once, before the problems.
        return validate(NetworkConfig, raw, source="")
    except SettingsRefused as exc:
        raise FirewallConfigError(str(exc)) from None
