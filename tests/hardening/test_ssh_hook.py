"""The session hook's parsing, with hostile inputs: authorized_keys lines, ExposeAuthInfo files, its
configuration. The real-sshd behaviour is in test_ssh_sshd.py."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from hardening.ssh import SshdConfigError, SshdSettings, render
from hardening.ssh.session_hook import (
    HookError,
    UsedKey,
    keyholder_for,
    parse_auth_info,
    parse_config,
    session_kind,
)

BLOB = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))
OTHER = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(1, 33))
B64 = base64.b64encode(BLOB).decode()
KEY = f"ssh-ed25519 {B64} alice@laptop"
USED = UsedKey("ssh-ed25519", BLOB)

GOOD_CONFIG = """
authorized_keys = "/etc/ssh/authorized_keys/%u"
[mail]
from = "ssh@localhost"
to = ["sec@example.org"]
transport = "smtp"
smtp_port = 2525
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f'environment="KEYHOLDER=alice" {KEY}', "alice"),
        (f'restrict,environment="KEYHOLDER=alice",pty {KEY}', "alice"),
        (f'from="10.0.0.1,10.0.0.2",environment="KEYHOLDER=alice" {KEY}', "alice"),
        (f'# environment="KEYHOLDER=alice" {KEY}\n{KEY}', None),  # commented out: no holder
        (KEY, None),  # no options at all
        (f'environment="OTHER=alice" {KEY}', None),
        (f'environment="KEYHOLDERX=alice" {KEY}', None),
        (f'environment="KEYHOLDER=" {KEY}', None),  # empty name
        (f'environment="KEYHOLDER=al ice" {KEY}', None),  # not a user name
        (f'environment="KEYHOLDER=-rf" {KEY}', None),
        (f'environment="KEYHOLDER=alice",environment="KEYHOLDER=bob" {KEY}', None),  # ambiguous
        (f'environment="KEYHOLDER=alice" {KEY}\nenvironment="KEYHOLDER=bob" {KEY}', None),  # two lines
        (f'environment="KEYHOLDER=alice {KEY}', None),  # unterminated quote
        (f'environment="KEYHOLDER=alice",, {KEY}', None),
        (f'environment="KEYHOLDER=mallory" ssh-ed25519 {base64.b64encode(OTHER).decode()}', None),
        (
            f'environment="KEYHOLDER=mallory" ssh-ed25519 {base64.b64encode(OTHER).decode()}\n'
            f'environment="KEYHOLDER=alice" {KEY}',
            "alice",
        ),
        ('environment="KEYHOLDER=alice" ssh-ed25519 !!notbase64', None),
        ("", None),
    ],
)
def test_keyholder_comes_only_from_a_single_well_formed_line(text: str, expected: str | None) -> None:
    assert keyholder_for(text, USED) == expected


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        (f"publickey ssh-ed25519 {B64}\n", True),
        (f"publickey ssh-ed25519 {B64}", True),
        (f"publickey ssh-ed25519 {B64}\npublickey ssh-ed25519 {B64}\n", False),  # two keys: not ours
        ("password\n", False),
        ("", False),
        (f"publickey ssh-dss {B64}\n", False),
        ("publickey ssh-ed25519 !!!\n", False),
        (f"publickey ssh-ed25519 {B64} extra\n", False),
    ],
)
def test_auth_info_parsing(text: str, ok: bool) -> None:
    used = parse_auth_info(text)
    assert (used == USED) is ok
    if ok:
        assert used is not None
        assert used.fingerprint.startswith("SHA256:")
        assert "=" not in used.fingerprint


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("[mail]", "[mail]\nbcc = 1"), "unknown"),
        (("authorized_keys", "extra = 1\nauthorized_keys"), "unknown"),
        (('"/etc/ssh/authorized_keys/%u"', '"/etc/ssh/authorized_keys"'), "%u"),
        (('"/etc/ssh/authorized_keys/%u"', '"etc/%u"'), "absolute"),
        (('"/etc/ssh/authorized_keys/%u"', '"/home/%u/%h"'), "%u"),
        (('transport = "smtp"', 'transport = "http"'), "transport"),
        (("smtp_port = 2525", "smtp_port = 0"), "port"),
        (("smtp_port = 2525", 'smtp_port = "25"'), "port"),
        (('to = ["sec@example.org"]', "to = []"), "to"),
        (('to = ["sec@example.org"]', 'to = ["sec@example.org\\nBcc: x@evil"]'), "address"),
        (('from = "ssh@localhost"', 'from = "a b@c"'), "address"),
        (("[mail]", "[nomail]"), "mail"),
        (("[mail]", "[mail"), "TOML"),
    ],
)
def test_hostile_config_is_refused(change: tuple[str, str], message: str) -> None:
    parse_config(GOOD_CONFIG)  # the base is fine: each row breaks one thing
    with pytest.raises(HookError, match=message):
        parse_config(GOOD_CONFIG.replace(*change, 1))


def test_shipped_hook_config_parses() -> None:
    cfg = parse_config((Path(__file__).parents[2] / "hardening/ssh/ssh-alert.toml").read_text())
    assert cfg.mail.transport == "sendmail"


@pytest.mark.parametrize(
    ("original", "kind"),
    [
        (None, "shell"),
        ("/usr/lib/openssh/sftp-server", "sftp"),
        ("/usr/lib/openssh/sftp-server -l INFO", "sftp"),
        ("ls /", "command"),
        ("/usr/lib/openssh/sftp-server-evil", "command"),
        ("", "command"),
    ],
)
def test_session_kind(original: str | None, kind: str) -> None:
    assert session_kind(original, Path("/usr/lib/openssh/sftp-server")) == kind


def test_shipped_sshd_config_is_the_rendered_default() -> None:
    shipped = Path(__file__).parents[2] / "hardening/ssh/sshd_config"
    assert shipped.read_text() == render(), "run: python -m hardening.ssh > hardening/ssh/sshd_config"


@pytest.mark.parametrize(
    "settings",
    [
        SshdSettings(port=0),
        SshdSettings(listen=("127.0.0.1\nPasswordAuthentication yes",)),
        SshdSettings(allow_groups=("admins*",)),
        SshdSettings(allow_groups=()),
        SshdSettings(authorized_keys=".ssh/authorized_keys"),
        SshdSettings(authorized_keys="/home/%u/.ssh/authorized_keys"),
        SshdSettings(authorized_keys="/etc/ssh/keys"),
        SshdSettings(hook=("/usr/local/bin/hook", "x\nPermitRootLogin yes")),
        SshdSettings(hook=("relative-hook",)),
        SshdSettings(pid_file="/run/sshd.pid PermitRootLogin yes"),
    ],
)
def test_hostile_sshd_settings_are_refused(settings: SshdSettings) -> None:
    with pytest.raises(SshdConfigError):
        render(settings)
