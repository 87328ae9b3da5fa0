"""A database on another host (the web nodes' Galera cluster behind the balancer's :3306,
docs/scaling.md section 3): what its URL must be, and what the units, the firewall and AppArmor need
so that the web app's user may reach it, and nothing else.

The settings' `[database] url` (database_from_table) switches a web node to it: the installer then
writes every database user's URL to that host (url_for), the drop-ins, the firewall's rule, and the
web app's AppArmor switch (step), and no longer makes a local database; removing the table takes the
drop-ins and the switch away again. Standard library only, as the rest of the installer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from deploy.server.plan import InstallError, Plan, Want, run
from hardening.firewall.addresses import host_address

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
        ip = host_address(host)
    except ValueError as exc:
        # A name would need DNS, which the units' IPAddressAllow= and the firewall cannot follow; the
        # local database is reached over its Unix socket, never over loopback.
        raise RemoteDatabaseError(f"database url: the host {exc}") from None
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


# ---- the settings' [database] table ----------------------------------------------------------------

_TABLE = {"url"}
DATABASE = "strongroom"  # the database's name, as in the local database (steps.DB) and the grants
MAX_URL = 400
# The URL as given: it ends up, rebuilt, on an EnvironmentFile= line, so nothing that could end or
# split the line (or that systemd would unquote) is taken, even where urlsplit would drop it.
_URL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:/@.?&=_+-[]%")


def database_from_table(value: object) -> RemoteDatabase:
    """[database]: `url` only, the database on another host without any user or password (the installer
    generates each database user's password and keeps it in that user's file under /etc/strongroom, as
    for the local database). RemoteDatabaseError names the rule, never quotes the URL."""
    if not isinstance(value, dict):
        raise RemoteDatabaseError("database: must be a table")
    unknown = sorted(set(value) - _TABLE)
    if unknown:
        raise RemoteDatabaseError(f"database.{unknown[0][:32]}: unknown key (only url)")
    url = value.get("url")
    if not isinstance(url, str) or not url:
        raise RemoteDatabaseError("database.url: missing, a string (mysql+pymysql://IP:PORT/strongroom?...)")
    if len(url) > MAX_URL or not set(url) <= _URL_CHARS:
        raise RemoteDatabaseError(
            f"database.url: at most {MAX_URL} characters of letters, digits and :/@.?&=_+-[]%"
        )
    try:
        db = parse_url(url)
    except RemoteDatabaseError as exc:
        raise RemoteDatabaseError(f"database.url: {str(exc).removeprefix('database url: ')}") from None
    if db is None:
        raise RemoteDatabaseError(
            "database.url: a database on this host is the installer's own: remove [database]"
        )
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise RemoteDatabaseError(
            "database.url: no user or password (the installer makes each user's password, docs/deploy.md)"
        )
    if parts.path != f"/{DATABASE}" or parts.fragment:
        raise RemoteDatabaseError(f"database.url: the database is /{DATABASE}, and nothing after it but ?")
    if parse_qs(parts.query, keep_blank_values=True).get("charset") != ["utf8mb4"]:
        raise RemoteDatabaseError("database.url: charset=utf8mb4 (as the local database's URLs)")
    return db


def url_for(db: RemoteDatabase, user: str, password: str) -> str:
    """A database user's URL, rebuilt from the checked parts (never the settings' own text)."""
    host = f"[{db.address}]" if ":" in db.address else db.address
    return f"mysql+pymysql://{user}:{password}@{host}:{db.port}/{DATABASE}?charset=utf8mb4&ssl_ca={db.ssl_ca}"


def preflight(db: RemoteDatabase | None) -> list[str]:
    """The CA the URL names must be there, a regular file, before anything is touched: without it every
    connection fails at the first request, after the old settings were replaced."""
    if db is None:
        return []
    p = Path(db.ssl_ca)
    if p.is_symlink() or not p.is_file():
        return [f"database.url: ssl_ca {db.ssl_ca} is not a regular file (the database's CA, PEM)"]
    if not os.access(p, os.R_OK) or not p.read_bytes().lstrip().startswith(b"-----BEGIN CERTIFICATE-----"):
        return [f"database.url: ssl_ca {db.ssl_ca} is not a readable PEM certificate"]
    return []


# ---- the step: drop-ins, the web app's AppArmor switch, the database admin's part ------------------

# The web app's profile (apparmor/strongroom-web) allows IP sockets only where this file defines the
# variable, and denies them explicitly otherwise: the file's presence is the switch.
APPARMOR_SWITCH = "/etc/apparmor.d/local/strongroom-web-database"
APPARMOR_PROFILE = "/etc/apparmor.d/strongroom-web"
APPARMOR_TEXT = (
    "# Written by deploy/strongroom-install: the database is on another host (settings [database]).\n"
    "# Its presence lets strongroom-web open TCP sockets (apparmor/strongroom-web); removed without it.\n"
    "$strongroom_web_database_tcp = true\n"
)
# The units that run with the web app's settings and are restarted when their network changes; the
# nightly jobs start from their timers with the new drop-in.
_RESTART = ("strongroom-web", "strongroom-mail", "strongroom-health-agent")
USERS_FILES = (
    "/etc/strongroom/webapp.env",
    "/etc/strongroom/keys.env",
    "/etc/strongroom/outbox-prune.env",
    "/etc/strongroom/purge-retired.env",
)


def step(plan: Plan, db: RemoteDatabase | None) -> None:
    """With [database]: each unit's drop-in and the AppArmor switch; without it, both removed (a server
    that never had [database] has neither, and nothing is written)."""
    changed = False
    for unit in UNITS:
        path = DROPIN.format(unit=unit)
        if db is None:
            changed |= plan.absent(path)
        else:
            changed |= plan.file(Want(path, dropin(unit, db).encode()))
    if db is None:
        switch = plan.absent(APPARMOR_SWITCH)
    else:
        switch = plan.file(Want(APPARMOR_SWITCH, APPARMOR_TEXT.encode()))
    if switch and plan.root == Path("/") and os.path.isdir("/sys/kernel/security/apparmor"):
        # The profile is compiled with the switch at load time: reload it now, before the restart.
        plan.change(
            f"AppArmor profile strongroom-web reloaded ({APPARMOR_SWITCH})",
            partial(run, ["apparmor_parser", "-r", "-W", APPARMOR_PROFILE], what="apparmor_parser"),
        )
    if changed or switch:
        plan.restart.update(_RESTART)
    if db is not None:
        plan.note(
            f"the database is on {db.address} port {db.port} ([database]): its admin creates the users "
            "strongroom, strongroom_keys, strongroom_prune and strongroom_purge @ the web nodes' network "
            "REQUIRE SSL with the passwords in " + ", ".join(USERS_FILES) + ", runs `flask --app webapp db "
            "upgrade` as the owner and webapp/db/grants*.sql with that host (docs/scaling.md, section 1); "
            "copy those files to every other web node before installing it"
        )


def firewall_rules(rules: str, db: RemoteDatabase | None, web_uid: str | None) -> str:
    """The rendered firewall with the database's output rule added (unchanged without [database])."""
    if db is None:
        return rules
    if "\tchain output {" not in rules:
        raise InstallError("firewall: the rendered rules lack 'chain output {' (hardening/firewall)")
    if not web_uid:
        return rules  # only in --check on a bare server: a real run stopped at the missing user before
    return rules + nft_rules(db, [web_uid])
