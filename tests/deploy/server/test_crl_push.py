"""The settings' [crl_push] (deploy/server/settings.py, read by hardening.ssh's own parser) and what the
install makes of it (deploy/server/steps.py): sshd_config with the CA's CRL push Match blocks that
`python -m hardening.ssh --settings` renders, the push account (a system user with its own group and
no usable password), the graceful reload's sudo rule, and the account's key file kept as the
operator's. Without [crl_push] sshd_config is byte for byte the shipped file and nothing else appears;
removing it takes the sudo rule away. Hostile tables are refused, each by its key."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from deploy.server import steps
from deploy.server.plan import InstallError, Plan
from deploy.server.settings import Settings, SettingsError, parse
from hardening import ssh as ssh_conf
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
    need_root()  # useradd --prefix, files owned by another uid
    need_binary("useradd")
    etc = tmp_path / "root/etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\nstrongroom-admins:x:998:alice\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\nstrongroom-admins:*::alice\n")
    for name in ("shadow", "gshadow"):
        (etc / name).chmod(0o600)
    shutil.copy2("/etc/login.defs", etc / "login.defs")
    return tmp_path / "root"


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
