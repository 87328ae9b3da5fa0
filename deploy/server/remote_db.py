"""A database on another host (the web nodes' Galera cluster behind the balancer's :3306,
docs/scaling.md section 3): what its URL must be, and what the units, the firewall and AppArmor need
so that the web app's user may reach it, and nothing else.

Not wired into the settings or the steps yet (docs/scaling.md, "Not built yet"): these are the pieces,
each tested on its own. Standard library only, as the rest of the installer.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_PORT = 3306
# The units that connect to the database as the web app's user (or the nightly jobs' users), with the
# web app's settings: each gets the drop-in. PrivateNetwork=yes is set in the web unit and the two
# nightly jobs; the mailer and the health agent already have IP families and an IPAddressAllow= list.
UNITS = {
    "strongroom-web": True,
    "strongroom-mail": False,
    "strongroom-outbox-prune": True,
    "strongroom-purge-retired": True,
    "strongroom-health-agent": False,
}
DROPIN = "/etc/systemd/system/{unit}.service.d/50-strongroom-remote-database.conf"
# PyMySQL's TLS settings that the URL may carry: the CA only (see parse_url), and the character set.
_QUERY = {"charset", "ssl_ca"}
_CA_DIR = "/etc/strongroom/"


class RemoteDatabaseError(ValueError):
    """The database URL cannot be used for a database on another host; one line, never the URL."""


@dataclass(frozen=True)
class RemoteDatabase:
    address: str  # an IP, canonical
    port: int
    ssl_ca: str

    @property
    def family(self) -> str:
        return "ip6" if ":" in self.address else "ip"


def parse_url(url: str) -> RemoteDatabase | None:
    """None for the local database (a Unix socket on this host); a RemoteDatabase for a TCP host, or
    RemoteDatabaseError naming the rule. The messages never quote the URL: it holds a password."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise RemoteDatabaseError("database url: not a URL, or a port outside 1-65535") from None
    if parts.scheme != "mysql+pymysql":
        raise RemoteDatabaseError("database url: must start with mysql+pymysql://")
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    host = unquote(parts.hostname or "")
    if "unix_socket" in query:
        if host not in ("localhost", ""):
            raise RemoteDatabaseError("database url: unix_socket= and a TCP host at once")
        return None
    if host in ("", "localhost"):
        return None  # PyMySQL's localhost without unix_socket: its default socket on this host
    if "ssl_verify_identity" in query:
        # Measured: with it PyMySQL rebuilds its TLS settings without the CA (docs/scaling.md, 3).
        raise RemoteDatabaseError(
            "database url: no ssl_verify_identity (PyMySQL then drops ssl_ca; ssl_ca alone checks the name)"
        )
    unknown = sorted(set(query) - _QUERY)
    if unknown:
        raise RemoteDatabaseError(
            f"database url: only charset= and ssl_ca= are taken, not {unknown[0][:32]}="
        )
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise RemoteDatabaseError(
            "database url: the host must be an IP address (a name would need DNS, which the units' "
            "IPAddressAllow= and the firewall cannot follow)"
        ) from None
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_link_local:
        raise RemoteDatabaseError(
            "database url: not a loopback, unspecified, multicast or link-local address "
            "(the local database is reached over its Unix socket)"
        )
    if isinstance(ip, ipaddress.IPv6Address) and (ip.ipv4_mapped is not None or ip.scope_id):
        raise RemoteDatabaseError("database url: an IPv6 address without a zone, an IPv4 one as IPv4")
    if port is None:
        port = DEFAULT_PORT
    if not 1 <= port <= 65535:
        raise RemoteDatabaseError("database url: port 1-65535")
    cas = query.get("ssl_ca", [])
    if len(cas) != 1:
        # Without it PyMySQL speaks TLS without checking the server (measured), or not at all.
        raise RemoteDatabaseError(
            "database url: ssl_ca= once, the database's CA (its chain and name are checked)"
        )
    ca = cas[0]
    if (
        not ca.startswith(_CA_DIR)
        or "/.." in ca
        or not all(c.isalnum() or c in "/._-" for c in ca)
        or len(ca) > 200
    ):
        raise RemoteDatabaseError(f"database url: ssl_ca= a file under {_CA_DIR} (the units read only there)")
    return RemoteDatabase(str(ip), port, ca)


def dropin(unit: str, db: RemoteDatabase) -> str:
    """The unit's network opened to the database's address, and to nothing else: the families are
    added to its RestrictAddressFamilies= list (systemd merges the assignments), IPAddressAllow= adds
    the address to its list, and IPAddressDeny=any stays."""
    if unit not in UNITS:
        raise ValueError(f"{unit}: not a unit that connects to the database")
    lines = [
        "# Written by deploy/strongroom-install: the database is on another host (docs/scaling.md).",
        "[Service]",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    ]
    if UNITS[unit]:
        lines.append("PrivateNetwork=no")
    lines.append(f"IPAddressAllow={db.address}")
    return "\n".join(lines) + "\n"


def nft_rules(db: RemoteDatabase, uids: list[str]) -> str:
    """The output rule that lets the service users' new connections to the database's address and port
    past the firewall's owner rule (their sockets otherwise send on lo only), appended to the rendered
    table in the same `nft -f` transaction; the replies are established traffic the input chain takes."""
    if not uids or not all(u.isdigit() for u in uids):
        raise ValueError("nft_rules: numeric uids are required")
    owners = "{ " + ", ".join(uids) + " }"
    return (
        "# Added by deploy/strongroom-install: the database on another host.\n"
        f"insert rule inet strongroom output meta skuid {owners} {db.family} daddr {db.address}"
        f" tcp dport {db.port} accept\n"
    )
