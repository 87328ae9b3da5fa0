"""sshd configuration for door #1, rendered from one template (sshd_config.in).

`render()` with the defaults gives the production /etc/ssh/sshd_config (also shipped as
hardening/ssh/sshd_config, kept equal by a test); tests render it with a loopback port and private
paths and run a real sshd from it. Values are checked strictly: a newline or a blank inside a value
would smuggle an extra directive into the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "sshd_config.in"
SHIPPED = HERE / "sshd_config"
HOOK = HERE / "session_hook.py"

_TOKEN = re.compile(r"[A-Za-z0-9_./%:@\[\]-]{1,255}")
_GROUP = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_ADDRESS = re.compile(r"[0-9A-Fa-f.:\[\]]{2,64}")


class SshdConfigError(ValueError):
    """A setting would produce an unsafe or invalid sshd_config."""


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
    return Template(TEMPLATE.read_text()).substitute(
        port=s.port,
        listen_lines="\n".join(f"ListenAddress {a}" for a in s.listen) or "# ListenAddress: all",
        host_key_lines="\n".join(f"HostKey {_path(k, 'host_keys')}" for k in s.host_keys),
        pid_file=_path(s.pid_file, "pid_file"),
        allow_groups=" ".join(s.allow_groups),
        authorized_keys=keys,
        hook=" ".join(s.hook),
        sftp_server=_path(s.sftp_server, "sftp_server"),
    )
