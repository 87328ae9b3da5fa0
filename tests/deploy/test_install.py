"""deploy/install.sh run twice into a throwaway root (never the host's /etc): users, groups,
directories, owners and modes are what docs/deploy.md says, the second run changes nothing, the
installed Apache configuration passes `apache2 -t`, and hostile starting states are refused."""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keyd.config import Config
from keyd.config import load as load_keyd_config
from tests.support import need_binary, need_root

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "deploy" / "install.sh"
ACCOUNT_FILES = ("passwd", "group", "shadow", "gshadow")


BASE_ACCOUNTS = ("root", "daemon", "www-data", "nobody")
BASE_GROUPS = ("root", "daemon", "adm", "shadow", "www-data", "nogroup")


def make_root(base: Path, *, apache: bool = True) -> Path:
    """A Debian-like target: Debian's base accounts (root, www-data...; taken from this host's public
    passwd/group, never its password hashes), login.defs, and a copy of /etc/apache2."""
    root = base / "root"
    etc = root / "etc"
    etc.mkdir(parents=True)
    passwd = [
        line for line in Path("/etc/passwd").read_text().splitlines() if line.split(":")[0] in BASE_ACCOUNTS
    ]
    group = [
        line for line in Path("/etc/group").read_text().splitlines() if line.split(":")[0] in BASE_GROUPS
    ]
    (etc / "passwd").write_text("".join(f"{line}\n" for line in passwd))
    (etc / "group").write_text("".join(f"{line}\n" for line in group))
    (etc / "shadow").write_text("".join(f"{line.split(':')[0]}:*:19000:0:99999:7:::\n" for line in passwd))
    (etc / "gshadow").write_text("".join(f"{line.split(':')[0]}:*::\n" for line in group))
    for name in ("shadow", "gshadow"):
        (etc / name).chmod(0o600)
    shutil.copy2("/etc/login.defs", etc / "login.defs")
    if apache:
        shutil.copytree("/etc/apache2", root / "etc/apache2", symlinks=True)
    return root


def run_install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), *args], capture_output=True, text=True, check=False
    )


def listing(root: Path) -> list[tuple[str, str, int, int, str]]:
    """Every path with its type/mode, owner, group and link target: the install's whole footprint."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted([*dirnames, *filenames]):
            p = Path(dirpath) / name
            st = p.lstat()
            target = os.readlink(p) if stat.S_ISLNK(st.st_mode) else ""
            out.append((str(p.relative_to(root)), oct(st.st_mode), st.st_uid, st.st_gid, target))
    return sorted(out)


def entries(path: Path) -> dict[str, list[str]]:
    return {line.split(":")[0]: line.split(":") for line in path.read_text().splitlines() if line}


def host_accounts_digest() -> str:
    return hashlib.sha256(b"".join(Path(f"/etc/{n}").read_bytes() for n in ACCOUNT_FILES)).hexdigest()


@dataclass(frozen=True)
class Installed:
    root: Path
    first: list[tuple[str, str, int, int, str]]
    second: list[tuple[str, str, int, int, str]]
    accounts_first: dict[str, bytes]
    second_output: str

    def uid(self, name: str) -> int:
        return int(entries(self.root / "etc/passwd")[name][2])

    def gid(self, name: str) -> int:
        return int(entries(self.root / "etc/group")[name][2])


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    need_root()
    need_binary("useradd")
    before = host_accounts_digest()
    root = make_root(tmp_path_factory.mktemp("install"))
    res = run_install(root)
    assert res.returncode == 0, res.stderr
    first = listing(root)
    accounts = {n: (root / "etc" / n).read_bytes() for n in ACCOUNT_FILES}
    again = run_install(root)
    assert again.returncode == 0, again.stderr
    assert host_accounts_digest() == before, "the install touched the host's accounts"
    return Installed(root, first, listing(root), accounts, again.stdout)


def test_second_run_changes_nothing(installed: Installed) -> None:
    assert installed.second == installed.first
    for name in ACCOUNT_FILES:
        assert (installed.root / "etc" / name).read_bytes() == installed.accounts_first[name], name
    # It said nothing but "done": nothing was created, added, disabled or written again.
    assert installed.second_output.strip().splitlines() == [f"install.sh: done (root {installed.root})"]


@pytest.mark.parametrize(
    ("user", "primary", "member_of", "not_member_of"),
    [
        ("strongroom-keyd", "strongroom-keyd", set(), {"strongroom-web", "www-data"}),
        ("strongroom-web", "strongroom-web", {"strongroom-keyd-clients"}, {"strongroom-keyd", "www-data"}),
    ],
)
def test_system_users(
    installed: Installed, user: str, primary: str, member_of: set[str], not_member_of: set[str]
) -> None:
    passwd = entries(installed.root / "etc/passwd")
    groups = entries(installed.root / "etc/group")
    _, _, uid, gid, _, home, shell = passwd[user]
    assert int(uid) < 1000  # a system account
    assert int(gid) == installed.gid(primary)
    assert (home, shell) == ("/nonexistent", "/usr/sbin/nologin")
    shadow = entries(installed.root / "etc/shadow")[user]
    assert shadow[1].startswith("!") or shadow[1] == "*", "a password can be used to log in"
    memberships = {g for g, row in groups.items() if user in row[3].split(",")}
    assert member_of <= memberships
    assert not memberships & not_member_of
    # The keyd clients group holds the web app and nobody else (Apache must not reach keyd).
    assert groups["strongroom-keyd-clients"][3].split(",") == ["strongroom-web"]
    # Created once: no duplicate names or ids.
    names = [line.split(":")[0] for line in (installed.root / "etc/passwd").read_text().splitlines()]
    assert names.count(user) == 1


# (path, mode, owner, group)
PATHS = [
    ("etc/strongroom", 0o755, "root", "root"),
    ("etc/strongroom/keyd.toml", 0o640, "root", "strongroom-keyd"),
    ("etc/strongroom/webapp.env", 0o640, "root", "strongroom-web"),
    ("var/lib/strongroom-keyd", 0o700, "strongroom-keyd", "strongroom-keyd-clients"),
    ("var/lib/strongroom-web", 0o700, "strongroom-web", "strongroom-web"),
    ("var/lib/strongroom-web/alert-spool", 0o700, "strongroom-web", "strongroom-web"),
    ("run/strongroom-web", 0o710, "strongroom-web", "www-data"),
    ("etc/systemd/system/strongroom-keyd.service", 0o644, "root", "root"),
    ("etc/systemd/system/strongroom-web.service", 0o644, "root", "root"),
    ("etc/systemd/system/strongroom-mail.service", 0o644, "root", "root"),
    ("etc/systemd/system/strongroom-outbox-prune.service", 0o644, "root", "root"),
    ("etc/systemd/system/strongroom-outbox-prune.timer", 0o644, "root", "root"),
    ("etc/systemd/system/strongroom-purge-retired.service", 0o644, "root", "root"),
    ("etc/systemd/system/strongroom-purge-retired.timer", 0o644, "root", "root"),
    ("etc/systemd/system/strongroom-ca-crl.timer", 0o644, "root", "root"),
    ("etc/systemd/system/strongroom-watch.timer", 0o644, "root", "root"),
    ("etc/tmpfiles.d/strongroom.conf", 0o644, "root", "root"),
    ("etc/apparmor.d/strongroom-keyd", 0o644, "root", "root"),
    ("etc/apparmor.d/strongroom-web", 0o644, "root", "root"),
    ("etc/apparmor.d/strongroom-mail", 0o644, "root", "root"),
    ("etc/apparmor.d/strongroom-apache2", 0o644, "root", "root"),
    # Confines nothing on a single server: the agent's unit is rendered only for [balancer].
    ("etc/apparmor.d/strongroom-health-agent", 0o644, "root", "root"),
    ("etc/apache2/strongroom", 0o750, "root", "root"),
    ("etc/apache2/strongroom/modsecurity-strongroom.conf", 0o644, "root", "root"),
    # Apache's piped loggers run it as root: nobody else may change it.
    ("etc/apache2/strongroom/logfilter.py", 0o644, "root", "root"),
    ("etc/logrotate.d", 0o755, "root", "root"),
    ("etc/logrotate.d/strongroom-modsecurity", 0o644, "root", "root"),
    ("etc/apache2/sites-available/strongroom.conf", 0o644, "root", "root"),
    ("var/cache/modsecurity/strongroom-tmp", 0o700, "www-data", "www-data"),
]


@pytest.mark.parametrize(("path", "mode", "owner", "group"), PATHS, ids=[p[0] for p in PATHS])
def test_owner_and_mode(installed: Installed, path: str, mode: int, owner: str, group: str) -> None:
    st = (installed.root / path).lstat()
    assert stat.S_IMODE(st.st_mode) == mode
    assert (st.st_uid, st.st_gid) == (installed.uid(owner), installed.gid(group))


def test_installed_files_are_the_repository_files(installed: Installed) -> None:
    pairs = [
        ("deploy/strongroom-keyd.service", "etc/systemd/system/strongroom-keyd.service"),
        ("deploy/strongroom-outbox-prune.timer", "etc/systemd/system/strongroom-outbox-prune.timer"),
        ("deploy/strongroom-purge-retired.timer", "etc/systemd/system/strongroom-purge-retired.timer"),
        ("deploy/strongroom-tmpfiles.conf", "etc/tmpfiles.d/strongroom.conf"),
        ("apparmor/strongroom-apache2", "etc/apparmor.d/strongroom-apache2"),
        ("apparmor/strongroom-health-agent", "etc/apparmor.d/strongroom-health-agent"),
        ("apache/strongroom-site.conf", "etc/apache2/sites-available/strongroom.conf"),
        ("apache/logfilter.py", "etc/apache2/strongroom/logfilter.py"),
        ("apache/strongroom-logrotate", "etc/logrotate.d/strongroom-modsecurity"),
    ]
    for src, dest in pairs:
        assert (installed.root / dest).read_bytes() == (ROOT / src).read_bytes(), dest


def test_the_site_runs_the_installed_log_filter(installed: Installed) -> None:
    # The site's default paths name exactly what the install puts in place: a filter missing there
    # and Apache cannot start its loggers.
    site = (installed.root / "etc/apache2/sites-available/strongroom.conf").read_text()
    assert "Define STRONGROOM_LOG_FILTER /etc/apache2/strongroom/logfilter.py" in site
    assert "Define STRONGROOM_PYTHON /usr/bin/python3" in site
    # ...and the logrotate rule covers the audit log where the site writes it.
    assert "Define STRONGROOM_MODSEC_AUDIT_LOG ${APACHE_LOG_DIR}/modsecurity/strongroom-audit.log" in site
    rotate = (installed.root / "etc/logrotate.d/strongroom-modsecurity").read_text()
    assert "/var/log/apache2/modsecurity/*.log {" in rotate


def _drop_log_filter(root: Path) -> None:
    (root / "etc/apache2/strongroom/logfilter.py").unlink()


def _edit_log_filter(root: Path) -> None:
    with (root / "etc/apache2/strongroom/logfilter.py").open("a") as f:
        f.write("# planted\n")


def _loosen_logrotate(root: Path) -> None:
    (root / "etc/logrotate.d/strongroom-modsecurity").chmod(0o666)


def _drop_logrotate(root: Path) -> None:
    (root / "etc/logrotate.d/strongroom-modsecurity").unlink()


def _drop_prune_timer(root: Path) -> None:
    (root / "etc/systemd/system/strongroom-outbox-prune.timer").unlink()


def _edit_purge_timer(root: Path) -> None:
    with (root / "etc/systemd/system/strongroom-purge-retired.timer").open("a") as f:
        f.write("OnCalendar=yearly\n")


DRIFTS = [
    ("log filter missing", _drop_log_filter, "/etc/apache2/strongroom/logfilter.py installed"),
    ("log filter changed", _edit_log_filter, "/etc/apache2/strongroom/logfilter.py installed"),
    ("logrotate rule writable", _loosen_logrotate, "/etc/logrotate.d/strongroom-modsecurity installed"),
    ("logrotate rule missing", _drop_logrotate, "/etc/logrotate.d/strongroom-modsecurity installed"),
    ("prune timer missing", _drop_prune_timer, "/etc/systemd/system/strongroom-outbox-prune.timer installed"),
    (
        "purge timer changed",
        _edit_purge_timer,
        "/etc/systemd/system/strongroom-purge-retired.timer installed",
    ),
]


@pytest.mark.parametrize(("why", "damage", "drift"), DRIFTS, ids=[d[0] for d in DRIFTS])
def test_check_reports_what_was_changed_or_removed(
    tmp_path: Path, why: str, damage: Callable[[Path], None], drift: str
) -> None:
    need_root()
    root = make_root(tmp_path)
    assert run_install(root).returncode == 0
    clean = run_install(root, "--check")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    damage(root)
    before = listing(root)
    res = run_install(root, "--check")
    assert res.returncode == 1, why
    assert f"install.sh: drift: {drift}" in res.stdout.splitlines(), res.stdout
    assert listing(root) == before, "--check changed something"
    # The install puts it back.
    assert run_install(root).returncode == 0
    assert run_install(root, "--check").returncode == 0


def test_keyd_config_admits_the_web_app_only(installed: Installed) -> None:
    config = load_keyd_config(installed.root / "etc/strongroom/keyd.toml")
    assert config.allowed_uids == {installed.uid("strongroom-web")}
    assert installed.uid("www-data") not in config.allowed_uids
    assert config.admin_uids == {0}
    # A hand start as root ends up like the unit: keyd's user, the socket in the clients group.
    assert (config.user, config.socket_group) == ("strongroom-keyd", "strongroom-keyd-clients")
    defaults = Config()
    assert (config.socket, config.state_dir, config.drop_path) == (
        defaults.socket,
        defaults.state_dir,
        defaults.drop_path,
    )


def test_webapp_env_has_a_generated_secret(installed: Installed) -> None:
    env = dict(
        line.split("=", 1)
        for line in (installed.root / "etc/strongroom/webapp.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert len(env["STRONGROOM_SECRET_KEY"]) >= 32
    assert "@" not in env["STRONGROOM_SECRET_KEY"]
    assert env["STRONGROOM_KEYD_SOCKET"] == str(Config().socket)


def test_exactly_the_listed_apache_modules(installed: Installed) -> None:
    listed = {m.strip() for m in (ROOT / "apache/modules.txt").read_text().splitlines() if m.strip()}
    enabled = {p.name.split(".")[0] for p in (installed.root / "etc/apache2/mods-enabled").iterdir()}
    # ssl's Debian dependencies come along, as with a2enmod; nothing else (no status, autoindex, cgi).
    assert enabled == listed | {"mime", "setenvif"}
    sites = sorted(p.name for p in (installed.root / "etc/apache2/sites-enabled").iterdir())
    assert sites == ["strongroom.conf"]
    ports = (installed.root / "etc/apache2/ports.conf").read_text()
    assert not [line for line in ports.splitlines() if line.strip().lower().startswith("listen")]
    assert (installed.root / "etc/apache2/ports.conf.strongroom-orig").exists()


def test_tmpfiles_entry_makes_the_same_directory(installed: Installed, tmp_path: Path) -> None:
    tmpfiles = need_binary("systemd-tmpfiles")
    root = make_root(tmp_path, apache=False)
    for name in ACCOUNT_FILES:
        shutil.copy2(installed.root / "etc" / name, root / "etc" / name)
    (root / "etc/tmpfiles.d").mkdir()
    shutil.copy2(ROOT / "deploy/strongroom-tmpfiles.conf", root / "etc/tmpfiles.d/strongroom.conf")
    subprocess.run([tmpfiles, f"--root={root}", "--create", "strongroom.conf"], check=True)
    made, want = (root / "run/strongroom-web").lstat(), (installed.root / "run/strongroom-web").lstat()
    assert (made.st_mode, made.st_uid, made.st_gid) == (want.st_mode, want.st_uid, want.st_gid)


def _self_signed(directory: Path) -> tuple[Path, Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vault.example.internal")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(name)
        .last_update(now)
        .next_update(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    paths = directory / "cert.pem", directory / "key.pem", directory / "crl.pem"
    paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    paths[2].write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return paths


def test_installed_apache_configuration_is_valid(installed: Installed, tmp_path: Path) -> None:
    apache2 = need_binary("apache2")
    root = installed.root
    cert, key, crl = _self_signed(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    # The site's production paths are Defines with defaults; point them into the throwaway root.
    defines = {
        "STRONGROOM_CONF_DIR": root / "etc/apache2/strongroom",
        "STRONGROOM_TLS_CERT": cert,
        "STRONGROOM_TLS_KEY": key,
        "STRONGROOM_CLIENT_CA": cert,
        "STRONGROOM_CRL": crl,
        "STRONGROOM_LOG_DIR": run,
        "STRONGROOM_MODSEC_DATA_DIR": root / "var/cache/modsecurity",
        "STRONGROOM_MODSEC_TMP_DIR": root / "var/cache/modsecurity/strongroom-tmp",
        "STRONGROOM_MODSEC_AUDIT_LOG": run / "audit.log",
    }
    top = tmp_path / "top.conf"
    top.write_text(
        "".join(f"Define {k} {v}\n" for k, v in defines.items())
        + f"ServerName vault.example.internal\nInclude {root}/etc/apache2/apache2.conf\n"
    )
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "APACHE_RUN_USER": "www-data",
        "APACHE_RUN_GROUP": "www-data",
        "APACHE_PID_FILE": str(run / "apache2.pid"),
        "APACHE_RUN_DIR": str(run),
        "APACHE_LOCK_DIR": str(run),
        "APACHE_LOG_DIR": str(run),
    }
    res = subprocess.run(
        [apache2, "-d", str(root / "etc/apache2"), "-f", str(top), "-t"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "Syntax OK" in res.stderr


def _plant_symlink(root: Path) -> None:
    (root / "etc/strongroom").mkdir()
    (root / "etc/strongroom/keyd.toml").symlink_to("/etc/shadow")


def _plant_dir_symlink(root: Path) -> None:
    (root / "var/lib").mkdir(parents=True)
    (root / "var/lib/strongroom-keyd").symlink_to("/tmp")


def _no_www_data(root: Path) -> None:
    for name in ("group", "gshadow"):
        path = root / "etc" / name
        path.write_text(
            "".join(line for line in path.read_text().splitlines(True) if not line.startswith("www-data:"))
        )


HOSTILE = [
    ("unknown option", [], "--bogus", None, "unknown argument"),
    ("root that does not exist", [], "--root-missing", None, "is not a directory"),
    ("src that is not a checkout", ["--src", "/tmp"], "", None, "is missing"),
    ("no Apache in the root", [], "", "no-apache", "not Debian's apache2"),
    ("keyd.toml is a planted symlink", [], "", "symlink", "symbolic link"),
    ("keyd's state dir is a planted symlink", [], "", "dir-symlink", "symbolic link"),
    ("no www-data group", [], "", "no-www-data", "www-data is missing"),
]


@pytest.mark.parametrize(("why", "args", "special", "setup", "message"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_starting_states_are_refused(
    tmp_path: Path, why: str, args: list[str], special: str, setup: str | None, message: str
) -> None:
    need_root()
    root = make_root(tmp_path, apache=setup != "no-apache")
    if setup == "symlink":
        _plant_symlink(root)
    elif setup == "dir-symlink":
        _plant_dir_symlink(root)
    elif setup == "no-www-data":
        _no_www_data(root)
    if special == "--bogus":
        args = [*args, "--bogus"]
    elif special == "--root-missing":
        root = tmp_path / "nowhere"
    res = run_install(root, *args)
    assert res.returncode != 0, why
    assert message in res.stderr, res.stderr
    # Nothing was chmod'ed through the planted links.
    assert stat.S_IMODE(Path("/etc/shadow").stat().st_mode) == 0o640
    assert stat.S_IMODE(Path("/tmp").stat().st_mode) == 0o1777


def test_skip_apache_installs_the_rest(tmp_path: Path) -> None:
    need_root()
    root = make_root(tmp_path, apache=False)
    res = run_install(root, "--skip-apache")
    assert res.returncode == 0, res.stderr
    assert (root / "etc/systemd/system/strongroom-keyd.service").exists()
    assert not (root / "etc/apache2").exists()


def test_an_existing_account_loses_its_login_shell(tmp_path: Path) -> None:
    need_root()
    root = make_root(tmp_path)
    subprocess.run(
        ["useradd", "--prefix", str(root), "--system", "--shell", "/bin/bash", "strongroom-web"], check=True
    )
    res = run_install(root)
    assert res.returncode == 0, res.stderr
    assert entries(root / "etc/passwd")["strongroom-web"][6] == "/usr/sbin/nologin"
    assert "strongroom-web" in entries(root / "etc/group")["strongroom-keyd-clients"][3].split(",")


@pytest.mark.parametrize(
    ("why", "setup"),
    [
        ("a world-writable file", lambda p: p.chmod(0o666)),
        ("a group-writable file", lambda p: p.chmod(0o664)),
        ("a file owned by another user", lambda p: os.chown(p, 33, 33)),
    ],
)
def test_a_writable_checkout_is_reported(tmp_path: Path, why: str, setup: Callable[[Path], None]) -> None:
    need_root()
    root = make_root(tmp_path, apache=False)
    code = root / "opt/strongroom/webapp"
    code.mkdir(parents=True)
    (code / "app.py").write_text("# code\n")
    (code / "app.py").chmod(0o644)
    clean = run_install(root, "--skip-apache")
    assert clean.returncode == 0, clean.stderr
    assert "WARNING" not in clean.stderr
    setup(code / "app.py")
    res = run_install(root, "--skip-apache")
    assert res.returncode == 0, res.stderr
    assert "WARNING: /opt/strongroom/webapp/app.py" in res.stderr, why
