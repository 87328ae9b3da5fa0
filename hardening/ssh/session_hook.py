#!/usr/bin/python3 -I
"""sshd ForceCommand hook: runs at the start of EVERY session (shell, command, sftp), as the user.

Installed root-owned (0755) as /usr/local/lib/strongroom/ssh-session-hook; sshd_config says
`ForceCommand /usr/local/lib/strongroom/ssh-session-hook`. Standard library only: it runs under the
system python3, never the project's virtualenv (`-I`: no PYTHON* variables, no user site-packages,
which a user could otherwise fill with a .pth file that runs before this code).

A session is *identified* when the key that sshd accepted (from `$SSH_USER_AUTH`, ExposeAuthInfo)
sits in the root-owned authorized_keys file on a line carrying `environment="KEYHOLDER=name"`, and
the session's KEYHOLDER is that same name. The environment alone is not trusted: with
`PermitUserEnvironment KEYHOLDER` the user's own ~/.ssh/environment may set KEYHOLDER too (measured:
it overrides the key's option). Anything else mails an alert with the key's fingerprint, then the
session goes on. If the alert cannot be sent the session is refused: an unidentified key does not get
in unseen. A broken or unsafe hook configuration refuses every session (fail closed); the admin's
way back is the console.

The mail is a bare notification: user, key fingerprint, client address, session kind, reason. Never
the command line (it can carry secrets).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import pwd
import re
import shlex
import smtplib
import socket
import stat
import subprocess
import sys
import syslog
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

DEFAULT_CONFIG = Path("/etc/strongroom/ssh-alert.toml")
MAX_CONFIG_BYTES = 16 * 1024
MAX_KEYS_BYTES = 1024 * 1024
MAX_AUTH_INFO_BYTES = 64 * 1024
SMTP_TIMEOUT = 10.0
# Keyholder names as the CA and the web app spell user names.
KEYHOLDER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "sk-ssh-ed25519@openssh.com",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ecdsa-sha2-nistp256@openssh.com",
        "ssh-rsa",
    }
)
_OPTION_RE = re.compile(r'[A-Za-z-]+(?:="(?:[^"\\]|\\.)*")?')


class HookError(Exception):
    """The hook cannot run safely (configuration unreadable, unsafe or malformed): refuse the session."""


class AlertError(Exception):
    """The alert mail could not be handed over."""


@dataclass(frozen=True)
class MailSettings:
    sender: str
    recipients: tuple[str, ...]
    transport: str  # "sendmail" (the local MTA) or "smtp" (host:port, no auth: a loopback relay)
    sendmail: Path = Path("/usr/sbin/sendmail")
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25


@dataclass(frozen=True)
class HookConfig:
    authorized_keys: str  # the AuthorizedKeysFile pattern, with %u for the user name
    session_shell: Path
    sftp_server: Path
    mail: MailSettings


@dataclass(frozen=True)
class UsedKey:
    key_type: str
    blob: bytes

    @property
    def fingerprint(self) -> str:
        digest = base64.b64encode(hashlib.sha256(self.blob).digest()).decode().rstrip("=")
        return f"SHA256:{digest}"


# --- parsing (pure functions, tested with hostile tables) -------------------------------------------


def _abs_path(raw: object, name: str) -> Path:
    if not isinstance(raw, str) or not raw.startswith("/") or any(c in raw for c in "\0\n\r "):
        raise HookError(f"{name} must be an absolute path without spaces")
    return Path(raw)


def _mail_address(raw: object, name: str) -> str:
    if not isinstance(raw, str) or not re.fullmatch(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,253}", raw):
        raise HookError(f"{name} must be a plain mail address")
    return raw


def parse_config(text: str) -> HookConfig:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise HookError(f"config is not valid TOML: {exc}") from None
    top = {"authorized_keys", "session_shell", "sftp_server", "mail"}
    mail_keys = {"from", "to", "transport", "sendmail", "smtp_host", "smtp_port"}
    if set(raw) - top:
        raise HookError(f"unknown config keys: {sorted(set(raw) - top)}")
    mail = raw.get("mail")
    if not isinstance(mail, dict):
        raise HookError("[mail] is required")
    if set(mail) - mail_keys:
        raise HookError(f"unknown [mail] keys: {sorted(set(mail) - mail_keys)}")
    keys = raw.get("authorized_keys")
    _abs_path(keys, "authorized_keys")
    assert isinstance(keys, str)  # noqa: S101 - checked just above; narrows the type for mypy
    if keys.count("%u") != 1 or "%" in keys.replace("%u", ""):
        raise HookError("authorized_keys must contain %u exactly once and no other % token")
    recipients = mail.get("to")
    if not isinstance(recipients, list) or not 1 <= len(recipients) <= 10:
        raise HookError("[mail] to must list 1 to 10 addresses")
    transport = mail.get("transport")
    if transport not in ("sendmail", "smtp"):
        raise HookError('[mail] transport must be "sendmail" or "smtp"')
    port = mail.get("smtp_port", 25)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise HookError("[mail] smtp_port must be a port number")
    host = mail.get("smtp_host", "127.0.0.1")
    if not isinstance(host, str) or not re.fullmatch(r"[A-Za-z0-9.:-]{1,253}", host):
        raise HookError("[mail] smtp_host must be a host name or address")
    return HookConfig(
        authorized_keys=keys,
        session_shell=_abs_path(raw.get("session_shell", "/bin/bash"), "session_shell"),
        sftp_server=_abs_path(raw.get("sftp_server", "/usr/lib/openssh/sftp-server"), "sftp_server"),
        mail=MailSettings(
            sender=_mail_address(mail.get("from"), "[mail] from"),
            recipients=tuple(_mail_address(r, "[mail] to") for r in recipients),
            transport=transport,
            sendmail=_abs_path(mail.get("sendmail", "/usr/sbin/sendmail"), "[mail] sendmail"),
            smtp_host=host,
            smtp_port=port,
        ),
    )


def parse_auth_info(text: str) -> UsedKey | None:
    """The key sshd accepted, from the ExposeAuthInfo file (`publickey TYPE BASE64` lines)."""
    keys = []
    for line in text.splitlines():
        parts = line.split(" ")
        if not parts or parts[0] != "publickey":
            continue
        if len(parts) != 3 or parts[1] not in KEY_TYPES:
            return None
        try:
            blob = base64.b64decode(parts[2], validate=True)
        except binascii.Error:
            return None
        keys.append(UsedKey(parts[1], blob))
    # One publickey method is all our AuthenticationMethods allows: anything else is not ours.
    return keys[0] if len(keys) == 1 else None


def _split_options(options: str) -> list[str] | None:
    out = []
    pos = 0
    while pos < len(options):
        m = _OPTION_RE.match(options, pos)
        if m is None:
            return None
        out.append(m.group(0))
        pos = m.end()
        if pos < len(options):
            if options[pos] != ",":
                return None
            pos += 1
            if pos == len(options):
                return None
    return out


def keyholder_for(keys_text: str, used: UsedKey) -> str | None:
    """The KEYHOLDER name on the authorized_keys line of `used`, or None (no such line, no name,
    a malformed line or two lines for the same key: none of which the convention produces)."""
    found: list[str | None] = []
    for raw_line in keys_text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        options, key_part = _take_options(line)
        fields = key_part.split()
        if len(fields) < 2:
            continue
        try:
            blob = base64.b64decode(fields[1], validate=True)
        except binascii.Error:
            continue
        if blob != used.blob:
            continue
        found.append(_keyholder_option(options))
    if len(found) != 1:
        return None
    return found[0]


def _take_options(line: str) -> tuple[str, str]:
    first = line.split(None, 1)[0]
    if first in KEY_TYPES:
        return "", line
    # Options end at the first blank outside double quotes.
    quoted = False
    i = 0
    while i < len(line):
        c = line[i]
        if c == "\\" and quoted:
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c in " \t" and not quoted:
            return line[:i], line[i:].strip()
        i += 1
    return line, ""


def _keyholder_option(options: str) -> str | None:
    if not options:
        return None
    parts = _split_options(options)
    if parts is None:
        return None
    names = []
    for part in parts:
        name, _, value = part.partition("=")
        if name.lower() != "environment":
            continue
        inner = value[1:-1]
        var, _, holder = inner.partition("=")
        if var != "KEYHOLDER":
            continue
        if not KEYHOLDER_RE.fullmatch(holder):
            return None
        names.append(holder)
    return names[0] if len(names) == 1 else None


def session_kind(original_command: str | None, sftp_server: Path) -> str:
    if original_command is None:
        return "shell"
    argv = original_command.split()
    if argv and argv[0] == str(sftp_server):
        return "sftp"
    return "command"


# --- the outside world ------------------------------------------------------------------------------


def read_root_owned(path: Path, limit: int) -> str:
    """Read a file only if root owns it and nobody else can write it (checked on the open file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise HookError(f"cannot open {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
            raise HookError(f"{path} is not a root-owned file writable only by root")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise HookError(f"{path} is larger than {limit} bytes")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise HookError(f"{path} is not UTF-8") from None


def alert_message(
    config: HookConfig, *, user: str, reason: str, fingerprint: str, client: str, kind: str
) -> EmailMessage:
    host = socket.gethostname()
    msg = EmailMessage()
    msg["Subject"] = f"Strongroom: SSH session with an unidentified key on {host}"
    msg["From"] = config.mail.sender
    msg["To"] = ", ".join(config.mail.recipients)
    msg.set_content(
        "An SSH session started without a registered KEYHOLDER. Check the server.\n\n"
        f"host: {host}\nuser: {user}\nkey: {fingerprint}\nfrom: {client}\nsession: {kind}\n"
        f"reason: {reason}\ntime: {datetime.now(UTC).isoformat(timespec='seconds')}\n"
    )
    return msg


def send(config: HookConfig, msg: EmailMessage) -> None:
    mail = config.mail
    try:
        if mail.transport == "smtp":
            with smtplib.SMTP(mail.smtp_host, mail.smtp_port, timeout=SMTP_TIMEOUT) as smtp:
                smtp.send_message(msg)
            return
        subprocess.run(
            [str(mail.sendmail), "-oi", "-f", mail.sender, "--", *mail.recipients],
            input=msg.as_bytes(),
            check=True,
            capture_output=True,
            timeout=SMTP_TIMEOUT,
        )
    except (OSError, smtplib.SMTPException, subprocess.SubprocessError) as exc:
        raise AlertError(type(exc).__name__) from None


def _log(priority: int, text: str) -> None:
    syslog.openlog("strongroom-ssh-hook", syslog.LOG_PID, syslog.LOG_AUTHPRIV)
    syslog.syslog(priority, text)


def identify(config: HookConfig, env: dict[str, str], user: str) -> tuple[str | None, str, str]:
    """(keyholder or None, reason, fingerprint)."""
    auth_path = env.get("SSH_USER_AUTH")
    if not auth_path:
        return None, "sshd gave no authentication info (ExposeAuthInfo off?)", "-"
    try:
        with open(auth_path, encoding="utf-8") as fh:
            used = parse_auth_info(fh.read(MAX_AUTH_INFO_BYTES))
    except (OSError, UnicodeDecodeError):
        used = None
    if used is None:
        return None, "not a login with exactly one public key", "-"
    keys_path = Path(config.authorized_keys.replace("%u", user))
    try:
        keyholder = keyholder_for(read_root_owned(keys_path, MAX_KEYS_BYTES), used)
    except HookError:
        return None, "authorized_keys file missing or not root-owned", used.fingerprint
    if keyholder is None:
        return None, "the key's line sets no single valid KEYHOLDER", used.fingerprint
    if env.get("KEYHOLDER") != keyholder:
        return None, "KEYHOLDER in the session differs from the key's line", used.fingerprint
    return keyholder, "identified", used.fingerprint


def exec_session(config: HookConfig, original: str | None, kind: str) -> None:
    """Replace this process with what the client asked for, as sshd itself would have started it."""
    # S606 below: exec'ing the requested session without an extra shell is this hook's whole job.
    if kind == "sftp":
        argv = shlex.split(original or "")
        os.execv(argv[0], argv)  # noqa: S606
    shell = str(config.session_shell)
    if original is None:
        os.execv(shell, ["-" + os.path.basename(shell)])  # noqa: S606 - "-bash": a login shell
    os.execv(shell, [os.path.basename(shell), "-c", original])  # noqa: S606


USAGE = "usage: ssh-session-hook [--config FILE]"


def main(argv: list[str]) -> int:
    config_path = DEFAULT_CONFIG
    if argv[1:] in (["--help"], ["-h"]):
        # sshd runs the hook with the arguments sshd_config gives it: only an admin types --help.
        summary = (__doc__ or "").splitlines()[0]
        print(f"{USAGE}\n\n{summary}\n\n  --config FILE  the hook's settings (default {DEFAULT_CONFIG})")
        return 0
    if len(argv) == 3 and argv[1] == "--config":
        config_path = Path(argv[2])
    elif len(argv) != 1:
        print(f"{USAGE} (--help says what it does)", file=sys.stderr)
        return 2
    try:
        config = parse_config(read_root_owned(config_path, MAX_CONFIG_BYTES))
    except HookError as exc:
        _log(syslog.LOG_ERR, f"refusing session: {exc}")
        print("session refused: the server's session hook is misconfigured", file=sys.stderr)
        return 1
    env = dict(os.environ)
    user = pwd.getpwuid(os.getuid()).pw_name
    original = env.get("SSH_ORIGINAL_COMMAND")
    kind = session_kind(original, config.sftp_server)
    keyholder, reason, fingerprint = identify(config, env, user)
    client = (env.get("SSH_CONNECTION") or "-").split(" ")[0]
    if keyholder is None:
        msg = alert_message(
            config, user=user, reason=reason, fingerprint=fingerprint, client=client, kind=kind
        )
        try:
            send(config, msg)
        except AlertError as exc:
            _log(syslog.LOG_ALERT, f"refusing session: alert not sent ({exc}) user={user} key={fingerprint}")
            print("session refused: the server could not report this login", file=sys.stderr)
            return 1
        _log(syslog.LOG_WARNING, f"unidentified session user={user} key={fingerprint} kind={kind}: {reason}")
    else:
        _log(syslog.LOG_INFO, f"session keyholder={keyholder} user={user} key={fingerprint} kind={kind}")
    try:
        exec_session(config, original, kind)
    except OSError as exc:
        print(f"session could not start: {exc.strerror}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
