"""sshd configuration for door #1, rendered from one template (sshd_config.in).

`render()` with the defaults gives the production /etc/ssh/sshd_config (also shipped as
hardening/ssh/sshd_config, kept equal by a test); tests render it with a loopback port and private
paths and run a real sshd from it. Values are checked strictly: a newline or a blank inside a value
would smuggle an extra directive into the file.

The settings file (`python -m hardening.ssh --settings /etc/strongroom/sshd.toml`, `load_settings`)
holds what differs between servers; today that is one optional table, the CRL receiver of a web node
(docs/ca.md, "Several web nodes: pushing the CRL")::

    [crl_push]
    user = "strongroom-crl"           # the account the CA host's push key logs in to
    from = ["192.0.2.20"]             # the CA host: IP addresses or networks
    command = ["/usr/bin/env", "-C", "/opt/strongroom", "/opt/strongroom/.venv/bin/python",
               "-m", "ca.crl_receive", "--crl", "/etc/apache2/strongroom-crl/crl.pem",
               "--chain", "/etc/apache2/strongroom/chain.pem",
               "--reload-command", "sudo -n /usr/sbin/apache2ctl graceful"]

It renders two `Match` blocks after the global settings (`_crl_push_block`): the global `ForceCommand`
(the session hook) wins over a key's `command=`, so the receiver must be sshd's own forced command for
that user. Without the table the file is byte for byte what it was before the table existed.
Standard library only: the installer imports this with the system python3.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from common.tomlfile import SettingsRefused, loads_toml, read_toml

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "sshd_config.in"
SHIPPED = HERE / "sshd_config"
HOOK = HERE / "session_hook.py"

_TOKEN = re.compile(r"[A-Za-z0-9_./%:@\[\]-]{1,255}")
_GROUP = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_ADDRESS = re.compile(r"[0-9A-Fa-f.:\[\]]{2,64}")
_USER = _GROUP
# The receiver's command line goes through the user's login shell (`sh -c`) after sshd has split the
# line with its own quoting rules; each argument is quoted for the shell here, so it may hold a blank
# (the reload command) but nothing sshd or the shell could read differently: no quote, backslash, `#`,
# `$`, `%` or control character.
_COMMAND_ARG = re.compile(r"[A-Za-z0-9_./:=@+, -]{1,512}")
_COMMAND_PATH = re.compile(r"/[A-Za-z0-9_./+-]{1,254}")
MAX_CRL_SOURCES = 16
MAX_COMMAND_ARGS = 32
# The CA is one host (or a few): a network broader than this is a typo, and would let any host in it
# try the push key.
MIN_CRL_PREFIX = {4: 24, 6: 64}
SETTINGS_MAX_BYTES = 16 * 1024


class SshdConfigError(ValueError):
    """A setting would produce an unsafe or invalid sshd_config."""


def _crl_user(value: object) -> str:
    if not isinstance(value, str) or not _USER.fullmatch(value):
        raise SshdConfigError("crl_push.user: a plain user name (a-z, 0-9, _ and -; no patterns)")
    if value == "root":
        raise SshdConfigError("crl_push.user: not root (sshd admits no root login)")
    return value


def _crl_source(value: object, index: int) -> str:
    where = f"crl_push.from[{index}]"
    if not isinstance(value, str) or not 1 <= len(value) <= 64 or value != value.strip() or "%" in value:
        raise SshdConfigError(f"{where}: an IP address or network is required")
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise SshdConfigError(f"{where}: an IP address or network (no host bits set) is required") from None
    if net.prefixlen < MIN_CRL_PREFIX[net.version]:
        raise SshdConfigError(
            f"{where}: too broad (IPv{net.version} needs at least /{MIN_CRL_PREFIX[net.version]})"
        )
    address = net.network_address
    if address.is_unspecified or address.is_multicast:
        raise SshdConfigError(f"{where}: not a host or network address")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # sshd sees an IPv4 client as its IPv4 address: this entry would never match.
        raise SshdConfigError(f"{where}: write an IPv4 address as IPv4")
    # One host is written as an address: sshd reads both, and the rendered block reads as the setting.
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def _crl_command(value: object) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_COMMAND_ARGS:
        raise SshdConfigError(f"crl_push.command: a list of 1 to {MAX_COMMAND_ARGS} arguments is required")
    if not isinstance(value[0], str) or not _COMMAND_PATH.fullmatch(value[0]):
        raise SshdConfigError("crl_push.command[0]: an absolute path of plain characters is required")
    for index, arg in enumerate(value[1:], start=1):
        if not isinstance(arg, str) or not _COMMAND_ARG.fullmatch(arg) or arg != arg.strip():
            raise SshdConfigError(
                f"crl_push.command[{index}]: letters, digits, blanks inside and _ . / : = @ + , - only"
            )
    return tuple(value)


@dataclass(frozen=True)
class CrlPush:
    """The account the CA host's push key logs in to, the addresses it may come from, and the one
    command it runs (docs/ca.md). Checked here, so a CrlPush that exists is safe to render."""

    user: str
    sources: tuple[str, ...]
    command: tuple[str, ...]

    def __post_init__(self) -> None:
        _crl_user(self.user)
        if not isinstance(self.sources, (list, tuple)) or not 1 <= len(self.sources) <= MAX_CRL_SOURCES:
            raise SshdConfigError(f"crl_push.from: 1 to {MAX_CRL_SOURCES} addresses are required")
        sources = tuple(_crl_source(v, i) for i, v in enumerate(self.sources))
        for index, source in enumerate(sources):
            if source in sources[:index]:
                raise SshdConfigError(f"crl_push.from[{index}]: listed twice")
        object.__setattr__(self, "sources", sources)
        object.__setattr__(self, "command", _crl_command(self.command))


@dataclass(frozen=True)
class SshdSettings:
    port: int = 22
    # Empty: every address (the firewall admits port 22 from the admins' addresses only).
    listen: tuple[str, ...] = ()
    host_keys: tuple[str, ...] = ("/etc/ssh/ssh_host_ed25519_key",)
    pid_file: str = "/run/sshd.pid"
    allow_groups: tuple[str, ...] = ("strongroom-admins",)
    authorized_keys: str = "/etc/ssh/authorized_keys/%u"
    hook: tuple[str, ...] = ("/usr/local/lib/strongroom/ssh-session-hook",)
    sftp_server: str = "/usr/lib/openssh/sftp-server"
    crl_push: CrlPush | None = None


def _path(value: str, name: str) -> str:
    if not value.startswith("/") or not _TOKEN.fullmatch(value):
        raise SshdConfigError(f"{name}: an absolute path of plain characters is required")
    return value


def render(settings: SshdSettings | None = None) -> str:
    s = settings or SshdSettings()
    if isinstance(s.port, bool) or not 1 <= s.port <= 65535:
        raise SshdConfigError("port: 1-65535")
    for address in s.listen:
        if not _ADDRESS.fullmatch(address):
            raise SshdConfigError("listen: IP addresses only")
    if not s.host_keys or not s.allow_groups or not s.hook:
        raise SshdConfigError("host_keys, allow_groups and hook must not be empty")
    for group in s.allow_groups:
        if not _GROUP.fullmatch(group):
            raise SshdConfigError("allow_groups: plain group names only (no patterns)")
    keys = _path(s.authorized_keys, "authorized_keys")
    if "%u" not in keys or keys.startswith(("/home", "/root")) or "%h" in keys:
        raise SshdConfigError("authorized_keys: a root-owned place per user (%u), not the user's home")
    _path(s.hook[0], "hook")
    for arg in s.hook[1:]:
        if not _TOKEN.fullmatch(arg):
            raise SshdConfigError("hook: plain arguments only")
    if s.crl_push is not None and not isinstance(s.crl_push, CrlPush):
        raise SshdConfigError("crl_push: a CrlPush is required")
    text = Template(TEMPLATE.read_text()).substitute(
        port=s.port,
        listen_lines="\n".join(f"ListenAddress {a}" for a in s.listen) or "# ListenAddress: all",
        host_key_lines="\n".join(f"HostKey {_path(k, 'host_keys')}" for k in s.host_keys),
        pid_file=_path(s.pid_file, "pid_file"),
        allow_groups=" ".join(s.allow_groups),
        authorized_keys=keys,
        hook=" ".join(s.hook),
        sftp_server=_path(s.sftp_server, "sftp_server"),
    )
    if s.crl_push is None:
        return text  # byte for byte the file from before [crl_push] existed (a test holds it to that)
    if s.crl_push.user in s.allow_groups:
        raise SshdConfigError("crl_push.user: not a name of allow_groups (it is the admins' group)")
    return text + _crl_push_block(s.crl_push)


def _crl_push_block(push: CrlPush) -> str:
    """The CRL receiver's account: in from its sources only, and there to its own forced command.

    Match blocks come after every global setting (a Match runs to the end of the file or the next
    Match). sshd applies the first value it reads for a setting, except that a Match block's
    AllowUsers/AllowGroups/DenyUsers replace the global list: so AllowGroups is replaced for this user
    at the CA's addresses only, and AllowUsers names it with those addresses as well. From anywhere
    else the global AllowGroups (the admins) already shuts it out; the second block also says so,
    with DenyUsers, and leaves it no way to authenticate and nothing to run, should the user ever be
    put into an admin group. Its address list is the negation of the first one's: a connection from
    the CA matching both blocks would get the second block's DenyUsers as well (measured)."""
    sources = ",".join(push.sources)
    negated = ",".join(f"!{a}" for a in push.sources)
    allow_users = " ".join(f"{push.user}@{a}" for a in push.sources)
    command = " ".join(shlex.quote(arg) for arg in push.command)
    return (
        "\n"
        '# The CA host\'s CRL push (docs/ca.md, "Several web nodes: pushing the CRL"), rendered from\n'
        "# [crl_push]. sshd lets the global ForceCommand above win over a key's command=, so the\n"
        "# receiver is this user's ForceCommand here; the session hook never runs for it.\n"
        f"Match User {push.user} Address {sources}\n"
        f"    AllowUsers {allow_users}\n"
        "    # Its own group (adduser --group), in place of the admins' group for this user only.\n"
        f"    AllowGroups {push.user}\n"
        "    AuthenticationMethods publickey\n"
        "    PermitTTY no\n"
        "    DisableForwarding yes\n"
        "    PermitUserRC no\n"
        f"    ForceCommand {command}\n"
        f"Match User {push.user} Address {negated},*\n"
        f"    DenyUsers {push.user}\n"
        "    PubkeyAuthentication no\n"
        "    ForceCommand /bin/false\n"
    )


def parse_settings(text: str, *, source: str = "") -> SshdSettings:
    """The production settings with the server's own from a settings file's text (see the module
    docstring); SshdConfigError with one line naming the key and the rule, never the value."""
    try:
        raw = loads_toml(text, source=source)
    except SettingsRefused as exc:
        raise SshdConfigError(str(exc)) from None
    return _settings(raw)


def load_settings(path: Path) -> SshdSettings:
    try:
        raw = read_toml(path, max_bytes=SETTINGS_MAX_BYTES)
    except SettingsRefused as exc:
        raise SshdConfigError(str(exc)) from None
    return _settings(raw)


def _settings(raw: dict[str, Any]) -> SshdSettings:
    for key in raw:
        if key != "crl_push":
            raise SshdConfigError(f"{_key(key)}: not a known setting (only [crl_push])")
    table = raw.get("crl_push")
    if table is None:
        return SshdSettings()
    return SshdSettings(crl_push=crl_push_from_table(table))


def crl_push_from_table(table: object) -> CrlPush:
    """A `[crl_push]` table as TOML parsed it, by this module's rules: the one parser for it, shared by
    the settings file here and deploy/strongroom-install's own settings (which hold the same table)."""
    if not isinstance(table, dict):
        raise SshdConfigError("crl_push: must be a table")
    for key in table:
        if key not in ("user", "from", "command"):
            raise SshdConfigError(f"crl_push.{_key(key)}: not a known setting (user, from, command)")
    for key in ("user", "from", "command"):
        if key not in table:
            raise SshdConfigError(f"crl_push.{key}: is required")
    return CrlPush(user=table["user"], sources=table["from"], command=table["command"])


def _key(key: str) -> str:
    """A key as it may be shown: a plain one as it is, anything else quoted and cut (one line)."""
    return key if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", key) else repr(key[:64])
