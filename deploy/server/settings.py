"""The settings file of `deploy/strongroom-install`: everything a human must supply, checked strictly.

Standard library only: it is read by the system python3 before the project's virtualenv exists.
Every problem is collected (not just the first) and named by its key, so the admin fixes the file
in one go; nothing on the server is touched until the whole file is valid.
"""

from __future__ import annotations

import ast
import ipaddress
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.server.remote_db import RemoteDatabase, RemoteDatabaseError, database_from_table
from hardening.firewall.addresses import FirewallConfigError, host_address, parse_network
from hardening.ssh import CrlPush, SshdConfigError, crl_push_from_table

MAX_FILE_BYTES = 64 * 1024
MAX_ADMINS = 10  # the alert mailer's limit for STRONGROOM_ALERT_TO (and ops.postfix's)
MAX_NETWORKS = 256
MAX_KEY_CHARS = 16 * 1024

_HOSTNAME = re.compile(
    r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
)
# Debian's adduser default NAME_REGEX, shorter: no upper case, no dots, nothing a shell or sshd
# pattern could read as more than a name.
LOGIN = re.compile(r"[a-z][a-z0-9_-]{0,30}")
# A KEYHOLDER name goes into environment="KEYHOLDER=..." in a root-owned key file: plain only.
_KEYHOLDER = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,31}")
_MAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,253}")
# An admin's address goes into postfix map lines (ops.postfix): lowercase, nothing a map could read
# as syntax.
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_ADMIN_MAIL = re.compile(rf"[a-z0-9][a-z0-9._+-]{{0,63}}@{_LABEL}(\.{_LABEL})*")
_SSH_KEY = re.compile(
    r"(ssh-ed25519|sk-ssh-ed25519@openssh\.com|ecdsa-sha2-nistp256|sk-ecdsa-sha2-nistp256@openssh\.com|ssh-rsa)"
    r" [A-Za-z0-9+/]{40,8000}={0,2}( [A-Za-z0-9@._+-]{1,100})?"
)
# An admin's password for sudo, as a crypt(3) hash made on the admin's own machine (`mkpasswd -m yescrypt`,
# `openssl passwd -6`): never the password itself. Only yescrypt ($y$) and sha512crypt ($6$), whose
# shapes are strict enough that nothing else (a plain password, "*", "!", an empty field, a ':' that
# would split /etc/shadow) can pass.
_PASSWORD_HASH = re.compile(
    r"\$y\$[./A-Za-z0-9]{1,32}\$[./A-Za-z0-9]{1,86}\$[./A-Za-z0-9]{43}"
    r"|\$6\$(rounds=[1-9][0-9]{3,8}\$)?[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{86}"
)
_PATH = re.compile(r"/[A-Za-z0-9_.@+-]+(/[A-Za-z0-9_.@+-]+)*")
_RELAY = re.compile(r"(\[[A-Za-z0-9.-]{1,253}\]|[A-Za-z0-9.-]{1,253})(:[0-9]{1,5})?")
# postfix's relayhost as ops.postfix accepts it: [host.domain] or [IPv4], brackets so no MX lookup.
_RELAYHOST = re.compile(rf"\[{_LABEL}(\.{_LABEL})+\](:(?P<port>[0-9]{{1,5}}))?")
# Names the installer itself uses (services, Debian's accounts): an admin must not take them over.
RESERVED_LOGINS = frozenset(
    {"root", "daemon", "bin", "sys", "sync", "www-data", "mysql", "postfix", "nobody", "sshd", "messagebus"}
    # postfix rewrites mail for these to the admins (ops/postfix REWRITTEN): an admin of that name
    # would be a mail loop.
    | {"postmaster", "abuse", "keyd"}
)

_TOP = {
    *("hostname", "admins", "mail", "loghost", "network", "tls", "backup", "webapp", "balancer"),
    *("crl_push", "database"),
}
_ADMIN = {"login", "mail", "ssh_key", "keyholder", "password_hash"}
_MAILT = {"relay", "from"}
_LOGHOST = {
    "address",
    "port",
    "permitted_peer",
    "ca_file",
    "cert_file",
    "key_file",
    "ssh_host_key",
    "ssh_port",
}
# The log host's SSH host key as its /etc/ssh/ssh_host_*_key.pub holds it ("TYPE BASE64", the comment
# dropped): it goes into a known_hosts line, so nothing else may be in it.
_HOST_KEY = re.compile(
    r"(ssh-ed25519|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521|rsa-sha2-512|rsa-sha2-256|ssh-rsa)"
    r" [A-Za-z0-9+/]{40,8000}={0,2}"
)
_NETWORK = {"admins", "employees", "crm"}
_TLS = {"server_cert", "server_key", "ca_chain", "crl"}
_BACKUP = {"env_file"}
_BALANCER = {"addresses", "listen", "agent_port"}
MAX_BALANCERS = 8
# The health agent's default port (docs/runbook.md section 10, deploy/balancer/haproxy.cfg.in's agent_port).
AGENT_PORT = 9707


# [webapp]: the web app's own settings (STRONGROOM_<NAME> in /etc/strongroom/webapp.env). The names are
# those of webapp/config.py's DEFAULTS, read from its source with ast: this module runs before the
# virtualenv exists, and webapp.config imports click.
WEBAPP_CONFIG = Path(__file__).resolve().parents[2] / "webapp" / "config.py"
# Names the installer writes itself (from other settings, or generated), and what the deployment fixes
# (production mode, Apache's proxy headers): an admin's [webapp] value would silently fight them.
INSTALLER_MANAGED = frozenset(
    {"SECRET_KEY", "DATABASE_URL", "KEYD_SOCKET", "MAIL_FROM", "ALERT_TO", "MODE", "BEHIND_PROXY"}
    | {"PROXY_CERT_HEADER", "PROXY_IP_HEADER"}
    # Copied from keyd's [budgets] (steps.keyd_budgets): the web app's global reveal budget and each
    # keyd's own ceiling must be the same numbers (docs/scaling.md, "Budgets across nodes").
    | {"REVEAL_BUDGETS"}
)
MAX_WEBAPP_VALUE = 2048
# An unquoted value systemd's EnvironmentFile= reads literally; anything else is single-quoted, where
# systemd reads every character literally except the closing quote (so ' and \ are refused).
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.,:/@+=-]+")


def webapp_setting_names(config: Path = WEBAPP_CONFIG) -> frozenset[str]:
    """The keys of the DEFAULTS dict literal in webapp/config.py."""
    for node in ast.parse(config.read_text()).body:
        target: ast.expr | None = None
        if isinstance(node, ast.AnnAssign):
            target = node.target
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and target.id == "DEFAULTS" and isinstance(value, ast.Dict):
            return frozenset(
                k.value for k in value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)
            )
    raise RuntimeError(f"{config}: no DEFAULTS dict")  # the checkout itself is broken


def webapp_value(value: object) -> str | None:
    """One [webapp] value as it goes after `STRONGROOM_NAME=` in an EnvironmentFile, or None when it
    cannot go there safely. The web app parses it as JSON when it parses, else keeps the string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if abs(value) < 10**15 else None
    if not isinstance(value, str) or not value or len(value) > MAX_WEBAPP_VALUE:
        return None
    if _PLAIN_VALUE.fullmatch(value):
        return value
    if value != value.strip() or any(c in "'\\" or not c.isprintable() for c in value):
        return None  # control characters (newline, NUL...), quotes systemd would read, edge spaces
    return f"'{value}'"


class SettingsError(ValueError):
    """The settings file is invalid; `problems` holds one line per problem, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Admin:
    login: str
    mail: str
    ssh_key: str
    keyholder: str
    password_hash: str  # crypt(3), for sudo only: SSH stays key-only


@dataclass(frozen=True)
class LogHost:
    address: str
    port: int
    permitted_peer: str
    ca_file: str
    cert_file: str
    key_file: str
    # The remote copy's SFTP pull (ops/remote_copy.py): the log host's pinned SSH host key and port.
    ssh_host_key: str = ""
    ssh_port: int = 22


@dataclass(frozen=True)
class Tls:
    server_cert: str
    server_key: str
    ca_chain: str
    crl: str


@dataclass(frozen=True)
class Balancer:
    """[balancer]: this server is a web node behind HAProxy (docs/scaling.md)."""

    addresses: tuple[str, ...]  # the balancers' IP addresses, canonical form
    listen: str  # this node's address the balancers reach; the health agent listens there
    agent_port: int = AGENT_PORT

    @property
    def agent(self) -> str:
        """The health agent's --agent ADDR:PORT ([ADDR]:PORT for IPv6)."""
        host = f"[{self.listen}]" if ":" in self.listen else self.listen
        return f"{host}:{self.agent_port}"


@dataclass(frozen=True)
class Settings:
    hostname: str
    admins: tuple[Admin, ...]
    relay: str  # "" = local delivery into /var/mail on this server
    mail_from: str
    loghost: LogHost
    admin_networks: tuple[str, ...]
    employee_networks: tuple[str, ...]
    crm_networks: tuple[str, ...]
    tls: Tls
    backup_env: str  # "" = no backup settings yet: the timer stays off
    # [webapp]: (NAME, value as rendered for webapp.env), sorted; written as STRONGROOM_NAME=value.
    webapp: tuple[tuple[str, str], ...] = ()
    # None: a single server, employees reach Apache directly.
    balancer: Balancer | None = None
    # [crl_push]: the CA host's CRL push to this web node (docs/ca.md), by hardening.ssh's own rules.
    crl_push: CrlPush | None = None
    # [database]: the database on another host (docs/deploy.md); None: the installer's local MariaDB.
    database: RemoteDatabase | None = None

    @property
    def alert_to(self) -> tuple[str, ...]:
        return tuple(a.mail for a in self.admins)


class _Reader:
    """Collects problems instead of stopping at the first one."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def bad(self, key: str, why: str) -> None:
        self.problems.append(f"{key}: {why}")

    def table(
        self, data: dict[str, Any], key: str, allowed: set[str], *, required: bool = True
    ) -> dict[str, Any]:
        value = data.get(key)
        if value is None:
            if required:
                self.bad(key, "missing")
            return {}
        if not isinstance(value, dict):
            self.bad(key, "must be a table")
            return {}
        self.unknown(value, allowed, key)
        return value

    def unknown(self, data: dict[str, Any], allowed: set[str], where: str) -> None:
        for k in sorted(set(data) - allowed):
            self.bad(f"{where}.{k}" if where else k, "unknown key")

    def text(
        self, data: dict[str, Any], key: str, where: str, pattern: re.Pattern[str], *, required: bool = True
    ) -> str:
        name = f"{where}.{key}" if where else key
        value = data.get(key)
        if value is None:
            if required:
                self.bad(name, "missing")
            return ""
        if not isinstance(value, str):
            self.bad(name, "must be a string")
            return ""
        if value == "" and not required:
            return ""
        if len(value) > MAX_KEY_CHARS or not pattern.fullmatch(value):
            self.bad(name, "malformed")
            return ""
        return value

    def path(self, data: dict[str, Any], key: str, where: str, *, required: bool = True) -> str:
        value = self.text(data, key, where, _PATH, required=required)
        if value and ".." in value.split("/"):
            self.bad(f"{where}.{key}", "'..' is not allowed")
            return ""
        return value

    def networks(self, data: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
        name = f"{where}.{key}"
        value = data.get(key)
        if value is None:
            self.bad(name, "missing (an empty list [] admits nobody)")
            return ()
        if not isinstance(value, list) or len(value) > MAX_NETWORKS:
            self.bad(name, f"must be a list of at most {MAX_NETWORKS} addresses")
            return ()
        out = []
        for i, item in enumerate(value):
            try:
                out.append(str(parse_network(item, f"{name}[{i}]")))
            except FirewallConfigError as exc:
                self.problems.append(str(exc) if str(exc).startswith(name) else f"{name}[{i}]: {exc}")
        if len(set(out)) != len(out):
            self.bad(name, "duplicate entry")
        return tuple(out)


def load(path: Path) -> Settings:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SettingsError([f"settings: cannot read {path}: {exc.strerror}"]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise SettingsError([f"settings: larger than {MAX_FILE_BYTES} bytes"])
    try:
        return parse(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SettingsError(["settings: not UTF-8"]) from None


def parse(text: str) -> Settings:
    r = _Reader()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError([f"settings: not valid TOML ({exc})"]) from None
    r.unknown(data, _TOP, "")

    hostname = r.text(data, "hostname", "", _HOSTNAME)
    if hostname and "." not in hostname:
        r.bad("hostname", "a fully qualified name (the server certificate's and the mail's name)")

    mail = r.table(data, "mail", _MAILT, required=False)
    relay = r.text(mail, "relay", "mail", _RELAYHOST, required=False)
    port_match = _RELAYHOST.fullmatch(relay)
    if port_match and port_match["port"] and not 1 <= int(port_match["port"]) <= 65535:
        r.bad("mail.relay", "port 1-65535")
    mail_from = r.text(mail, "from", "mail", _MAIL, required=False) or (
        f"strongroom@{hostname}" if hostname else ""
    )
    # postfix's loopback listener takes senders of this host only (ops.postfix): any other sender
    # would be refused and the alert lost.
    if mail_from and hostname and mail_from.rsplit("@", 1)[1].lower() != hostname:
        r.bad("mail.from", f"must be an address @{hostname} (postfix accepts only this host's senders)")

    admins = _admins(r, data.get("admins"), hostname, relay)

    lh = r.table(data, "loghost", _LOGHOST)
    lh_address = r.text(lh, "address", "loghost", _RELAY) if lh else ""
    if lh_address and ":" in lh_address and not _is_ip(lh_address):
        r.bad("loghost.address", "a host name or an IP address, without a port")
    port = lh.get("port", 6514)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        r.bad("loghost.port", "an integer 1-65535")
        port = 6514
    ssh_port = lh.get("ssh_port", 22)
    if isinstance(ssh_port, bool) or not isinstance(ssh_port, int) or not 1 <= ssh_port <= 65535:
        r.bad("loghost.ssh_port", "an integer 1-65535")
        ssh_port = 22
    loghost = LogHost(
        address=lh_address,
        port=port,
        permitted_peer=r.text(lh, "permitted_peer", "loghost", _HOSTNAME) if lh else "",
        ca_file=r.path(lh, "ca_file", "loghost") if lh else "",
        cert_file=r.path(lh, "cert_file", "loghost") if lh else "",
        key_file=r.path(lh, "key_file", "loghost") if lh else "",
        ssh_host_key=_host_key(r, lh) if lh else "",
        ssh_port=ssh_port,
    )

    net = r.table(data, "network", _NETWORK)
    nets = {k: r.networks(net, k, "network") if net else () for k in sorted(_NETWORK)}
    if net and not nets["admins"]:
        r.bad("network.admins", "empty: nobody could log in over SSH")

    tls_t = r.table(data, "tls", _TLS)
    tls = Tls(
        *(r.path(tls_t, k, "tls") if tls_t else "" for k in ("server_cert", "server_key", "ca_chain", "crl"))
    )

    backup = r.table(data, "backup", _BACKUP, required=False)
    backup_env = r.path(backup, "env_file", "backup") if backup else ""

    webapp = _webapp(r, data.get("webapp"))

    balancer = _balancer(r, data.get("balancer"))
    if balancer is not None:
        # Apache then takes only connections that start with a PROXY header, which only the balancers
        # send (docs/apache.md): a direct employee could not connect, and the firewall admits 443 from
        # the balancers alone. Listed here they would be silently ignored.
        for key in ("employees", "crm"):
            if nets[key]:
                r.bad(
                    f"network.{key}",
                    "must be [] with [balancer]: only the balancers reach this node's 443 "
                    "(list the employees in the balancers' own firewall)",
                )

    crl_push = _crl_push(r, data.get("crl_push"), admins)
    database = None
    if data.get("database") is not None:
        try:
            database = database_from_table(data["database"])
        except RemoteDatabaseError as exc:  # its rules, in deploy/server/remote_db.py; never the URL
            r.problems.append(str(exc))

    if r.problems:
        raise SettingsError(r.problems)
    return Settings(
        hostname=hostname,
        admins=admins,
        relay=relay,
        mail_from=mail_from,
        loghost=loghost,
        admin_networks=nets["admins"],
        employee_networks=nets["employees"],
        crm_networks=nets["crm"],
        tls=tls,
        backup_env=backup_env,
        webapp=webapp,
        balancer=balancer,
        crl_push=crl_push,
        database=database,
    )


# Accounts the installer makes or uses for something else: the CA host's key must never log in as one
# of them (it would get that account's files and, for the admins' group, its sudo).
SERVICE_ACCOUNTS = frozenset(
    {"strongroom-web", "strongroom-keyd", "strongroom-keyd-clients", "strongroom-admins"}
    | {"strongroom-logpull", "strongroom_prune", "strongroom_purge"}
)


def _crl_push(r: _Reader, value: object, admins: tuple[Admin, ...]) -> CrlPush | None:
    """[crl_push] exactly as `python -m hardening.ssh --settings` reads it (its parser, not a copy), and
    then what only the installer knows: the account is its own, not an admin's or a service's."""
    if value is None:
        return None
    try:
        push = crl_push_from_table(value)
    except SshdConfigError as exc:
        r.problems.append(str(exc))
        return None
    if push.user in RESERVED_LOGINS or push.user in SERVICE_ACCOUNTS:
        r.bad(
            "crl_push.user",
            "an account of the system or of another service; use its own, e.g. strongroom-crl",
        )
        return None
    if push.user in {a.login for a in admins}:
        r.bad("crl_push.user", "an admin's login; the push needs an account of its own (strongroom-crl)")
        return None
    return push


def _webapp(r: _Reader, value: object) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        r.bad("webapp", "must be a table")
        return ()
    known = webapp_setting_names()
    out = []
    for name in sorted(value):
        key = f"webapp.{name}" if re.fullmatch(r"[A-Za-z0-9_]{1,64}", name) else "webapp.(a malformed name)"
        if name in INSTALLER_MANAGED or name.startswith("SMTP_"):
            r.bad(key, "set by the installer itself (from the other settings), not here")
        elif name not in known:
            r.bad(key, "not a setting of the web app (webapp/config.py, docs/webapp.md)")
        elif (rendered := webapp_value(value[name])) is None:
            r.bad(
                key,
                "a string (no quote, backslash, control character or edge space, at most "
                f"{MAX_WEBAPP_VALUE} characters), an integer or true/false",
            )
        else:
            out.append((name, rendered))
    return tuple(out)


def _node_ip(r: _Reader, value: object, key: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """One address of a host on the balancers' network: an IP (a name would be resolved at some other
    time than the balancer's), unicast, routable beyond this host, without a zone (it goes into
    systemd's IPAddressAllow=, nft and the agent's --agent as is)."""
    try:
        return host_address(value)
    except ValueError as exc:
        r.bad(key, str(exc))
        return None


def _balancer(r: _Reader, value: object) -> Balancer | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        r.bad("balancer", "must be a table")
        return None
    r.unknown(value, _BALANCER, "balancer")
    addresses = value.get("addresses")
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    if not isinstance(addresses, list) or not 1 <= len(addresses) <= MAX_BALANCERS:
        r.bad("balancer.addresses", f"a list of 1 to {MAX_BALANCERS} IP addresses (the balancers')")
    else:
        for i, item in enumerate(addresses):
            ip = _node_ip(r, item, f"balancer.addresses[{i}]")
            if ip is not None:
                found.append(ip)
        if len(set(found)) != len(found):
            r.bad("balancer.addresses", "duplicate entry")
    listen = None
    if "listen" not in value:
        r.bad("balancer.listen", "missing (this node's address the balancers connect to)")
    else:
        listen = _node_ip(r, value["listen"], "balancer.listen")
    if listen is not None and listen in found:
        r.bad("balancer.listen", "is a balancer's address; it must be this node's own")
    if listen is not None and any(ip.version != listen.version for ip in found):
        # The agent listens on one address: a balancer of the other IP version could not reach it.
        r.bad("balancer.addresses", f"must all be IPv{listen.version}, as balancer.listen is")
    port = value.get("agent_port", AGENT_PORT)
    # Above 1023: the agent runs unprivileged, without CAP_NET_BIND_SERVICE (and away from 22 and 443).
    if isinstance(port, bool) or not isinstance(port, int) or not 1024 <= port <= 65535:
        r.bad("balancer.agent_port", "an integer 1024-65535")
        port = AGENT_PORT
    if listen is None or not found:
        return None  # refused above: parse() raises before this is used
    return Balancer(tuple(str(ip) for ip in found), str(listen), port)


def _host_key(r: _Reader, lh: dict[str, Any]) -> str:
    value = lh.get("ssh_host_key")
    if isinstance(value, str):
        # A .pub file's line as pasted: TYPE BASE64 [COMMENT]; the comment is not part of the key.
        value = " ".join(value.split()[:2])
    return r.text({"ssh_host_key": value}, "ssh_host_key", "loghost", _HOST_KEY)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _admins(r: _Reader, value: object, hostname: str, relay: str) -> tuple[Admin, ...]:
    if not isinstance(value, list) or not value or len(value) > MAX_ADMINS:
        r.bad("admins", f"a list of 1 to {MAX_ADMINS} [[admins]] tables")
        return ()
    admins: list[Admin] = []
    for i, item in enumerate(value):
        where = f"admins[{i}]"
        if not isinstance(item, dict):
            r.bad(where, "must be a table")
            continue
        r.unknown(item, _ADMIN, where)
        login = r.text(item, "login", where, LOGIN)
        if login in RESERVED_LOGINS or login.startswith("strongroom"):
            r.bad(f"{where}.login", "reserved for the system")
            login = ""
        address = r.text(item, "mail", where, _ADMIN_MAIL)
        # Without a relay postfix delivers only to this server's own mailboxes: an outside address
        # would bounce silently into the queue, and the alarm would never ring.
        if address and not relay and hostname and address.lower() != f"{login}@{hostname}":
            r.bad(
                f"{where}.mail",
                f"without mail.relay it must be the local mailbox {login or 'LOGIN'}@{hostname}",
            )
        key = r.text(item, "ssh_key", where, _SSH_KEY)
        keyholder = r.text(item, "keyholder", where, _KEYHOLDER)
        password_hash = r.text(item, "password_hash", where, _PASSWORD_HASH)
        admins.append(Admin(login, address, key, keyholder, password_hash))
    for field in ("login", "keyholder", "ssh_key"):
        seen = [getattr(a, field) for a in admins if getattr(a, field)]
        if len(set(seen)) != len(seen):
            r.bad(f"admins.{field}", "duplicate")
    return tuple(admins)
