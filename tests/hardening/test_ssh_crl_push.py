"""The hardened sshd with a web node's CRL receiver ([crl_push], hardening/ssh/__init__.py).

The settings with hostile values as a table; the rendered file without [crl_push] byte for byte the
one from before; `sshd -T -C` for the push user from the CA's address and from elsewhere, and for an
admin (the same effective settings as without [crl_push]); and a REAL sshd on loopback, started by
tests/hardening/sshd_server.py as for test_ssh_sshd.py, where the push user logs in with its key
from 127.0.0.1 (the "CA host") and gets the receiver (a stand-in: see STAND_IN) whatever it asks
for, never the session hook, while from 127.0.0.2 the same key is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from hardening.ssh import (
    SHIPPED,
    CrlPush,
    SshdConfigError,
    SshdSettings,
    parse_settings,
    render,
)
from hardening.ssh.__main__ import main
from tests.hardening.sshd_server import Server, hardened_sshd, keygen, run
from tests.support import need_binary, need_root
from tests.webapp.smtpsink import Sink

RECEIVER = [
    "/usr/bin/env", "-C", "/opt/strongroom", "/opt/strongroom/.venv/bin/python", "-m", "ca.crl_receive",
    "--crl", "/etc/apache2/strongroom-crl/crl.pem", "--chain", "/etc/apache2/strongroom/chain.pem",
    "--reload-command", "sudo -n /usr/sbin/apache2ctl graceful",
]  # fmt: skip
RECEIVER_LINE = (
    "/usr/bin/env -C /opt/strongroom /opt/strongroom/.venv/bin/python -m ca.crl_receive"
    " --crl /etc/apache2/strongroom-crl/crl.pem --chain /etc/apache2/strongroom/chain.pem"
    " --reload-command 'sudo -n /usr/sbin/apache2ctl graceful'"
)
COMMAND = "command = [" + ", ".join(f'"{a}"' for a in RECEIVER) + "]"
GOOD = f"""
[crl_push]
user = "strongroom-crl"
from = ["192.0.2.20", "2001:db8:20::/64"]
{COMMAND}
"""


# -- the settings -------------------------------------------------------------------------------------


def test_good_settings_parse() -> None:
    push = parse_settings(GOOD).crl_push
    assert push == CrlPush(
        user="strongroom-crl", sources=("192.0.2.20", "2001:db8:20::/64"), command=tuple(RECEIVER)
    )


# Each row breaks one thing in GOOD; the refusal names the key and the rule.
HOSTILE = [
    (("[crl_push]", "port = 2222\n[crl_push]"), "port: not a known setting (only [crl_push])"),
    (("[crl_push]", "[crl_pushes]"), "crl_pushes: not a known setting"),
    (("[crl_push]", "crl_push = 1\n[x]"), "x: not a known setting"),
    (
        ('user = "strongroom-crl"', 'user = "strongroom-crl"\ngroup = "x"'),
        "crl_push.group: not a known setting",
    ),
    (('user = "strongroom-crl"\n', ""), "crl_push.user: is required"),
    (('from = ["192.0.2.20", "2001:db8:20::/64"]\n', ""), "crl_push.from: is required"),
    (("command = [", "commands = ["), "crl_push.commands: not a known setting"),
    (('"strongroom-crl"', '"strongroom-crl\\nPermitRootLogin yes"'), "crl_push.user: a plain user name"),
    (('"strongroom-crl"', '"strongroom-*"'), "crl_push.user: a plain user name"),
    (('"strongroom-crl"', '"strongroom-crl,alice"'), "crl_push.user: a plain user name"),
    (('"strongroom-crl"', '"!alice"'), "crl_push.user: a plain user name"),
    (('"strongroom-crl"', '"Strongroom-CRL"'), "crl_push.user: a plain user name"),
    (('"strongroom-crl"', '"root"'), "crl_push.user: not root"),
    (('"strongroom-crl"', "7"), "crl_push.user: a plain user name"),
    (('["192.0.2.20", "2001:db8:20::/64"]', "[]"), "crl_push.from: 1 to 16 addresses are required"),
    (('["192.0.2.20", "2001:db8:20::/64"]', '"192.0.2.20"'), "crl_push.from: 1 to 16 addresses are required"),
    (('"192.0.2.20"', '"192.0.2.20\\nPermitRootLogin yes"'), "crl_push.from[0]: an IP address or network"),
    (('"192.0.2.20"', '"192.0.2.20 PermitRootLogin"'), "crl_push.from[0]: an IP address or network"),
    (('"192.0.2.20"', '"*"'), "crl_push.from[0]: an IP address or network"),
    (('"192.0.2.20"', '"!192.0.2.20"'), "crl_push.from[0]: an IP address or network"),
    (('"192.0.2.20"', '"192.0.2.20,*"'), "crl_push.from[0]: an IP address or network"),
    (('"192.0.2.20"', '"ca.example.org"'), "crl_push.from[0]: an IP address or network"),
    (('"192.0.2.20"', '" 192.0.2.20"'), "crl_push.from[0]: an IP address or network is required"),
    (('"192.0.2.20"', '"fe80::1%eth0"'), "crl_push.from[0]: an IP address or network is required"),
    (('"192.0.2.20"', '"192.0.2.20/24"'), "crl_push.from[0]: an IP address or network (no host bits set)"),
    (('"192.0.2.20"', '"192.0.0.0/16"'), "crl_push.from[0]: too broad (IPv4 needs at least /24)"),
    (('"192.0.2.20"', '"0.0.0.0/0"'), "crl_push.from[0]: too broad"),
    (('"2001:db8:20::/64"', '"2001:db8::/32"'), "crl_push.from[1]: too broad (IPv6 needs at least /64)"),
    (('"192.0.2.20"', '"0.0.0.0"'), "crl_push.from[0]: not a host or network address"),
    (('"192.0.2.20"', '"224.0.0.1"'), "crl_push.from[0]: not a host or network address"),
    (('"192.0.2.20"', '"::ffff:192.0.2.20"'), "crl_push.from[0]: write an IPv4 address as IPv4"),
    (('"2001:db8:20::/64"', '"192.0.2.20/32"'), "crl_push.from[1]: listed twice"),
    (('"192.0.2.20"', "20"), "crl_push.from[0]: an IP address or network is required"),
    ((COMMAND, 'command = "/bin/sh -c x"'), "crl_push.command: a list of 1 to 32 arguments"),
    ((COMMAND, "command = []"), "crl_push.command: a list of 1 to 32 arguments"),
    (('"/usr/bin/env", "-C"', '"env", "-C"'), "crl_push.command[0]: an absolute path of plain characters"),
    (('"/usr/bin/env", "-C"', '"/usr/bin/env x", "-C"'), "crl_push.command[0]: an absolute path"),
    (('"/usr/bin/env", "-C"', '"/usr/bin/%u", "-C"'), "crl_push.command[0]: an absolute path"),
    (('"-C"', '"-C\\nPermitRootLogin yes"'), "crl_push.command[1]: letters, digits, blanks inside"),
    (('"-C"', '"-C\\rx"'), "crl_push.command[1]: letters, digits"),
    (('"-C"', '"-C\\tx"'), "crl_push.command[1]: letters, digits"),
    (('"-C"', '"\'"'), "crl_push.command[1]: letters, digits"),
    (('"-C"', '"\\""'), "crl_push.command[1]: letters, digits"),
    (('"-C"', '"a\\\\"'), "crl_push.command[1]: letters, digits"),  # sshd reads \' as a quote
    (('"-C"', '"x # y"'), "crl_push.command[1]: letters, digits"),
    (('"-C"', '"$(id)"'), "crl_push.command[1]: letters, digits"),
    (('"-C"', '"%h"'), "crl_push.command[1]: letters, digits"),
    (('"-C"', '"; id"'), "crl_push.command[1]: letters, digits"),
    (('"-C"', '" -C"'), "crl_push.command[1]: letters, digits"),
    (('"-C"', '""'), "crl_push.command[1]: letters, digits"),
    (('"-C"', "3"), "crl_push.command[1]: letters, digits"),
    (('"-C"', '"' + "x" * 513 + '"'), "crl_push.command[1]: letters, digits"),
    (("[crl_push]", "[crl_push"), "not valid TOML"),
]


@pytest.mark.parametrize(
    ("change", "message"), HOSTILE, ids=[f"{i}-{m[:30]}" for i, (_, m) in enumerate(HOSTILE)]
)
def test_hostile_settings_are_refused(change: tuple[str, str], message: str) -> None:
    parse_settings(GOOD)  # the base is fine: each row breaks one thing
    text = GOOD.replace(*change, 1)
    assert text != GOOD
    with pytest.raises(SshdConfigError) as refused:
        render(parse_settings(text))
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)
    assert "PermitRootLogin" not in str(refused.value)  # the rule, never the value


@pytest.mark.parametrize("text", ['crl_push = "strongroom-crl"', "crl_push = [1]", "[[crl_push]]"])
def test_crl_push_must_be_a_table(text: str) -> None:
    with pytest.raises(SshdConfigError, match=r"^crl_push: must be a table$"):
        parse_settings(text)


def test_too_many_arguments_and_sources_are_refused() -> None:
    with pytest.raises(SshdConfigError, match=r"crl_push\.command: a list of 1 to 32"):
        CrlPush(user="crl", sources=("192.0.2.20",), command=("/bin/true", *["x"] * 32))
    with pytest.raises(SshdConfigError, match=r"crl_push\.from: 1 to 16"):
        CrlPush(user="crl", sources=tuple(f"192.0.2.{n}" for n in range(17)), command=("/bin/true",))


def test_push_user_may_not_be_an_allowed_group() -> None:
    """Its own group would be the admins' group: a mix-up of names, refused."""
    push = CrlPush(user="strongroom-admins", sources=("192.0.2.20",), command=("/bin/true",))
    with pytest.raises(SshdConfigError, match=r"crl_push\.user: not a name of allow_groups"):
        render(SshdSettings(crl_push=push))


def test_without_crl_push_the_file_is_byte_identical() -> None:
    """The admins' sshd_config does not change: an empty settings file renders the shipped file
    (hardening/ssh/sshd_config, rendered before [crl_push] existed and unchanged since), and with the
    table the same bytes come first, the Match blocks only after them."""
    shipped = SHIPPED.read_text()
    assert render() == shipped
    assert render(parse_settings("")) == shipped
    assert render(parse_settings("# nothing for this server\n")) == shipped
    with_push = render(parse_settings(GOOD))
    assert with_push.startswith(shipped)
    added = with_push[len(shipped) :]
    assert added.startswith("\n# The CA host's CRL push")
    assert added.count("\nMatch ") == 2


def test_rendered_block() -> None:
    added = render(parse_settings(GOOD))[len(SHIPPED.read_text()) :]
    lines = [
        line.strip() for line in added.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines == [
        "Match User strongroom-crl Address 192.0.2.20,2001:db8:20::/64",
        "AllowUsers strongroom-crl@192.0.2.20 strongroom-crl@2001:db8:20::/64",
        "AllowGroups strongroom-crl",
        "AuthenticationMethods publickey",
        "PermitTTY no",
        "DisableForwarding yes",
        "PermitUserRC no",
        f"ForceCommand {RECEIVER_LINE}",
        "Match User strongroom-crl Address !192.0.2.20,!2001:db8:20::/64,*",
        "DenyUsers strongroom-crl",
        "PubkeyAuthentication no",
        "ForceCommand /bin/false",
    ]


def test_cli_renders_the_settings_file(tmp_path: Path) -> None:
    settings = tmp_path / "sshd.toml"
    settings.write_text(GOOD)
    out = CliRunner().invoke(main, ["--settings", str(settings)])
    assert out.exit_code == 0, out.output
    assert out.output == render(parse_settings(GOOD))
    assert CliRunner().invoke(main, []).output == SHIPPED.read_text()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace('"192.0.2.20"', '"192.0.2.20\\nX"'), "sshd.toml: crl_push.from[0]: an IP address"),
        ("[crl_push", "sshd.toml: not valid TOML"),
        (None, "sshd.toml: does not exist"),
    ],
)
def test_cli_refuses_a_bad_settings_file(tmp_path: Path, text: str | None, message: str) -> None:
    settings = tmp_path / "sshd.toml"
    if text is not None:
        settings.write_text(text)
    out = CliRunner().invoke(main, ["--settings", str(settings)])
    assert out.exit_code == 1
    assert out.output.count("\n") == 1  # one line, nothing of the config
    assert message in out.output
    assert "nothing was printed" in out.output


# -- the effective settings: sshd -T -C ----------------------------------------------------------------


def _effective(sshd: str, config: Path, user: str, addr: str) -> dict[str, list[str]]:
    out = subprocess.run(
        [sshd, "-T", "-f", str(config), "-C", f"user={user},addr={addr},host=x"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    found: dict[str, list[str]] = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        found.setdefault(key, []).append(value)
    return found


@pytest.fixture(scope="module")
def configs() -> Iterator[tuple[str, Path, Path]]:
    """The production file with a private host key and pid file, with and without [crl_push]."""
    need_root()  # sshd -T reads the host key, as the real one would
    sshd = need_binary("sshd")
    base = Path(tempfile.mkdtemp(prefix="strongroom-sshd-crl-T-", dir="/run"))
    try:
        host_key = keygen(base / "host_ed25519")
        plain = SshdSettings(host_keys=(str(host_key),), pid_file=str(base / "sshd.pid"))
        push = parse_settings(GOOD).crl_push
        with_push = base / "with", base / "without"
        (base / "with").write_text(render(dataclasses.replace(plain, crl_push=push)))
        (base / "without").write_text(render(plain))
        for config in with_push:
            run(sshd, "-t", "-f", str(config))
        yield sshd, *with_push
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("addr", ["192.0.2.20", "2001:db8:20::1", "2001:db8:20:0:ffff::9"])
def test_effective_settings_from_the_ca(configs: tuple[str, Path, Path], addr: str) -> None:
    sshd, with_push, _ = configs
    got = _effective(sshd, with_push, "strongroom-crl", addr)
    assert got["forcecommand"] == [RECEIVER_LINE]
    assert got["allowusers"] == ["strongroom-crl@192.0.2.20", "strongroom-crl@2001:db8:20::/64"]
    assert got["allowgroups"] == ["strongroom-crl"]  # the admins' group is not among them
    assert "denyusers" not in got
    assert got["authenticationmethods"] == ["publickey"]
    assert got["pubkeyauthentication"] == ["yes"]
    assert got["permittty"] == ["no"]
    assert got["disableforwarding"] == ["yes"]
    assert got["permituserrc"] == ["no"]
    assert got["passwordauthentication"] == ["no"]


@pytest.mark.parametrize("addr", ["192.0.2.21", "192.0.2.2", "127.0.0.1", "2001:db8:21::1", "198.51.100.20"])
def test_effective_settings_from_elsewhere(configs: tuple[str, Path, Path], addr: str) -> None:
    sshd, with_push, _ = configs
    got = _effective(sshd, with_push, "strongroom-crl", addr)
    assert got["denyusers"] == ["strongroom-crl"]
    assert "allowusers" not in got
    assert got["allowgroups"] == ["strongroom-admins"]  # the global list: the push user is not in it
    assert got["pubkeyauthentication"] == ["no"]
    assert got["forcecommand"] == ["/bin/false"]


@pytest.mark.parametrize(
    ("user", "addr"),
    [
        ("alice", "192.0.2.20"),
        ("alice", "198.51.100.7"),
        ("root", "192.0.2.20"),
        ("strongroom-crl2", "192.0.2.20"),
    ],
)
def test_everyone_else_gets_the_same_effective_settings(
    configs: tuple[str, Path, Path], user: str, addr: str
) -> None:
    """An admin, root, a name that merely starts like the push user: whether from the CA's address or
    not, every effective setting is what it is without [crl_push] (the session hook, AllowGroups...)."""
    sshd, with_push, without = configs
    got = _effective(sshd, with_push, user, addr)
    assert got == _effective(sshd, without, user, addr)
    assert got["forcecommand"] == ["/usr/local/lib/strongroom/ssh-session-hook"]


# -- a real sshd on loopback ---------------------------------------------------------------------------

# A stand-in for ca.crl_receive (tested through a real sshd in tests/ca/test_push_crl.py): the forced
# command runs as the push user, and the project's interpreter may live where no other user can enter
# (root's home). It says what it was started with, so the arguments' trip through sshd_config and the
# login shell is checked too (the reload command's blanks).
STAND_IN = """#!/bin/sh
echo "receiver ran as $(id -un)"
for arg in "$@"; do echo "arg=[$arg]"; done
echo "asked=[${SSH_ORIGINAL_COMMAND-nothing}]"
if [ -t 0 ]; then echo "tty=yes"; else echo "tty=no"; fi
echo "stdin=$(sha256sum | cut -d' ' -f1)"
"""
STAND_IN_ARGS = (
    "--crl",
    "/etc/apache2/strongroom-crl/crl.pem",
    "--reload-command",
    "sudo -n /usr/sbin/apache2ctl graceful",
)


@dataclass
class Node:
    server: Server  # admin: in the allowed group, KEYHOLDER key; outsider: the push user, the CA's key
    marker: Path  # what a command the client asks for would create


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    """A hardened web node's sshd with [crl_push] for a throwaway push user, "CA host" 127.0.0.1, the
    stand-in receiver as its command, and the real session hook for everyone else, its alerts going
    to an aiosmtpd sink."""
    tag = secrets.token_hex(3)
    group, admin, pusher = f"srtg{tag}", f"srta{tag}", f"srtc{tag}"

    def authorized_keys(pub: Mapping[str, str]) -> dict[str, str]:
        # The key's own command= (what docs/ca.md had alone) loses to sshd's ForceCommand: a different
        # one here shows which ran. No from= on the key: the address is refused by sshd_config alone.
        return {
            admin: f'environment="KEYHOLDER=alice" {pub["alice"]}\n{pub["ca"]}\n',
            pusher: f'restrict,command="/bin/echo the-key-command" {pub["ca"]}\n',
        }

    with hardened_sshd(
        prefix="strongroom-sshd-crl-",
        group=group,
        admin=admin,
        outsider=pusher,
        # The push user with its own group of the same name, as `adduser --system --group` makes it.
        outsider_useradd=("--user-group",),
        client_keys=("alice", "ca"),
        authorized_keys=authorized_keys,
        files={"receiver": STAND_IN},
        crl_push=lambda etc: CrlPush(
            user=pusher, sources=("127.0.0.1",), command=(str(etc / "receiver"), *STAND_IN_ARGS)
        ),
    ) as server:
        yield Node(server, server.base / "pwned")


@pytest.fixture
def sink(node: Node) -> Sink:
    with node.server.sink.lock:
        node.server.sink.messages.clear()
    return node.server.sink


# What the client asks for: nothing (a shell), a command of its own, the sftp subsystem (sshd tells the
# forced command the subsystem's command line).
ASKS = [
    ([], "nothing"),
    (["touch {marker}; cat /etc/shadow"], "touch {marker}; cat /etc/shadow"),
    (["-s", "sftp"], "/usr/lib/openssh/sftp-server"),
]


@pytest.mark.parametrize(("ask", "asked"), ASKS, ids=["shell", "command", "sftp"])
def test_push_from_the_ca_runs_the_receiver_whatever_is_asked(
    node: Node, sink: Sink, ask: list[str], asked: str
) -> None:
    server = node.server
    crl = b"-----BEGIN X509 CRL-----\n" + secrets.token_bytes(300) + b"\n-----END X509 CRL-----\n"
    args = [a.format(marker=node.marker) for a in ask]
    out = subprocess.run(
        server.ssh_argv(server.outsider, "ca", *args), input=crl, capture_output=True, timeout=60, check=False
    )
    stderr = out.stderr.decode()
    assert out.returncode == 0, stderr
    assert out.stdout.decode().splitlines() == [
        f"receiver ran as {server.outsider}",
        *(f"arg=[{arg}]" for arg in STAND_IN_ARGS),
        f"asked=[{asked.format(marker=node.marker)}]",  # sshd tells it; the receiver ignores it
        "tty=no",
        f"stdin={hashlib.sha256(crl).hexdigest()}",
    ]
    assert not node.marker.exists()
    # The key has no KEYHOLDER: had the session hook run, it would have mailed an alert.
    assert sink.messages == []


def test_push_user_gets_no_pty(node: Node, sink: Sink) -> None:
    out = node.server.ssh(node.server.outsider, "ca", "-tt", f"touch {node.marker}")
    assert out.returncode == 255  # ssh -tt gives up when the pty is refused
    assert "PTY allocation request failed" in out.stderr
    assert not node.marker.exists()
    assert sink.messages == []


@pytest.mark.parametrize(
    "ask", [["echo in"], ["-N"], ["-W", "127.0.0.1:22"]], ids=["command", "no session", "stdio"]
)
def test_push_key_from_another_address_is_refused(node: Node, sink: Sink, ask: list[str]) -> None:
    """The same user and key from 127.0.0.2 (still loopback, another source address): sshd refuses
    the user before any key is tried. The control is the test above: only the address differs."""
    server = node.server
    seen = len(server.log.read_text())
    out = server.ssh(server.outsider, "ca", *ask, options=("BatchMode=yes", "BindAddress=127.0.0.2"))
    assert out.returncode == 255
    assert "in\n" not in out.stdout
    log = server.log.read_text()[seen:]
    assert f"User {server.outsider} from 127.0.0.2 not allowed because listed in DenyUsers" in log, log
    assert "Accepted publickey" not in log
    assert sink.messages == []


def test_admin_still_gets_the_hook_from_the_ca_address(node: Node, sink: Sink) -> None:
    server = node.server
    out = server.ssh(server.admin, "alice", "echo holder=$KEYHOLDER")
    assert out.stdout == "holder=alice\n", out.stderr
    assert sink.messages == []
    # The CA's key in the admin's file is an unidentified key there: the hook runs and reports it.
    out = server.ssh(server.admin, "ca", "echo in")
    assert out.stdout == "in\n", out.stderr
    assert len(sink.messages) == 1
