"""The settings' [crl_push] (deploy/server/settings.py, read by hardening.ssh's own parser) and what the
install makes of it (deploy/server/steps.py): sshd_config with the CA's CRL push Match blocks that
`python -m hardening.ssh --settings` renders, the push account (a system user with its own group and
no usable password), the graceful reload's sudo rule, and the account's key file kept as the
operator's. Without [crl_push] sshd_config is byte for byte the shipped file and nothing else appears;
removing it takes the sudo rule away. Hostile tables are refused, each by its key."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.server import steps
from deploy.server.plan import InstallError, Plan
from deploy.server.settings import Settings, SettingsError, parse
from hardening import ssh as ssh_conf
from tests.apache.stack import traversable_dir
from tests.fixtures.pki import TestCA
from tests.support import need_binary, need_root

CHECKOUT = Path(__file__).resolve().parents[3]
EXAMPLE = (CHECKOUT / "deploy/server/server.toml.example").read_text()
USER = "strongroom-crl"
COMMAND = (
    '["/usr/bin/env", "-C", "/opt/strongroom", "/opt/strongroom/.venv/bin/python", "-m", "ca.crl_receive",'
    ' "--crl", "/etc/apache2/strongroom-crl/crl.pem", "--chain", "/etc/apache2/strongroom/chain.pem",'
    ' "--reload-command", "sudo -n /usr/sbin/apache2ctl graceful"]'
)
GOOD = f'user = "{USER}"\nfrom = ["192.0.2.20"]\ncommand = {COMMAND}\n'


def settings(table: str | None = GOOD) -> Settings:
    return parse(EXAMPLE if table is None else EXAMPLE + "\n[crl_push]\n" + table)


def test_the_table_is_hardening_ssh_s_own() -> None:
    """The same table gives the same CrlPush as `python -m hardening.ssh --settings` reads it."""
    assert settings(None).crl_push is None
    assert settings().crl_push == ssh_conf.parse_settings("[crl_push]\n" + GOOD).crl_push


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ('user = "strongroom-crl"\nfrom = ["192.0.2.20"]\n', "crl_push.command"),
        ('from = ["192.0.2.20"]\ncommand = ["/bin/true"]\n', "crl_push.user"),
        (GOOD + 'shell = "/bin/sh"\n', "crl_push.shell"),
        (GOOD.replace(USER, "root"), "crl_push.user"),
        (GOOD.replace(USER, "Strongroom*"), "crl_push.user"),
        (GOOD.replace(USER, "strongroom-web"), "crl_push.user"),  # the web app's account
        (GOOD.replace(USER, "strongroom-admins"), "crl_push.user"),
        (GOOD.replace(USER, "www-data"), "crl_push.user"),
        (GOOD.replace(USER, "alice"), "crl_push.user"),  # the example's admin
        (GOOD.replace('"192.0.2.20"', '"192.0.0.0/16"'), "crl_push.from[0]"),  # too broad
        (GOOD.replace('"192.0.2.20"', '"ca.example.internal"'), "crl_push.from[0]"),
        (GOOD.replace('"192.0.2.20"', ""), "crl_push.from"),
        (GOOD.replace('"/usr/bin/env"', '"env"'), "crl_push.command[0]"),
        (GOOD.replace('"ca.crl_receive"', '"ca.crl_receive; sh"'), "crl_push.command[5]"),
        (GOOD.replace('"ca.crl_receive"', '"$HOME"'), "crl_push.command[5]"),
    ],
)
def test_hostile_tables_are_refused_by_key(table: str, key: str) -> None:
    with pytest.raises(SettingsError) as caught:
        settings(table)
    assert [p.split(":")[0] for p in caught.value.problems] == [key]


def test_not_a_table_is_refused() -> None:
    with pytest.raises(SettingsError, match="crl_push: must be a table"):
        parse(EXAMPLE.replace('hostname = "vault', 'crl_push = "x"\nhostname = "vault', 1))


def test_without_crl_push_sshd_config_is_the_shipped_file() -> None:
    assert steps.sshd_config(settings(None)).encode() == ssh_conf.SHIPPED.read_bytes()


def test_with_crl_push_sshd_config_ends_with_hardening_ssh_s_blocks(tmp_path: Path) -> None:
    """The global part unchanged, then exactly what `python -m hardening.ssh --settings` prints for the
    same table; sshd takes it, and for the CA's address it gives the user the receiver."""
    shipped = ssh_conf.SHIPPED.read_text()
    text = steps.sshd_config(settings())
    assert text.startswith(shipped)
    sshd_toml = tmp_path / "sshd.toml"
    sshd_toml.write_text("[crl_push]\n" + GOOD)
    cli = subprocess.run(
        [str(CHECKOUT / ".venv/bin/python"), "-m", "hardening.ssh", "--settings", str(sshd_toml)],
        cwd=CHECKOUT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert text == cli.stdout
    assert f"Match User {USER} Address 192.0.2.20\n" in text
    sshd = need_binary("sshd")
    config = tmp_path / "sshd_config"
    key = tmp_path / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    config.write_text(text.replace("/etc/ssh/ssh_host_ed25519_key", str(key)))
    steps.sshd_accepts(config)
    shown = subprocess.run(
        [sshd, "-T", "-f", str(config), "-C", f"user={USER},addr=192.0.2.20,host=ca"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "forcecommand /usr/bin/env -C /opt/strongroom" in shown
    assert "permittty no" in shown


# ---- the account, its key file, the sudo rule (a throwaway root) ------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_root(tmp_path / "root")


def make_root(root: Path) -> Path:
    need_root()  # useradd --prefix, files owned by another uid
    need_binary("useradd")
    etc = root / "etc"
    etc.mkdir(parents=True, mode=0o755)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\nstrongroom-admins:x:998:alice\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\nstrongroom-admins:*::alice\n")
    for name in ("shadow", "gshadow"):
        (etc / name).chmod(0o600)
    shutil.copy2("/etc/login.defs", etc / "login.defs")
    (etc / "apache2/conf-enabled").mkdir(parents=True)  # Debian's apache2, as the install finds it
    for d in (etc / "apache2", etc / "apache2/conf-enabled"):
        d.chmod(0o755)
    return root


def plan(root: Path, *, check: bool) -> Plan:
    return Plan(root=root, check=check, out=lambda _line: None)


def fields(root: Path, table: str, name: str) -> list[str]:
    for line in (root / "etc" / table).read_text().splitlines():
        if line.split(":")[0] == name:
            return line.split(":")
    raise AssertionError(f"{name} not in {table}")


def test_the_push_account_is_made_once(root: Path) -> None:
    check = plan(root, check=True)
    steps.crl_push_user(check, USER)
    assert check.changes == [f"user {USER} created (the CA's CRL push, [crl_push])"]
    assert "strongroom-crl" not in (root / "etc/passwd").read_text(), "--check touched the accounts"

    steps.crl_push_user(plan(root, check=False), USER)
    passwd = fields(root, "passwd", USER)
    assert int(passwd[2]) < 1000, "a system user"
    assert passwd[5:] == [f"/var/lib/{USER}", "/bin/sh"]
    assert fields(root, "group", USER)[2] == passwd[3], "its own group"
    # '*': no password, and not the locked '!' that this PAM-less sshd would refuse the key for.
    assert fields(root, "shadow", USER)[1] == "*"
    home = root / f"var/lib/{USER}"
    assert (home.stat().st_uid, home.stat().st_mode & 0o777) == (int(passwd[2]), 0o750)
    again = plan(root, check=True)
    steps.crl_push_user(again, USER)
    assert again.changes == []


def test_an_admin_is_never_the_push_account(root: Path) -> None:
    with pytest.raises(InstallError, match="in strongroom-admins"):
        steps.crl_push_user(plan(root, check=True), "alice")


def test_the_push_account_s_key_file_is_kept(root: Path) -> None:
    keys = root / "etc/ssh/authorized_keys"
    keys.mkdir(parents=True)
    (keys / "alice").write_text("alice's key\n")
    (keys / USER).write_text("restrict,from=... the CA's push key\n")
    without = plan(root, check=True)
    steps.former_admins(without, settings(None))
    assert [c.split(":")[0] for c in without.changes] == [f"former admin {USER}"]
    with_push = plan(root, check=False)
    steps.former_admins(with_push, settings())
    assert with_push.changes == []
    assert (keys / USER).exists()


def test_the_reload_rule_comes_and_goes_with_crl_push(root: Path) -> None:
    need_binary("visudo")
    path = root / steps.CRL_PUSH_SUDOERS.lstrip("/")
    nothing = plan(root, check=True)
    steps.crl_push_sudoers(nothing, settings(None))
    assert nothing.changes == []

    steps.crl_push_sudoers(plan(root, check=False), settings())
    assert path.read_text().splitlines()[-1] == f"{USER} ALL=(root) NOPASSWD: /usr/sbin/apache2ctl graceful"
    assert steps.CRL_PUSH_RELOAD == "/usr/sbin/apache2ctl graceful"
    assert (path.stat().st_mode & 0o777, path.stat().st_uid) == (0o440, 0)
    subprocess.run(["visudo", "-cf", str(path)], capture_output=True, check=True)
    in_step = plan(root, check=True)
    steps.crl_push_sudoers(in_step, settings())
    assert in_step.changes == []

    removed = plan(root, check=False)
    steps.crl_push_sudoers(removed, settings(None))
    assert removed.changes == [f"{steps.CRL_PUSH_SUDOERS} removed"]
    assert not path.exists()


def test_the_example_s_table_parses() -> None:
    """server.toml.example shows [crl_push] commented out: uncommented, it is taken as it stands."""
    lines = EXAMPLE.splitlines()
    start = lines.index("# [crl_push]")
    end = lines.index("", start) if "" in lines[start:] else len(lines)
    block = [line.removeprefix("# ") for line in lines[start:end]]
    s = parse(EXAMPLE + "\n" + "\n".join(block) + "\n")
    assert s.crl_push == settings().crl_push


# ---- step 5: with [crl_push] the push owns Apache's CRL (a throwaway root) --------------------------

DEFINES = "etc/apache2/conf-available/strongroom-defines.conf"
KEPT = f"crl: kept the pushed CRL {steps.CRL_PUSH_FILE} ([tls] crl is copied there on the first install only)"


def with_tls(s: Settings, where: Path, ca: TestCA, crl: bytes) -> Settings:
    """`s` with [tls] files the apache step can copy: a real chain (the receiver checks against it)."""
    where.mkdir(exist_ok=True)
    files = {"server_cert": b"server cert\n", "server_key": b"server key\n", "ca_chain": ca.pem, "crl": crl}
    for name, data in files.items():
        (where / name).write_bytes(data)
    return dataclasses.replace(s, tls=dataclasses.replace(s.tls, **{k: str(where / k) for k in files}))


def apache_step(root: Path, s: Settings, *, check: bool = False) -> tuple[Plan, list[str]]:
    said: list[str] = []
    p = Plan(root=root, check=check, out=said.append)
    steps.apache(p, s)
    return p, said


def define(root: Path, name: str) -> str:
    found = re.findall(rf"^Define {name} (\S+)$", (root / DEFINES).read_text(), re.M)
    assert len(found) == 1, found
    return str(found[0])


def push_ids(root: Path) -> tuple[int, int]:
    return int(fields(root, "passwd", USER)[2]), int(fields(root, "group", USER)[2])


def test_without_crl_push_the_apache_step_writes_what_it_always_wrote(root: Path, tmp_path: Path) -> None:
    ca = TestCA()
    s = with_tls(settings(None), tmp_path / "tls", ca, ca.crl_pem())
    p, said = apache_step(root, s)
    d = "/etc/apache2/strongroom"
    assert p.changes == [
        f"{d}/server.crt.pem", f"{d}/server.key.pem", f"{d}/chain.pem", f"{d}/crl.pem",
        "/etc/strongroom/crl.pem", "/" + DEFINES,
        "/etc/apache2/conf-enabled/strongroom-defines.conf -> ../conf-available/strongroom-defines.conf",
    ]  # fmt: skip
    assert said == [f"changed: {c}" for c in p.changes]
    assert (root / DEFINES).read_text() == (
        "# Written by deploy/strongroom-install from the settings file: the site's name and the CA files\n"
        "# copied from the CA host (apache/strongroom-site.conf reads these Defines).\n"
        "Define STRONGROOM_SERVER_NAME vault.example.internal\n"
        "Define STRONGROOM_CLIENT_CA /etc/apache2/strongroom/chain.pem\n"
        "Define STRONGROOM_CRL /etc/apache2/strongroom/crl.pem\n"
    )
    assert (root / "etc/apache2/strongroom/crl.pem").read_bytes() == Path(s.tls.crl).read_bytes()
    assert (root / "etc/strongroom/crl.pem").read_bytes() == Path(s.tls.crl).read_bytes()
    for name, mode in (("server.crt.pem", 0o644), ("server.key.pem", 0o600), ("crl.pem", 0o644)):
        st = (root / "etc/apache2/strongroom" / name).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, mode)
    assert not (root / steps.CRL_PUSH_DIR.lstrip("/")).exists()
    assert "strongroom-crl" not in (root / "etc/passwd").read_text()
    # A second run with a newer [tls] crl copies it, as before: without the push the settings own it.
    newer = with_tls(settings(None), tmp_path / "tls", ca, ca.crl_pem())
    again, said = apache_step(root, newer)
    assert again.changes == [f"{d}/crl.pem", "/etc/strongroom/crl.pem"]
    assert not [line for line in said if line.startswith("crl:")]


def test_with_crl_push_apache_reads_the_receiver_s_file(root: Path, tmp_path: Path) -> None:
    ca = TestCA()
    first = ca.crl_pem()
    s = with_tls(settings(), tmp_path / "tls", ca, first)
    apache_step(root, s)
    assert define(root, "STRONGROOM_CRL") == steps.CRL_PUSH_FILE == "/etc/apache2/strongroom-crl/crl.pem"
    assert define(root, "STRONGROOM_CLIENT_CA") == steps.CLIENT_CA
    crl = root / steps.CRL_PUSH_FILE.lstrip("/")
    assert crl.read_bytes() == first, "the first install puts [tls] crl there"
    # The push account's directory (the receiver renames into it), readable by Apache; nobody else writes.
    for path, mode in ((crl.parent, 0o755), (crl, 0o644)):
        st = path.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (*push_ids(root), mode)
    assert (root / "etc/strongroom/crl.pem").read_bytes() == first  # the admin console's copy
    assert not (root / "etc/apache2/strongroom/crl.pem").exists()
    again, said = apache_step(root, s, check=True)
    assert again.changes == []
    assert said == [KEPT]


def test_a_later_run_never_copies_the_settings_crl_over_a_pushed_one(root: Path, tmp_path: Path) -> None:
    ca = TestCA()
    older = ca.crl_pem()
    apache_step(root, with_tls(settings(), tmp_path / "tls", ca, older))
    crl = root / steps.CRL_PUSH_FILE.lstrip("/")
    pushed = ca.crl_pem()
    crl.write_bytes(pushed)  # what the receiver left (same owner and mode)
    before = crl.stat()
    other = with_tls(settings(), tmp_path / "tls2", ca, ca.crl_pem())  # a different [tls] crl
    p, said = apache_step(root, other)
    assert crl.read_bytes() == pushed
    assert (crl.stat().st_ino, crl.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert [line for line in said if line.startswith("crl:")] == [KEPT]
    assert p.changes == ["/etc/strongroom/crl.pem"]  # the console now shows the pushed CRL
    assert (root / "etc/strongroom/crl.pem").read_bytes() == pushed
    # A file the push cannot replace (root's, say, from a hand setup) gets the push's owner, not new bytes.
    os.chown(crl, 0, 0)
    fixed, _ = apache_step(root, other)
    assert fixed.changes == [steps.CRL_PUSH_FILE]
    assert crl.read_bytes() == pushed
    assert (crl.stat().st_uid, crl.stat().st_gid) == push_ids(root)


def test_the_push_account_is_reported_once_when_checking(root: Path) -> None:
    p = plan(root, check=True)
    steps.crl_push_user(p, USER)
    steps.crl_push_user(p, USER)  # step 9 after step 5
    assert p.changes == [f"user {USER} created (the CA's CRL push, [crl_push])"]


# ---- the seam: the documented receiver command on what the installer rendered ------------------------


def receiver_argv(command: list[str] | tuple[str, ...]) -> list[str]:
    """The part of a [crl_push] command after `python`: the receiver's module and its arguments."""
    return list(command[command.index("-m") :])


def push_command(table: str) -> tuple[str, ...]:
    push = ssh_conf.parse_settings("[crl_push]\n" + table).crl_push
    assert push is not None
    return push.command


def docs_commands() -> list[list[str]]:
    """Every receiver command docs/ca.md and server.toml.example give, each as its argv after python."""
    ca_md = (CHECKOUT / "docs/ca.md").read_text()
    keys = re.findall(r'command="cd /opt/strongroom && exec (\.venv/bin/python [^"]+)"', ca_md)
    tables = re.findall(r"^command = (\[[^\]]+\])", ca_md, re.M)
    return [
        *(receiver_argv(shlex.split(line)) for line in keys),
        *(receiver_argv(push_command(f"user = 'u'\nfrom = ['192.0.2.20']\ncommand = {c}\n")) for c in tables),
        receiver_argv(push_command(GOOD)),  # the example's, as test_the_example_s_table_parses holds
    ]


def test_the_documented_receiver_command_is_the_installer_s() -> None:
    """docs/ca.md's authorized_keys line and sshd.toml, and the example's [crl_push], all run the
    receiver on Apache's files as this installer renders them, reloading through its one sudo rule."""
    wanted = receiver_argv(steps.crl_receive_command())
    commands = docs_commands()
    assert len(commands) >= 3, commands
    assert all(c == wanted for c in commands), commands
    reload = shlex.split(wanted[wanted.index("--reload-command") + 1])
    assert reload[:2] == ["sudo", "-n"]
    assert " ".join(reload[2:]) == steps.CRL_PUSH_RELOAD
    assert steps.crl_push_sudoers_rules(USER).endswith(f" NOPASSWD: {steps.CRL_PUSH_RELOAD}\n")


@pytest.fixture
def node_root() -> Iterator[Path]:
    """A root the push account can reach (pytest's tmp dirs are 0700), as on a server."""
    with traversable_dir("crl-push-node-") as base:
        yield make_root(base / "root")


def test_a_push_lands_where_the_rendered_apache_reads_it(
    node_root: Path, tmp_path: Path, python_for_others: Path
) -> None:
    """The installer's step 5 with [crl_push], then the receiver run as the push account with the
    documented arguments (paths under the throwaway root): the newer CRL is in the file Apache's
    STRONGROOM_CRL names, checked against the file STRONGROOM_CLIENT_CA names."""
    setpriv = need_binary("setpriv")
    root = node_root
    (root / "etc").chmod(0o755)
    ca = TestCA()
    apache_step(root, with_tls(settings(), tmp_path / "tls", ca, ca.crl_pem()))
    (root / "etc/apache2/strongroom").chmod(0o755)
    argv = receiver_argv(push_command(GOOD))
    for flag in ("--crl", "--chain"):
        argv[argv.index(flag) + 1] = str(root) + argv[argv.index(flag) + 1]
    # Never the real `sudo -n apache2ctl graceful` here (it would reload this host's Apache): its
    # match with the sudo rule is held by test_the_documented_receiver_command_is_the_installer_s.
    argv[argv.index("--reload-command") + 1] = "/bin/true"
    uid, gid = push_ids(root)
    ca.revoke(ca.issue("alice"))
    newer = ca.crl_pem()
    done = subprocess.run(
        [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", str(python_for_others), *argv],
        input=newer, cwd="/", capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    apache_reads = root / define(root, "STRONGROOM_CRL").lstrip("/")
    assert str(apache_reads) == argv[argv.index("--crl") + 1]
    assert str(root / define(root, "STRONGROOM_CLIENT_CA").lstrip("/")) == argv[argv.index("--chain") + 1]
    assert apache_reads.read_bytes() == newer
    st = apache_reads.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (uid, gid, 0o644)
    # The next install keeps it.
    _, said = apache_step(root, with_tls(settings(), tmp_path / "tls", ca, ca.crl_pem()))
    assert apache_reads.read_bytes() == newer
    assert any(line.startswith("crl: kept the pushed CRL") for line in said)
