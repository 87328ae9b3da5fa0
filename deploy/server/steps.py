"""The steps of `deploy/strongroom-install`, in order. Each one looks at the server, reports what
differs from the settings and the checkout (`Plan.change`), and fixes it unless checking.

Configuration comes from the project's own renderers (hardening/, ops/rsyslog), imported directly:
they are standard library only, so they run under the system python3 before the virtualenv exists.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import secrets
import site
import socket
import stat
import subprocess
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from common import atomic
from deploy.server import remote_db
from deploy.server.plan import InstallError, Plan, Want, run, warn
from deploy.server.settings import LOGIN as _LOGIN
from deploy.server.settings import Balancer, Settings, webapp_value
from hardening import aide as aide_conf
from hardening import mariadb as mariadb_conf
from hardening import ssh as ssh_conf
from hardening import updates
from ops.rsyslog import Sender

OPT = "/opt/strongroom"
VENV_PYTHON = f"{OPT}/.venv/bin/python"
STATE_DIR = "/var/lib/strongroom-install"
# Never copied to the server: the checkout's own tooling and run-time state.
EXCLUDE = {
    ".git",
    ".venv",
    "var",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "node_modules",
}
SERVICES = (
    "mariadb",
    "postfix",
    "rsyslog",
    "ssh",
    "strongroom-firewall",
    "apache2",
    "strongroom-keyd",
    "strongroom-web",
    "strongroom-mail",
)
TIMERS = (
    "strongroom-watch.timer",
    "strongroom-watch-slow.timer",
    "strongroom-watch-report.timer",
    "strongroom-remote-copy.timer",
    "strongroom-outbox-prune.timer",
    "strongroom-purge-retired.timer",
)
BACKUP_TIMER = "strongroom-backup.timer"
POSTFIX_FILES = ("main.cf", "master.cf", "virtual")
KEYD = "strongroom-keyd"
KEYD_CONFIG = "/etc/strongroom/keyd.toml"
# The health agent for the balancer (settings [balancer]): rendered from its template, only on a web node.
AGENT = "strongroom-health-agent"
AGENT_UNIT = f"/etc/systemd/system/{AGENT}.service"
# The services that run the project's code with the web app's settings: restarted on new code or settings.
APP_SERVICES = {"strongroom-keyd", "strongroom-web", "strongroom-mail", AGENT}
# keyd's state file (keyd/state.py, state_dir of deploy/keyd.toml.in): made by the key ceremony.
KEYD_STATE = "/var/lib/strongroom-keyd/state.json"
ADMIN_GROUP = "strongroom-admins"
DB = "strongroom"
SOCKET = "/run/mysqld/mysqld.sock"


# ---- 1. Debian packages ---------------------------------------------------------------------------


def package_list(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", name):
                raise InstallError(f"{path}: bad package name {name!r}")
            names.append(name)
    return names


def installed_packages(names: list[str]) -> set[str]:
    res = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\n", *names],
        capture_output=True,
        text=True,
        check=False,
    )
    return {
        line.split()[0]
        for line in res.stdout.splitlines()
        if len(line.split()) > 1 and line.split()[1] == "ii"
    }


def packages(plan: Plan, src: Path) -> None:
    names = package_list(src / "deploy/server/debian-packages.txt")
    missing = [n for n in names if n not in installed_packages(names)]
    if not missing:
        return

    def apply() -> None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update"], what="apt-get update", env=env)
        run(
            ["apt-get", "install", "-y", "--no-install-recommends", *missing], what="apt-get install", env=env
        )

    plan.change(f"Debian packages installed: {' '.join(missing)}", apply)


# ---- 2. the code and its virtualenv ------------------------------------------------------------------


def source_files(src: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDE and not d.endswith(".egg-info"))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink() and not name.endswith((".pyc", ".pyo")):
                yield p.relative_to(src)


def code(plan: Plan, src: Path) -> None:
    """Copy the checkout to /opt/strongroom: root's, writable by nobody else (a service that could
    write its own code could plant some for its next start)."""
    if src.resolve() == plan.on_target(OPT).resolve():
        return
    dest = plan.on_target(OPT)
    wanted = set(source_files(src))
    differ = []
    for rel in sorted(wanted):
        s, d = src / rel, dest / rel
        mode = 0o755 if os.access(s, os.X_OK) else 0o644
        try:
            st = d.lstat()
            if (
                (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, mode)
                and stat.S_ISREG(st.st_mode)
                and st.st_size == s.stat().st_size
                and d.read_bytes() == s.read_bytes()
            ):
                continue
        except FileNotFoundError:
            pass
        differ.append((rel, mode))
    extra = sorted((set(source_files(dest)) if dest.is_dir() else set()) - wanted)
    bad_dirs = [d for d in _dirs(dest) if (d.stat().st_uid, stat.S_IMODE(d.stat().st_mode) & 0o022) != (0, 0)]
    if not differ and not extra and not bad_dirs:
        return

    def apply() -> None:
        dest.mkdir(parents=True, exist_ok=True)
        for rel, mode in differ:
            d = dest / rel
            d.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_bytes(d, (src / rel).read_bytes(), mode=mode, owner=(0, 0))
        for rel in extra:
            (dest / rel).unlink()
        for d in [dest, *_dirs(dest)]:
            os.chown(d, 0, 0)
            d.chmod(0o755)
        # The services see /opt read-only and never write bytecode: compile it once, as root.
        run(
            [
                VENV_PYTHON if Path(VENV_PYTHON).exists() else "python3",
                "-m",
                "compileall",
                "-q",
                "common",
                "webapp",
                "keyd",
                "ca",
                "ops",
                "backup",
                "hardening",
                "deploy",
            ],
            what="compileall",
            cwd=str(dest),
        )

    plan.change(f"{OPT}: {len(differ)} files copied, {len(extra)} removed", apply)
    plan.restart.update(APP_SERVICES)


def _dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    out: list[Path] = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in EXCLUDE]
        out.extend(Path(dirpath) / d for d in dirnames)
    return out


def pip_install(wheelhouse: Path | None) -> list[str]:
    """The server venv's install: requirements.txt locks the whole tree with hashes (`make lock`), and
    pip refuses any file whose hash differs, whether from PyPI or from a wheelhouse. Wheels only: an
    sdist would be built as root with build tools that no hash covers."""
    pip = [f"{OPT}/.venv/bin/pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile"]
    pip += ["--require-hashes", "--only-binary=:all:"]
    if wheelhouse is not None:
        pip += ["--no-index", "--find-links", str(wheelhouse)]
    return [*pip, "-r", f"{OPT}/requirements.txt"]


def venv(plan: Plan, src: Path, wheelhouse: Path | None) -> None:
    reqs = (src / "requirements.txt").read_bytes()
    stamp = f"{OPT}/.venv/.strongroom-requirements"
    if plan.read(stamp) == reqs and plan.on_target(VENV_PYTHON).exists():
        return

    def apply() -> None:
        run(["python3", "-m", "venv", "--clear", f"{OPT}/.venv"], what="python3 -m venv")
        run(pip_install(wheelhouse), what="pip install")
        run([VENV_PYTHON, "-m", "compileall", "-q", f"{OPT}/.venv/lib"], what="compileall")
        Path(stamp).write_bytes(reqs)

    plan.change(f"{OPT}/.venv built from requirements.txt", apply)
    plan.restart.update(APP_SERVICES)


# ---- 3. users, directories, units, Apache site: deploy/install.sh ------------------------------------


def install_sh(plan: Plan, src: Path) -> None:
    base = plan.on_target(OPT) if plan.on_target(f"{OPT}/deploy/install.sh").exists() else src
    cmd = ["bash", str(base / "deploy/install.sh"), "--src", str(base), "--root", str(plan.root)]
    res = subprocess.run([*cmd, "--check"], capture_output=True, text=True, check=False)
    if res.returncode not in (0, 1):
        raise InstallError(f"deploy/install.sh --check failed: {res.stderr.strip()[-500:]}")
    drift = [
        line.split("drift: ", 1)[1]
        for line in res.stdout.splitlines()
        if line.startswith("install.sh: drift: ")
    ]
    if not drift:
        return
    if plan.check:
        for what in drift:
            plan.change(what)
        return
    out = run(cmd, what="deploy/install.sh")
    for line in out.splitlines():
        what = line.removeprefix("install.sh: ")
        if not what.startswith(("done", "AppArmor", "systemd reloaded")):
            plan.change(what)
    plan.restart.add("apache2")


# ---- 4. /etc/strongroom: the web app's environment, secrets, watchdog and hook settings --------------


def _env_value(text: str, key: str) -> str | None:
    m = re.search(rf"^{re.escape(key)}=(.*)$", text, re.M)
    return m.group(1) if m else None


def _set_env(text: str, key: str, value: str) -> str:
    if re.search(rf"^{re.escape(key)}=", text, re.M):
        return re.sub(rf"^{re.escape(key)}=.*$", lambda _m: f"{key}={value}", text, count=1, flags=re.M)
    return text.rstrip("\n") + f"\n{key}={value}\n"


def _password(existing: str | None, pattern: str) -> str:
    """Generated once and kept: read back from the file that holds it, made only when absent."""
    if existing:
        m = re.search(pattern, existing)
        if m and m.group(1) != "CHANGE-ME":
            return m.group(1)
    return secrets.token_hex(24)


def _db_url(s: Settings, user: str, password: str) -> str:
    """A database user's URL: the local database's socket, or the host of the settings' [database]."""
    if s.database is not None:
        return remote_db.url_for(s.database, user, password)
    return f"mysql+pymysql://{user}:{password}@localhost/{DB}?unix_socket={SOCKET}&charset=utf8mb4"


# The nightly jobs' database users: user -> (env file read by its unit, variable, grants file, what).
# Each file is root's 0600 (systemd reads it before dropping to strongroom-web).
JOB_USERS = {
    "strongroom_prune": (
        "/etc/strongroom/outbox-prune.env",
        "STRONGROOM_OUTBOX_PRUNE_DATABASE_URL",
        "grants-prune.sql",
        "The outbox pruning job's user (strongroom-outbox-prune.service)",
    ),
    "strongroom_purge": (
        "/etc/strongroom/purge-retired.env",
        "STRONGROOM_PURGE_DATABASE_URL",
        "grants-purge.sql",
        "The purge of retired cards' user (strongroom-purge-retired.service)",
    ),
}
# Every DB user's grants, applied in this order after the schema: each file grants one user exactly
# what it needs (the least-privilege rule of docs/deploy.md).
GRANTS = ("grants.sql", "grants-keys.sql", *(g for _, _, g, _ in JOB_USERS.values()))
DB_USERS = ("strongroom", "strongroom_keys", *JOB_USERS)


def webapp_env(plan: Plan, src: Path, s: Settings) -> dict[str, str]:
    path = "/etc/strongroom/webapp.env"
    old = (plan.read(path) or b"").decode()
    secret = _env_value(old, "STRONGROOM_SECRET_KEY") or ""
    if len(secret) < 32 or "@" in secret:
        secret = secrets.token_urlsafe(48)
    app_pw = _password(old, r"mysql\+pymysql://strongroom:([0-9a-f]{48})@")
    keys_old = (plan.read("/etc/strongroom/keys.env") or b"").decode()
    keys_pw = _password(keys_old, r"mysql\+pymysql://strongroom_keys:([0-9a-f]{48})@")
    text = fill_template((src / "deploy/webapp.env.in").read_text(), {"SECRET_KEY": secret})
    text = text.replace("strongroom:CHANGE-ME@", f"strongroom:{app_pw}@")
    if s.database is not None:
        text = _set_env(text, "STRONGROOM_DATABASE_URL", _db_url(s, "strongroom", app_pw))
    managed = {
        "STRONGROOM_SMTP_HOST": "127.0.0.1",
        "STRONGROOM_SMTP_PORT": "25",
        "STRONGROOM_MAIL_FROM": s.mail_from,
        "STRONGROOM_ALERT_TO": ",".join(s.alert_to),
    }
    for key, value in managed.items():
        text = _set_env(text, key, value)
    budgets = reveal_budgets(plan, src)
    text = text.rstrip("\n") + (
        "\n# keyd's [budgets] (/etc/strongroom/keyd.toml; keyd's defaults where it sets none), copied\n"
        "# by the install command: the web app's global reveal budget and this node's keyd ceiling are\n"
        "# the same numbers (docs/scaling.md). Change them in keyd.toml, then run the install command.\n"
    )
    text = _set_env(text, "STRONGROOM_REVEAL_BUDGETS", budgets)
    old_budgets = _env_value(old, "STRONGROOM_REVEAL_BUDGETS")
    if old_budgets is not None and old_budgets != budgets:
        # keyd reads its [budgets] only at start: say so (a restart seals it, so never done here).
        plan.restart.add(KEYD)
    # The settings file is the one source of the admin's own web app settings: a hand edit of
    # webapp.env is drift (--check) and is reverted by the next run.
    if s.webapp:
        text = text.rstrip("\n") + "\n# From the settings file's [webapp] table (docs/deploy.md):\n"
        webapp_accepts(plan, src, s.webapp)
    for name, value in s.webapp:
        text = _set_env(text, f"STRONGROOM_{name}", value)
    if plan.file(
        Want(path, text.encode(), 0o640, "root", "strongroom-web"),
        restarts=("strongroom-web", "strongroom-mail", AGENT),
    ):
        plan.restart.add("strongroom-watch")
    keys_url = _db_url(s, "strongroom_keys", keys_pw)
    plan.file(
        Want(
            "/etc/strongroom/keys.env",
            (
                "# The key-rotation user (webapp/db/grants-keys.sql), generated by\n"
                "# deploy/strongroom-install.\n"
                "# For `flask --app webapp keys ...` as root: set -a; . /etc/strongroom/keys.env; set +a\n"
                f"STRONGROOM_KEYS_DATABASE_URL={keys_url}\n"
            ).encode(),
            0o600,
        )
    )
    passwords = {"strongroom": app_pw, "strongroom_keys": keys_pw}
    for user, (path, var, grants, what) in JOB_USERS.items():
        old_env = (plan.read(path) or b"").decode()
        pw = _password(old_env, rf"mysql\+pymysql://{user}:([0-9a-f]{{48}})@")
        url = _db_url(s, user, pw)
        body = f"# {what} (webapp/db/{grants}), generated by\n# deploy/strongroom-install.\n{var}={url}\n"
        plan.file(Want(path, body.encode(), 0o600))
        passwords[user] = pw
    return passwords


# keyd's budget rules (keyd/config.py, Budgets): the installer's system python3 cannot import keyd.config
# (it imports cryptography), so the defaults are read from its source and the rule is restated here; a
# test holds both to keyd's own loader.
KEYD_WINDOWS = ("minute", "hour", "day")
KEYD_SCOPES = ("employee", "global")
MAX_KEYD_BUDGET = 10**9
MAX_KEYD_CONFIG = 64 * 1024


def keyd_default_budgets(src: Path) -> dict[str, dict[str, int]]:
    """DEFAULT_EMPLOYEE_BUDGET and DEFAULT_GLOBAL_BUDGET of the checkout's keyd/config.py."""
    names = {"DEFAULT_EMPLOYEE_BUDGET": "employee", "DEFAULT_GLOBAL_BUDGET": "global"}
    found: dict[str, dict[str, int]] = {}
    for node in ast.parse((src / "keyd/config.py").read_text()).body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        if isinstance(node, ast.Assign) and isinstance(target, ast.Name) and target.id in names:
            found[names[target.id]] = ast.literal_eval(node.value)
    if set(found) != set(KEYD_SCOPES):
        raise RuntimeError(f"{src}/keyd/config.py: no default budgets")  # the checkout itself is broken
    return found


def keyd_budgets(text: str, defaults: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """keyd's [budgets] as keyd reads them from its config: each window given overrides its default.
    Refused (InstallError, never quoting a value) where keyd itself would refuse to start."""
    where = f"{KEYD_CONFIG} [budgets]"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        raise InstallError(f"{KEYD_CONFIG} is not valid TOML: keyd would not start either") from None
    given = data.get("budgets", {})
    if not isinstance(given, dict) or set(given) - set(KEYD_SCOPES):
        raise InstallError(f"{where}: has only [budgets.employee] and [budgets.global] (docs/keyd.md)")
    out: dict[str, dict[str, int]] = {}
    for scope in KEYD_SCOPES:
        windows = given.get(scope, {})
        if not isinstance(windows, dict) or set(windows) - set(KEYD_WINDOWS):
            raise InstallError(f"{where}: {scope} has only the windows minute, hour and day")
        for window, limit in windows.items():
            if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_KEYD_BUDGET:
                raise InstallError(f"{where}: {scope}.{window} must be a whole number 1-{MAX_KEYD_BUDGET}")
        merged = {**defaults[scope], **windows}
        out[scope] = {window: merged[window] for window in KEYD_WINDOWS}
    return out


def reveal_budgets(plan: Plan, src: Path) -> str:
    """STRONGROOM_REVEAL_BUDGETS's value for webapp.env: keyd's [budgets] of this server, in the web
    app's JSON shape (webapp/budgets.py), quoted for systemd's EnvironmentFile=. Before install.sh has
    written keyd.toml (a --check on a bare server) the template it would write stands in."""
    raw = plan.read(KEYD_CONFIG)
    if raw is None:
        raw = (src / "deploy/keyd.toml.in").read_text().replace("@WEB_UID@", "0").encode()
    if len(raw) > MAX_KEYD_CONFIG:
        raise InstallError(f"{KEYD_CONFIG} is larger than {MAX_KEYD_CONFIG} bytes (keyd refuses it too)")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise InstallError(f"{KEYD_CONFIG} is not UTF-8 (keyd refuses it too)") from None
    budgets = keyd_budgets(text, keyd_default_budgets(src))
    value = webapp_value(json.dumps(budgets, separators=(",", ":")))
    if value is None:  # never: digits, names and JSON punctuation only
        raise RuntimeError("the reveal budgets cannot be written to webapp.env")
    return value


def fill_template(text: str, values: dict[str, str]) -> str:
    """@NAME@ placeholders filled on assignment lines only: the template's comments name them too, and
    a secret must never land in a comment (it would be there twice, once where nobody looks for it)."""
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if not line.lstrip().startswith("#"):
            for name, value in values.items():
                lines[i] = lines[i].replace(f"@{name}@", value)
    return "".join(lines)


# The web app's own loader (create_app: DEFAULTS, STRONGROOM_* parsed as JSON when they parse, its
# validation, working hours, budgets), run on the [webapp] values alone with a throwaway secret and an
# empty instance folder. Prints only the ConfigError's message, which names the setting, never a value.
_WEBAPP_ACCEPTS = """
import sys
from webapp import create_app
from webapp.config import ConfigError
try:
    create_app().extensions["strongroom"].engine.dispose()
except (ConfigError, ValueError) as exc:
    print(str(exc).splitlines()[0][:300], file=sys.stderr)
    sys.exit(1)
"""


def webapp_accepts(plan: Plan, src: Path, values: tuple[tuple[str, str], ...]) -> None:
    """The settings file's checks are stdlib-only (they run before the virtualenv exists) and know the
    names and the form of each value; whether the web app accepts a value is its own parser's to say,
    so this runs after the virtualenv step, before webapp.env is written: a refused value stops the
    install with the old file in place. Without a virtualenv yet (--check on a bare server) the
    values are checked by the first real run."""
    python = plan.on_target(VENV_PYTHON)
    if not python.exists():
        if plan.check:
            plan.change("settings [webapp] not checked by the web app: no virtualenv yet")
            return
        raise InstallError(f"settings [webapp]: {VENV_PYTHON} is missing")
    refused = webapp_refuses(str(python), src, values)
    if refused:
        raise InstallError(f"settings [webapp]: the web app refuses them: {refused}")


def webapp_refuses(python: str, src: Path, values: tuple[tuple[str, str], ...]) -> str:
    """The web app's message for these rendered values, "" when it accepts them."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONDONTWRITEBYTECODE": "1"}
    env |= {f"STRONGROOM_{name}": _unquote(value) for name, value in values}
    env["STRONGROOM_SECRET_KEY"] = secrets.token_urlsafe(48)
    with tempfile.TemporaryDirectory(prefix="strongroom-install-webapp.") as tmp:
        env["STRONGROOM_INSTANCE_PATH"] = tmp
        res = subprocess.run(
            [python, "-B", "-c", _WEBAPP_ACCEPTS], env=env, cwd=str(src), capture_output=True, text=True,
            check=False,
        )  # fmt: skip
    if res.returncode == 0:
        return ""
    return (res.stderr.strip().splitlines() or ["(no message)"])[-1]


def _unquote(value: str) -> str:
    # What systemd's EnvironmentFile= makes of a value settings.webapp_value rendered.
    return value[1:-1] if value.startswith("'") else value


def etc_strongroom(plan: Plan, src: Path, s: Settings) -> None:
    plan.file(Want("/etc/strongroom/watch.toml", (src / "ops/deploy/watch.toml").read_bytes(), 0o640))
    hook = (src / "hardening/ssh/ssh-alert.toml").read_text()
    hook = re.sub(r'^from = ".*"$', f'from = "{s.mail_from}"', hook, count=1, flags=re.M)
    hook = re.sub(
        r"^to = \[.*\]$", "to = [" + ", ".join(f'"{m}"' for m in s.alert_to) + "]", hook, count=1, flags=re.M
    )
    plan.file(Want("/etc/strongroom/ssh-alert.toml", hook.encode(), 0o644))


# ---- 5. Apache: certificates, CA chain, CRL ------------------------------------------------------

APACHE_DIR = "/etc/apache2/strongroom"
# Apache's SSLCACertificateFile (STRONGROOM_CLIENT_CA): the CRL receiver checks a pushed CRL against it.
CLIENT_CA = f"{APACHE_DIR}/chain.pem"
# With [crl_push] the CA host's push owns the node's CRL (docs/ca.md, "Several web nodes: pushing the
# CRL"): Apache's STRONGROOM_CRL is the receiver's file, in a directory of the push account's own (the
# receiver replaces the file by a rename there). Named once: the Define, and the receiver's command
# that server.toml.example and docs/ca.md give (tests/deploy/server/test_crl_push.py holds them to it).
CRL_PUSH_DIR = "/etc/apache2/strongroom-crl"
CRL_PUSH_FILE = f"{CRL_PUSH_DIR}/crl.pem"
# The receiver's graceful reload, the one command the sudo rule (CRL_PUSH_SUDOERS) lets the account run.
CRL_PUSH_RELOAD = "/usr/sbin/apache2ctl graceful"


def crl_receive_command() -> list[str]:
    """[crl_push] command for a node this installer built: the receiver on Apache's own files, reloading
    through the sudo rule's one command."""
    return [
        "/usr/bin/env", "-C", OPT, VENV_PYTHON, "-m", "ca.crl_receive",
        "--crl", CRL_PUSH_FILE, "--chain", CLIENT_CA, "--reload-command", f"sudo -n {CRL_PUSH_RELOAD}",
    ]  # fmt: skip


def apache(plan: Plan, s: Settings) -> None:
    d = APACHE_DIR
    restart = ("apache2",)
    plan.file(Want(f"{d}/server.crt.pem", Path(s.tls.server_cert).read_bytes(), 0o644), restarts=restart)
    plan.file(Want(f"{d}/server.key.pem", Path(s.tls.server_key).read_bytes(), 0o600), restarts=restart)
    plan.file(Want(CLIENT_CA, Path(s.tls.ca_chain).read_bytes(), 0o644), restarts=restart)
    if s.crl_push is None:
        crl_path = f"{d}/crl.pem"
        crl = Path(s.tls.crl).read_bytes()
        plan.file(Want(crl_path, crl, 0o644), restarts=restart)
    else:
        crl_path = CRL_PUSH_FILE
        crl = pushed_crl(plan, s, s.crl_push.user)
        # Apache no longer reads the settings' copy: a stale CRL left there would only mislead.
        plan.absent(f"{d}/crl.pem")
    # The web app's admin console shows what this CRL says (STRONGROOM_CA_CRL_FILE, webapp.env.in);
    # its AppArmor profile may not read /etc/apache2, so it gets the same bytes, from the same run.
    plan.file(Want("/etc/strongroom/crl.pem", crl, 0o644))
    # The site's paths and name are Defines with defaults (apache/strongroom-site.conf); conf-enabled/
    # is read before sites-enabled/, so these win.
    defines = (
        "# Written by deploy/strongroom-install from the settings file: the site's name and the CA files\n"
        "# copied from the CA host (apache/strongroom-site.conf reads these Defines).\n"
        f"Define STRONGROOM_SERVER_NAME {s.hostname}\n"
        f"Define STRONGROOM_CLIENT_CA {CLIENT_CA}\n"
        f"Define STRONGROOM_CRL {crl_path}\n"
    )
    plan.file(Want("/etc/apache2/conf-available/strongroom-defines.conf", defines.encode()), restarts=restart)
    _link(
        plan,
        "/etc/apache2/conf-enabled/strongroom-defines.conf",
        "../conf-available/strongroom-defines.conf",
        restart,
    )
    behind_balancer(plan, s)


def pushed_crl(plan: Plan, s: Settings, user: str) -> bytes:
    """The push's CRL file: the settings' `[tls] crl` on the first install only. Once a CRL is there it
    is the push's (newer than the settings' copy, or the receiver would have refused it): copying the
    settings' over it would roll revocations back until the next push. Its directory and file are the
    push account's (it writes there, nobody else may), 0755/0644 for Apache. Returns what Apache reads."""
    crl_push_user(plan, user)  # step 9 makes it too; the directory's owner must exist first
    plan.dir(CRL_PUSH_DIR, 0o755, user, user)
    target = plan.on_target(CRL_PUSH_FILE)
    if target.is_symlink():
        raise InstallError(f"{CRL_PUSH_FILE} is a symbolic link: refusing (remove it, check who made it)")
    current = plan.read(CRL_PUSH_FILE)
    if current is None:
        crl = Path(s.tls.crl).read_bytes()
        plan.file(Want(CRL_PUSH_FILE, crl, 0o644, user, user), restarts=("apache2",))
        return crl
    plan.out(
        f"crl: kept the pushed CRL {CRL_PUSH_FILE} ([tls] crl is copied there on the first install only)"
    )
    # Owner and mode as wanted, content as pushed: the receiver keeps the file's owner, so a root-owned
    # file would make every push fail.
    plan.file(Want(CRL_PUSH_FILE, current, 0o644, user, user), restarts=("apache2",))
    return current


BALANCER_CONF = "/etc/apache2/conf-available/strongroom-balancer.conf"
BALANCER_LINK = "/etc/apache2/conf-enabled/strongroom-balancer.conf"
BALANCER_DEFINE = (
    "# Written by deploy/strongroom-install from the settings' [balancer] (docs/apache.md, \"Behind a\n"
    "# balancer\"): every connection must start with the balancer's PROXY header, which names the employee.\n"
    "Define STRONGROOM_BEHIND_BALANCER\n"
)


def behind_balancer(plan: Plan, s: Settings) -> None:
    """The PROXY protocol on (a file of its own, as docs/apache.md has it) with [balancer], and off again
    when [balancer] is removed: without the Define a PROXY header is refused, so either way round a
    mismatch with the balancer fails loudly rather than trusting a header from anyone."""
    restart = ("apache2",)
    if s.balancer is None:
        for path in (BALANCER_LINK, BALANCER_CONF):
            if plan.absent(path):
                plan.restart.update(restart)
        return
    changed = plan.file(Want(BALANCER_CONF, BALANCER_DEFINE.encode()), restarts=restart)
    _link(plan, BALANCER_LINK, "../conf-available/strongroom-balancer.conf", restart)
    if changed:
        plan.note(
            "Apache now takes only connections that start with a PROXY header: the balancers must send "
            "send-proxy-v2 to this node (deploy/balancer/haproxy.cfg.in); switch both with the node out of "
            "the pool (docs/apache.md)"
        )


def _link(plan: Plan, path: str, target: str, restarts: tuple[str, ...] = ()) -> None:
    p = plan.on_target(path)
    if p.is_symlink() and os.readlink(p) == target:
        return

    def apply() -> None:
        if p.is_symlink() or p.exists():
            p.unlink()
        p.symlink_to(target)

    plan.change(f"{path} -> {target}", apply)
    plan.restart.update(restarts)


# ---- 5b. the health agent for the balancer ([balancer]) ------------------------------------------


def health_agent_unit(src: Path, balancer: Balancer) -> str:
    """deploy/strongroom-health-agent.service.in with this node's values: the address the agent listens
    on and the balancers, the only peers systemd lets it talk to (IPAddressAllow=)."""
    template = (src / "deploy/strongroom-health-agent.service.in").read_text()
    return fill_template(template, {"AGENT": balancer.agent, "BALANCERS": " ".join(balancer.addresses)})


def health_agent(plan: Plan, src: Path, s: Settings) -> None:
    """The agent HAProxy's agent-check asks (docs/runbook.md section 10): a unit rendered for this node
    with [balancer]; without it no agent, and one left from an earlier [balancer] is stopped and removed."""
    if s.balancer is not None:
        unit = health_agent_unit(src, s.balancer)
        plan.file(Want(AGENT_UNIT, unit.encode()), restarts=(AGENT,))
        return
    if plan.read(AGENT_UNIT) is None:
        return
    if plan.root == Path("/"):
        plan.change(
            f"{AGENT} stopped and disabled (no [balancer] in the settings)",
            partial(run, ["systemctl", "disable", "--now", f"{AGENT}.service"], what=f"disable {AGENT}"),
        )
    plan.absent(AGENT_UNIT)


# ---- 6. MariaDB -------------------------------------------------------------------------------------


def mariadb_config(plan: Plan) -> None:
    plan.dir("/var/lib/mysql-files", 0o700)
    plan.file(
        Want("/etc/mysql/mariadb.conf.d/90-strongroom.cnf", mariadb_conf.render().encode()),
        restarts=("mariadb",),
    )


def _sql(query: str, *, database: str = "") -> str:
    return run(
        ["mariadb", "--batch", "--skip-column-names", *([database] if database else []), "-e", query],
        what="mariadb",
    )


def _heads(src: Path) -> set[str]:
    revs, downs = set(), set()
    for f in (src / "webapp/db/migrations/versions").glob("*.py"):
        text = f.read_text()
        m = re.search(r'^revision\s*(?::\s*str)?\s*=\s*["\']([^"\']+)', text, re.M)
        if m:
            revs.add(m.group(1))
        downs.update(
            re.findall(r'["\']([^"\']+)["\']', (re.search(r"^down_revision.*$", text, re.M) or [""])[0])
        )
    return revs - downs


def database(plan: Plan, src: Path, passwords: dict[str, str]) -> None:
    """The database, its least-privileged users (DB_USERS), the schema at head, the per-table grants."""
    if subprocess.run(["systemctl", "is-active", "--quiet", "mariadb"], check=False).returncode != 0:
        if plan.check:
            plan.change("mariadb is not running: the database could not be checked")
            return
        run(["systemctl", "restart", "mariadb"], what="start mariadb")
        plan.restart.discard("mariadb")
    elif "mariadb" in plan.restart and not plan.check:
        run(["systemctl", "restart", "mariadb"], what="restart mariadb")
        plan.restart.discard("mariadb")
    # S608 below: DB and the user names are this module's constants, the passwords are hex generated
    # here; nothing in these statements comes from input.
    if not _sql(f"SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME='{DB}'").strip():  # noqa: S608
        plan.change(f"database {DB} created", partial(_sql, f"CREATE DATABASE {DB} CHARACTER SET utf8mb4"))
    users = set(_sql("SELECT User FROM mysql.user WHERE Host='localhost'").split())
    for user, password in passwords.items():
        # Passwords are hex (generated here), so quoting is safe; they go to the client on stdin.
        if user not in users:
            plan.change(
                f"database user {user} created",
                partial(_stdin_sql, f"CREATE USER '{user}'@'localhost' IDENTIFIED BY '{password}'"),
            )
        elif not _can_login(user, password):
            plan.change(
                f"database user {user}: password set from /etc/strongroom",
                partial(_stdin_sql, f"ALTER USER '{user}'@'localhost' IDENTIFIED BY '{password}'"),
            )
    query = f"SELECT version_num FROM {DB}.alembic_version"  # noqa: S608
    current = set(_sql(query).split()) if _has_schema() else set()
    if current != _heads(src):
        plan.change(
            "database schema migrated (flask --app webapp db upgrade, as root over the socket)", _migrate
        )
    grants_src = b"".join((src / f"webapp/db/{n}").read_bytes() for n in GRANTS)
    stamp = f"{STATE_DIR}/grants"
    live = _grants() if _has_schema() else ""
    wanted = hashlib.sha256(grants_src).hexdigest() + "\n" + live
    if plan.read(stamp) != wanted.encode() or (plan.check and not live):

        def apply() -> None:
            for name in GRANTS:
                run(["mariadb", DB], what=name, input=(src / f"webapp/db/{name}").read_text())
            plan.dir(STATE_DIR, 0o700)
            Path(stamp).write_text(hashlib.sha256(grants_src).hexdigest() + "\n" + _grants())

        plan.change(f"database grants (webapp/db/{', '.join(GRANTS)})", apply)


def _has_schema() -> bool:
    # DB is this module's constant, not input.
    q = f"SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA='{DB}' AND TABLE_NAME='alembic_version'"  # noqa: S608
    return bool(_sql(q).strip())


def _grants() -> str:
    # A user not made yet (--check on a server older than the user) is part of the state, not an error.
    users = set(_sql("SELECT User FROM mysql.user WHERE Host='localhost'").split())
    return "".join(
        sorted(
            _sql(f"SHOW GRANTS FOR '{u}'@'localhost'") if u in users else f"no user {u}\n" for u in DB_USERS
        )
    )


def _stdin_sql(statement: str) -> None:
    run(["mariadb"], what="mariadb", input=statement + ";\n")


def _can_login(user: str, password: str) -> bool:
    # The password goes in an option file on a private tmpfs path, not on a command line (ps).
    fd = os.open("/run/strongroom-install.cnf", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, f"[client]\nuser={user}\npassword={password}\n".encode())
    finally:
        os.close(fd)
    try:
        res = subprocess.run(
            ["mariadb", "--defaults-extra-file=/run/strongroom-install.cnf", "-e", "SELECT 1"],
            capture_output=True,
            check=False,
        )
        return res.returncode == 0
    finally:
        os.unlink("/run/strongroom-install.cnf")


def _migrate() -> None:
    env = {
        **os.environ,
        "STRONGROOM_DATABASE_URL": f"mysql+pymysql://root@localhost/{DB}?unix_socket={SOCKET}",
        "STRONGROOM_SECRET_KEY": secrets.token_urlsafe(48),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.pop("STRONGROOM_INSTANCE_PATH", None)
    run(
        [f"{OPT}/.venv/bin/flask", "--app", "webapp", "db", "upgrade"],
        what="flask db upgrade",
        env=env,
        cwd=OPT,
    )


# ---- 7. postfix ------------------------------------------------------------------------------------


def postfix(plan: Plan, src: Path, s: Settings) -> None:
    """main.cf, master.cf and virtual as `python -m ops.postfix render` makes them (the renderer that
    tests/ops/test_postfix.py runs in a real postfix): the alert mailer's SMTP listener on loopback,
    root's and the daemons' mail to the admins, and without a relay the admins' local mailboxes."""
    files = _postfix_files(plan, src, s)
    if files is None:
        return
    restart = ("postfix",)
    for name in POSTFIX_FILES:
        plan.file(Want(f"/etc/postfix/{name}", files[name]), restarts=restart)
    db = plan.on_target("/etc/postfix/virtual.db")
    table = plan.on_target("/etc/postfix/virtual")
    stale = not db.exists() or (table.exists() and db.stat().st_mtime < table.stat().st_mtime)
    if stale:
        postmap = partial(run, ["postmap", str(table)], what="postmap")
        plan.change("/etc/postfix/virtual.db (postmap)", postmap)
        plan.restart.update(restart)


def _postfix_files(plan: Plan, src: Path, s: Settings) -> dict[str, bytes] | None:
    # ops.postfix needs the virtualenv (it shares the mailer's address rules, which import the web
    # app): run it there, into a private directory, and compare what it wrote.
    python = plan.on_target(VENV_PYTHON)
    if not python.exists():
        if plan.check:
            plan.change("postfix configuration not checked: no virtualenv yet")
            return None
        raise InstallError(f"postfix: {VENV_PYTHON} is missing")
    with tempfile.TemporaryDirectory(prefix="strongroom-install-postfix.") as tmp:
        cmd = [str(python), "-B", "-m", "ops.postfix", "render", "--out", tmp, "--myhostname", s.hostname]
        for address in s.alert_to:
            cmd += ["--admin", address]
        if s.relay:
            cmd += ["--relayhost", s.relay]
        run(cmd, what="python -m ops.postfix render", cwd=str(src))
        return {name: (Path(tmp) / name).read_bytes() for name in POSTFIX_FILES}


# ---- 8. rsyslog --------------------------------------------------------------------------------------


def rsyslog(plan: Plan, s: Settings) -> None:
    d = "/etc/strongroom/rsyslog"
    restart = ("rsyslog",)
    plan.dir(d, 0o700)
    plan.dir("/var/log/strongroom", 0o700)
    lh = s.loghost
    plan.file(Want(f"{d}/ca.pem", Path(lh.ca_file).read_bytes(), 0o600), restarts=restart)
    plan.file(Want(f"{d}/vault.pem", Path(lh.cert_file).read_bytes(), 0o600), restarts=restart)
    plan.file(Want(f"{d}/vault.key", Path(lh.key_file).read_bytes(), 0o600), restarts=restart)
    conf = Sender(
        target=lh.address,
        port=lh.port,
        permitted_peer=lh.permitted_peer,
        ca_file=f"{d}/ca.pem",
        cert_file=f"{d}/vault.pem",
        key_file=f"{d}/vault.key",
        local_copy="/var/log/strongroom/forwarded.log",
    ).render()
    plan.file(Want("/etc/rsyslog.d/60-strongroom-forward.conf", conf.encode()), restarts=restart)


REMOTE_COPY_DIR = "/etc/strongroom/remote-copy"
REMOTE_COPY_KEY = f"{REMOTE_COPY_DIR}/ssh_ed25519"
LOGPULL_USER = "strongroom-logpull"  # the log host's read-only, chrooted SFTP account (docs/monitoring.md)


def syslog_hostname(plan: Plan) -> str:
    """The HOSTNAME this server's rsyslog puts in what it forwards (its host name up to the first dot:
    rsyslog drops the domain), so the log host's directory for it (/var/log/remote/HOSTNAME)."""
    name = (plan.read("/etc/hostname") or b"").decode().strip() or socket.gethostname()
    return name.split(".", 1)[0]


def remote_copy_toml(src: Path, s: Settings, hostname: str) -> str:
    lh = s.loghost
    dest = tomllib.loads((src / "ops/deploy/watch.toml").read_text())["remote_copy"]
    return (
        "# Written by deploy/strongroom-install from the settings' [loghost] (ops/deploy/remote-copy.toml\n"
        "# explains each key). The log host's admin must authorise this server's key for its account.\n"
        f'host = "{lh.address}"\n'
        f"port = {lh.ssh_port}\n"
        f'user = "{LOGPULL_USER}"\n'
        f'key_file = "{REMOTE_COPY_KEY}"\n'
        f'known_hosts = "{REMOTE_COPY_DIR}/known_hosts"\n'
        f'remote_path = "/{hostname}/forwarded.log"\n'
        f'dest = "{dest}"\n'
    )


def remote_copy(plan: Plan, src: Path, s: Settings) -> None:
    """The watchdog's remote comparison pulls back the log host's copy of what this server forwarded
    (strongroom-remote-copy.timer): its settings, its own SSH key (made once, never leaves the server)
    and the log host's pinned host key."""
    lh = s.loghost
    plan.dir(REMOTE_COPY_DIR, 0o700)
    if plan.read(REMOTE_COPY_KEY) is None:
        plan.change(
            f"{REMOTE_COPY_KEY} made (the remote copy's SSH key)",
            partial(
                run,
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"strongroom-remote-copy@{s.hostname}",
                 "-f", str(plan.on_target(REMOTE_COPY_KEY))],
                what="ssh-keygen",
            ),
        )  # fmt: skip
    # paramiko looks a host up as [host]:port when the port is not 22 (as ssh does).
    host = lh.address if lh.ssh_port == 22 else f"[{lh.address}]:{lh.ssh_port}"
    plan.file(Want(f"{REMOTE_COPY_DIR}/known_hosts", f"{host} {lh.ssh_host_key}\n".encode(), 0o644))
    toml = remote_copy_toml(src, s, syslog_hostname(plan))
    plan.file(Want("/etc/strongroom/remote-copy.toml", toml.encode(), 0o600))
    pub = (plan.read(f"{REMOTE_COPY_KEY}.pub") or b"").decode().strip()
    plan.note(
        f"the log host's admin authorises this key for {LOGPULL_USER} (docs/monitoring.md): "
        + (pub or f"{REMOTE_COPY_KEY}.pub, made by this install")
    )


# ---- 9. sshd and the admins ---------------------------------------------------------------------------


def sshd_config(s: Settings) -> str:
    """hardening.ssh's file, with the CA's CRL push blocks for [crl_push] (docs/ca.md); without it
    render() with the defaults, byte for byte the file every earlier run wrote."""
    return ssh_conf.render(ssh_conf.SshdSettings(crl_push=s.crl_push))


def ssh(plan: Plan, src: Path, s: Settings) -> None:
    restart = ("ssh",)
    plan.dir("/usr/local/lib/strongroom", 0o755)
    plan.dir("/etc/ssh/authorized_keys", 0o755)
    plan.file(
        Want(
            "/usr/local/lib/strongroom/ssh-session-hook",
            (src / "hardening/ssh/session_hook.py").read_bytes(),
            0o755,
        )
    )
    if s.crl_push is not None:
        # The account first, then the config whose Match blocks admit the CA's key for it.
        crl_push_user(plan, s.crl_push.user)
    plan.file(Want("/etc/ssh/sshd_config", sshd_config(s).encode()), restarts=restart, validate=sshd_accepts)
    if plan.ids("root", ADMIN_GROUP) is None:
        plan.change(
            f"group {ADMIN_GROUP} created",
            lambda: run(["groupadd", "--system", ADMIN_GROUP], what="groupadd"),
        )
    for a in s.admins:
        _admin(plan, a.login, a.password_hash)
        line = f'environment="KEYHOLDER={a.keyholder}" {a.ssh_key}\n'
        if plan.ids(a.login, a.login) is not None or not plan.check:
            plan.file(Want(f"/etc/ssh/authorized_keys/{a.login}", line.encode(), 0o644))
    former_admins(plan, s)
    plan.file(Want(SUDOERS, SUDOERS_RULES.encode(), 0o440), validate=sudoers_accepts)
    crl_push_sudoers(plan, s)


# Admins log in with their key only (sshd: PasswordAuthentication no) and become root with sudo and
# their own password (settings `password_hash`): a stolen key alone is not root. Never NOPASSWD.
# use_pty: a command run as root cannot push input into the admin's terminal after sudo exits.
# sudo logs every command to syslog (auth), which goes to the log host.
SUDOERS = "/etc/sudoers.d/strongroom-admins"
SUDOERS_RULES = f"""\
# Written by strongroom-install (deploy/server/steps.py, docs/deploy.md): edits here are reverted.
Defaults:%{ADMIN_GROUP} use_pty, passwd_tries=3, timestamp_timeout=5
%{ADMIN_GROUP} ALL=(ALL:ALL) ALL
"""


def sudoers_accepts(candidate: Path, *, name: str = SUDOERS) -> None:
    """A sudoers file with a syntax error makes sudo refuse everyone: `visudo -cf` checks it first."""
    res = subprocess.run(["visudo", "-cf", str(candidate)], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-5:])
        raise InstallError(f"visudo -c refuses the new {name} (the old one is kept):\n{tail}")


# The CRL receiver's graceful reload (docs/ca.md, "Several web nodes: pushing the CRL"): the one
# command its account may run as root, without a password (it has none). An installer-owned name, so a
# run without [crl_push] removes it again.
CRL_PUSH_SUDOERS = "/etc/sudoers.d/strongroom-crl-push"


def crl_push_sudoers_rules(user: str) -> str:
    return (
        "# Written by strongroom-install from the settings' [crl_push] (docs/ca.md); edits are reverted.\n"
        "# The CRL receiver reloads Apache gracefully and can run nothing else as root.\n"
        f"{user} ALL=(root) NOPASSWD: {CRL_PUSH_RELOAD}\n"
    )


def crl_push_sudoers(plan: Plan, s: Settings) -> None:
    if s.crl_push is None:
        plan.absent(CRL_PUSH_SUDOERS)
        return
    plan.file(
        Want(CRL_PUSH_SUDOERS, crl_push_sudoers_rules(s.crl_push.user).encode(), 0o440),
        validate=partial(sudoers_accepts, name=CRL_PUSH_SUDOERS),
    )


def crl_push_user(plan: Plan, user: str) -> None:
    """The account the CA host's push key logs in to, as docs/ca.md makes it: a system user with its
    own group (the Match block's AllowGroups), shell /bin/sh (sshd runs the forced command through it),
    a home of its own, and no password: '*', not the locked '!', because this sshd runs without PAM
    and refuses a locked account's key too. Its key file, /etc/ssh/authorized_keys/USER, is the
    operator's (the CA's public push key): the install keeps it and never writes it. An existing
    account is used as it is, unless it is an admin's."""
    if user in _members(plan, ADMIN_GROUP):
        raise InstallError(f"crl_push.user: {user} is in {ADMIN_GROUP}; the push needs an account of its own")
    what = f"user {user} created (the CA's CRL push, [crl_push])"
    if plan.ids(user, user) is not None or what in plan.changes:  # step 5 asks first (its CRL directory)
        return
    prefix = [] if plan.root == Path("/") else ["--prefix", str(plan.root)]
    home = f"/var/lib/{user}"
    useradd = ["useradd", *prefix, "--system", "--user-group", "--home-dir", home, "--shell", "/bin/sh"]

    def create() -> None:
        run([*useradd, "--password", "*", user], what="useradd")
        plan.dir(home, 0o750, user, user)

    plan.change(what, create)


def sshd_accepts(candidate: Path) -> None:
    """A config sshd refuses must never replace the running one: the next restart would leave the
    server without SSH. `sshd -t` reads the candidate (host keys, users, syntax) and exits non-zero."""
    res = subprocess.run(["sshd", "-t", "-f", str(candidate)], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        tail = "\n".join(res.stderr.strip().splitlines()[-5:])
        raise InstallError(f"sshd -t refuses the new sshd_config (the old one is kept):\n{tail}")


def _members(plan: Plan, group: str) -> list[str]:
    for line in (plan.read("/etc/group") or b"").decode().splitlines():
        parts = line.split(":")
        if len(parts) == 4 and parts[0] == group:
            return [m for m in parts[3].split(",") if m]
    return []


def former_admins(plan: Plan, s: Settings) -> None:
    """An admin removed from the settings loses SSH access: the key file goes (sshd reads keys only
    from /etc/ssh/authorized_keys/), the account leaves the admins' group (AllowGroups) and is locked
    and expired. The account and its home stay: what it left behind is evidence, not ours to delete."""
    wanted = {a.login for a in s.admins}
    # The CRL push account's key file is the operator's (the CA's push key), not a former admin's.
    if s.crl_push is not None:
        wanted.add(s.crl_push.user)
    keys_dir = plan.on_target("/etc/ssh/authorized_keys")
    key_files = {p.name for p in keys_dir.iterdir()} if keys_dir.is_dir() else set()
    members = set(_members(plan, ADMIN_GROUP))
    # Only accounts useradd made for people (uid >= 1000) are ever locked: a key file planted for
    # root or a daemon is removed, the system account itself is left alone.
    people = {
        p[0]
        for p in (line.split(":") for line in (plan.read("/etc/passwd") or b"").decode().splitlines())
        if len(p) > 2 and p[2].isdigit() and 1000 <= int(p[2]) < 65534
    }
    for login in sorted((key_files | members) - wanted):
        plan.change(
            f"former admin {login}: SSH key removed, account out of {ADMIN_GROUP}, locked and expired",
            partial(_retire, plan, login, login in key_files, login in members, login in people),
        )


def _retire(plan: Plan, login: str, key: bool, member: bool, account: bool) -> None:
    if key:
        plan.on_target(f"/etc/ssh/authorized_keys/{login}").unlink()
    # A name from /etc/group or a directory listing goes to usermod only when it is a plain login
    # (never an option-looking "-x"); anything else had only its key file to remove.
    if not _LOGIN.fullmatch(login):
        return
    if (member or account) and plan.root != Path("/"):
        # gpasswd and usermod change the running system's accounts, never a throwaway root's.
        raise InstallError(f"former admin {login}: accounts are changed only on the real root")
    if member:
        run(["gpasswd", "--delete", login, ADMIN_GROUP], what="gpasswd --delete")
    if account:
        run(["usermod", "--lock", "--expiredate", "1", login], what="usermod --lock")


def _set_password(login: str, password_hash: str) -> None:
    # chpasswd reads the hash on stdin: it never shows in the process list (ps) as usermod -p would.
    run(["chpasswd", "--encrypted"], what="chpasswd", input=f"{login}:{password_hash}\n")


def _admin(plan: Plan, login: str, password_hash: str) -> None:
    """A login account in the admins' group, shell /bin/sh (the hook execs bash: docs/hardening.md),
    with the admin's password hash: sshd takes only the key (PasswordAuthentication no), the password
    is sudo's. Not locked, so sshd admits the key without PAM."""
    passwd = plan.read("/etc/passwd") or b""
    entry = next(
        (line.split(":") for line in passwd.decode().splitlines() if line.split(":")[0] == login), None
    )
    if entry is None:

        def create() -> None:
            # '*' until chpasswd sets the hash: the account never has an empty password.
            useradd = ["useradd", "--create-home", "--shell", "/bin/sh", "--groups", ADMIN_GROUP]
            run([*useradd, "--password", "*", login], what="useradd")
            _set_password(login, password_hash)

        plan.change(f"admin account {login} created", create)
        return
    groups = (plan.read("/etc/group") or b"").decode().splitlines()
    members = next((g.split(":")[3].split(",") for g in groups if g.split(":")[0] == ADMIN_GROUP), [])
    if login not in members:
        plan.change(
            f"admin {login} added to {ADMIN_GROUP}",
            lambda: run(["usermod", "--append", "--groups", ADMIN_GROUP, login], what="usermod"),
        )
    if entry[6] != "/bin/sh":
        plan.change(
            f"admin {login}: shell /bin/sh",
            lambda: run(["usermod", "--shell", "/bin/sh", login], what="usermod"),
        )
    shadow = (plan.read("/etc/shadow") or b"").decode().splitlines()
    pw = next((line.split(":")[1] for line in shadow if line.split(":")[0] == login), "")
    if pw != password_hash:
        # The message never carries the hash: install output may be pasted into a ticket.
        plan.change(
            f"admin {login}: password (for sudo) as in the settings",
            lambda: _set_password(login, password_hash),
        )


# ---- 10. firewall, kernel, updates ----------------------------------------------------------------------


# Behind a balancer the firewall's per-address limit on 443 sees every employee as the balancer: it is
# lifted to the firewall's highest (hardening/firewall MAX_CONNECTION_LIMIT), and each employee is
# limited at the balancer instead (docs/apache.md); Apache's 384 workers stay the real bound.
BALANCER_CONNECTION_LIMIT = 4096


def network_toml(s: Settings, uids: list[str]) -> str:
    def lst(items: tuple[str, ...]) -> str:
        return "[" + ", ".join(f'"{i}"' for i in items) + "]"

    if s.balancer is None:
        employees, crm = s.employee_networks, s.crm_networks
        source = "[network]"
    else:
        # Only the balancers reach 443 (their PROXY header names the employee; anyone else who reached
        # the port could write a header naming anyone): settings refuse [network] employees/crm then.
        employees, crm = s.balancer.addresses, ()
        source = "[network] and [balancer]\n# (443 from the balancers only)"
    text = (
        f"# Written by deploy/strongroom-install from the settings' {source}\n"
        "# (hardening/firewall/config.py).\n"
        f"admins = {lst(s.admin_networks)}\n"
        f"employees = {lst(employees)}\n"
        f"crm = {lst(crm)}\n"
        f"local_only_uids = [{', '.join(uids)}]\n"
    )
    if s.balancer is not None:
        text += f"\n[connection_limits]\nemployees = {BALANCER_CONNECTION_LIMIT}\n"
    return text


def agent_rules(rules: str, balancer: Balancer) -> str:
    """The health agent's port, which the firewall's address file has no key for, added to its rendered
    table in the same `nft -f` transaction: new connections from the balancers only, to the agent's
    address; and its answers let out past the owner rule (the agent runs as strongroom-web, whose
    sockets may otherwise send on lo only), as replies of those connections only."""
    for anchor in ("table inet strongroom {", "\tchain input {", "\tchain output {"):
        if anchor not in rules:  # the renderer changed shape: never load rules that miss the agent's
            raise InstallError(f"firewall: the rendered rules lack '{anchor.strip()}' (hardening/firewall)")
    ip = "ip6" if ":" in balancer.listen else "ip"
    peers = "{ " + ", ".join(balancer.addresses) + " }"
    port = balancer.agent_port
    return rules + (
        "# Added by deploy/strongroom-install for the settings' [balancer]: the health agent's port.\n"
        f"add rule inet strongroom input {ip} saddr {peers} {ip} daddr {balancer.listen} tcp dport {port}"
        " ct state new accept\n"
        f"insert rule inet strongroom output {ip} saddr {balancer.listen} {ip} daddr {peers} tcp sport {port}"
        " ct state established accept\n"
    )


def _firewall_renderer(plan: Plan) -> Callable[[str], str] | None:
    """The firewall's own parser and renderer (hardening.firewall), or None if they cannot be loaded.

    The address file's model needs pydantic, which this installer's system python3 lacks until the venv
    step has installed it: the same python3 built that venv, so its packages fit this interpreter. Only
    this step needs them; the settings check before anything is touched uses the standard-library rules
    of hardening/firewall/addresses.py."""
    try:
        from hardening.firewall import parse_config, render_nft
    except ImportError:
        for packages in sorted(plan.on_target(f"{OPT}/.venv/lib").glob("python3*/site-packages")):
            site.addsitedir(str(packages))
        try:
            from hardening.firewall import parse_config, render_nft
        except ImportError:
            return None
    return lambda text: render_nft(parse_config(text))


def firewall(plan: Plan, src: Path, s: Settings) -> None:
    # The web app and the mailer (both strongroom-web) and keyd talk to this host only. Their units'
    # IPAddressDeny= is enforced on a cgroup-v2 host only; the firewall's owner rule holds on any
    # (docs/hardening.md). Numeric uids, read after install.sh made the users: nft would resolve a name
    # at load time, and a missing one would fail the whole ruleset.
    passwd = (plan.read("/etc/passwd") or b"").decode()
    uid_of = {f[0]: f[2] for f in (line.split(":") for line in passwd.splitlines()) if len(f) > 2}
    uids = []
    for user in ("strongroom-web", "strongroom-keyd"):
        uid = uid_of.get(user, "")
        if not uid.isdigit():
            if plan.check:
                continue  # a bare server's check: the user's creation is reported as drift already
            raise InstallError(f"firewall: user {user} does not exist (deploy/install.sh creates it)")
        uids.append(uid)
    text = network_toml(s, uids)
    render = _firewall_renderer(plan)
    if render is None:
        if plan.check:
            return  # a bare server's check: the missing virtualenv is reported as drift already
        raise InstallError("firewall: the virtualenv the venv step builds is missing or unusable")
    try:
        rules = render(text)
    except ValueError as exc:  # FirewallConfigError, e.g. a service user with uid 0: fail closed
        raise InstallError(f"firewall: {exc}") from None
    if s.balancer is not None:
        rules = agent_rules(rules, s.balancer)
    rules = remote_db.firewall_rules(rules, s.database, uid_of.get("strongroom-web"))
    restart = ("strongroom-firewall",)
    plan.file(Want("/etc/strongroom/network.toml", text.encode()))
    plan.dir("/etc/strongroom/firewall", 0o755)
    plan.file(Want("/etc/strongroom/firewall/strongroom.nft", rules.encode()), restarts=restart)
    unit = (src / "deploy/server/units/strongroom-firewall.service").read_bytes()
    plan.file(Want("/etc/systemd/system/strongroom-firewall.service", unit), restarts=restart)


def kernel(plan: Plan, src: Path) -> None:
    path = "/etc/sysctl.d/99-strongroom-hardening.conf"
    changed = plan.file(Want(path, (src / "hardening/kernel/99-strongroom-hardening.conf").read_bytes()))
    if changed and not plan.check and plan.root == Path("/"):
        res = subprocess.run(["sysctl", "-q", "-p", path], capture_output=True, text=True, check=False)
        if res.returncode != 0:
            # In a container /proc/sys is mostly read-only: the file applies at the host's boot.
            warn(f"sysctl -p {path}: some keys could not be set here (container?); they apply at boot")


def apt_updates(plan: Plan) -> None:
    for f in updates.FILES:
        plan.file(Want(f"/etc/apt/apt.conf.d/{f.name}", f.read_bytes()))


# ---- 11. backup, AIDE, services ---------------------------------------------------------------------------


def backup(plan: Plan, src: Path, s: Settings) -> None:
    for unit in sorted((src / "backup/deploy").glob("strongroom-backup*.*")):
        if unit.suffix in (".service", ".timer"):
            plan.file(Want(f"/etc/systemd/system/{unit.name}", unit.read_bytes()))
    if s.backup_env:
        plan.file(Want("/etc/strongroom/backup.env", Path(s.backup_env).read_bytes(), 0o600))


def aide(plan: Plan) -> None:
    plan.file(Want("/etc/strongroom/aide.conf", aide_conf.render().encode()))
    db = "/var/lib/aide/aide.db.gz"
    if plan.read(db) is not None:
        # Made once; after that only an admin's review updates it (docs/hardening.md): a run that
        # changed the server is reported by the next AIDE check like any other change.
        if plan.changes and not plan.check:
            plan.note(
                "this run changed watched files: review `aide --check --config /etc/strongroom/aide.conf`, "
                "then approve it (docs/runbook.md, Approving changes in AIDE)"
            )
        return

    def apply() -> None:
        plan.dir("/var/lib/aide", 0o700)
        run(["aide", "--init", "--config", "/etc/strongroom/aide.conf"], what="aide --init")
        os.replace("/var/lib/aide/aide.db.new.gz", db)

    plan.change(f"AIDE's first database {db}", apply)


def _systemctl(*args: str) -> int:
    return subprocess.run(["systemctl", *args], capture_output=True, check=False).returncode


def services(plan: Plan, s: Settings) -> None:
    if plan.changes and not plan.check:
        run(["systemctl", "daemon-reload"], what="systemctl daemon-reload")
    units: list[str] = [*SERVICES, *TIMERS]
    if s.balancer is not None:
        units.insert(units.index("strongroom-web") + 1, AGENT)
    if s.backup_env:
        units.append(BACKUP_TIMER)
    failed = []
    for unit in units:
        # One unit that cannot start must not keep the others down: try them all, then report.
        try:
            if _systemctl("is-enabled", "--quiet", unit) != 0:
                plan.change(
                    f"{unit} enabled",
                    partial(run, ["systemctl", "enable", "--quiet", unit], what=f"enable {unit}"),
                )
            if unit == KEYD:
                _keyd(plan)
                continue
            name = unit.removesuffix(".service")
            if name in plan.restart and _systemctl("is-active", "--quiet", unit) == 0:
                _restart(plan, unit)
            elif _systemctl("is-active", "--quiet", unit) != 0:
                plan.change(
                    f"{unit} started", partial(run, ["systemctl", "start", unit], what=f"start {unit}")
                )
        except InstallError:
            failed.append(unit)
    if failed:
        raise InstallError(f"these units did not start (systemctl status UNIT): {' '.join(failed)}")


def _keyd(plan: Plan) -> None:
    """keyd is the one service the installer does not drive to running: before the key ceremony it has
    no state (its unit is skipped by a condition: expected, not drift), and restarting it seals it,
    which takes the service down until the key holders drop the key again: that is theirs to choose."""
    active = _systemctl("is-active", "--quiet", KEYD) == 0
    if not plan.on_target(KEYD_STATE).exists():
        if _systemctl("is-failed", "--quiet", KEYD) == 0:
            # A start tried before the state existed (by hand, or an older unit without the condition).
            plan.change(
                f"{KEYD}: failed state cleared",
                partial(run, ["systemctl", "reset-failed", KEYD], what="reset-failed"),
            )
        plan.note(
            f"{KEYD} is enabled and waits for its key state: run the key ceremony (docs/keyd.md, First boot:"
            f" python -m keyd init), then `systemctl start {KEYD}` and drop the key (docs/runbook.md 1.3)"
        )
    elif not active:
        plan.change(
            f"{KEYD} started (sealed: drop the key, docs/runbook.md 1.3)",
            partial(run, ["systemctl", "start", KEYD], what=f"start {KEYD}"),
        )
    elif KEYD in plan.restart:
        plan.note(
            f"{KEYD} runs older code or settings; `systemctl restart {KEYD}` when the key holders can drop"
            " the key again (it comes back sealed)"
        )


def _restart(plan: Plan, unit: str) -> None:
    # Counted with the configuration change that caused it: not a change of its own.
    if not plan.check:
        verb = "reload-or-restart" if unit in ("ssh", "postfix", "rsyslog") else "restart"
        run(["systemctl", verb, unit], what=f"restart {unit}")
        plan.out(f"restarted: {unit}")
