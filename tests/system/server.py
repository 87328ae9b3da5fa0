"""What a new admin brings to the install, made by the test: settings file, CA, SSH keys; and the install.

The settings start from the example that ships with the install command
(deploy/server/server.toml.example); every value a human must supply is replaced by the test's own:
the namespaces' addresses (network.py), a server certificate and CRL from a test CA made with the
project's own `python -m ca`, and two admins, alice and bob, with local mailboxes and fresh SSH keys.
Sections of the example the test knows nothing about are kept as they are; `backup` is dropped
(there is no off-site server here, so the backup timer stays off).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.system.container import Container
from tests.system.network import Network

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "server" / "server.toml.example"
INSTALL = "deploy/strongroom-install"
SRC = "/srv/strongroom-src"  # the checkout, read-only inside the container
WHEELS = "/srv/strongroom-wheels"  # the wheelhouse, read-only inside the container
SETUP = "/root/strongroom-setup"  # the settings file and the files it names, root's only
FQDN = "vault.example.org"
LOGHOST_NAME = "loghost.example.org"
ADMINS = {"alice": "Alice", "bob": "Bob"}  # login -> KEYHOLDER name


@dataclass(frozen=True)
class Admin:
    login: str
    keyholder: str
    mail: str
    private_key: Path  # on the host, for ssh from the admins network
    public_key: str
    password: str = ""  # for sudo on the server (settings `password_hash`); SSH stays key-only
    password_hash: str = ""


@dataclass
class TestCa:
    """A CA made by `python -m ca` in a directory of the test (no web app: --no-bind)."""

    directory: Path
    passphrase_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        secrets_dir = self.directory / "secrets"
        secrets_dir.mkdir(mode=0o700, exist_ok=True)
        self.passphrase_file = secrets_dir / "issuing.pass"
        root_pass = secrets_dir / "root.pass"
        for path in (self.passphrase_file, root_pass):
            path.write_text(secrets.token_urlsafe(24) + "\n")
            path.chmod(0o600)
        self.ca("--root-passphrase-file", str(root_pass), "init", "--no-bind")

    @property
    def ca_dir(self) -> Path:
        return self.directory / "ca"

    def ca(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "ca", "--ca-dir", str(self.ca_dir), "--passphrase-file",
             str(self.passphrase_file), *args],
            cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise AssertionError(
                f"python -m ca {' '.join(args)} failed ({result.returncode}): {result.stderr}"
            )
        return result

    def server_cert(self, host: str, *addresses: str) -> tuple[Path, Path]:
        """(certificate chain, key) of a serverAuth certificate for `host` and `addresses`."""
        out = self.directory / "tls"
        out.mkdir(mode=0o700, exist_ok=True)
        self.ca("server", host, *addresses, "--out-dir", str(out))
        return out / f"{host}.crt.pem", out / f"{host}.key.pem"

    @property
    def chain(self) -> Path:
        return self.ca_dir / "publish" / "chain.pem"

    @property
    def crl(self) -> Path:
        return self.ca_dir / "publish" / "crl.pem"


def export_checkout(dest: Path) -> Path:
    """What a release of this checkout holds: its files that git tracks, or would (untracked but not
    ignored), copied into `dest`. The install runs from this copy, as an admin's would from a clone:
    never from the developer's venvs, caches and test artifacts, and never from a tree still changing.
    STRONGROOM_TEST_SOURCE=HEAD exports the last commit instead.
    """
    dest.mkdir(mode=0o755, parents=True, exist_ok=True)
    if os.environ.get("STRONGROOM_TEST_SOURCE") == "HEAD":
        # The last commit only (several people editing one work tree: install what was committed).
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD"], capture_output=True,
                                 check=True, timeout=120).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, timeout=120)
        return dest
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if not source.is_file() or source.is_symlink():
            continue  # deleted in the work tree but still in the index, or a link: not shipped
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return dest


def make_admins(directory: Path) -> dict[str, Admin]:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    admins = {}
    for login, keyholder in ADMINS.items():
        key = directory / f"{login}_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{login}@test", "-f", str(key)],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        public = key.with_suffix(".pub").read_text().strip()
        # The hash is made on the admin's own machine (here: the host), as docs/deploy.md says.
        password = secrets.token_urlsafe(18)
        hashed = subprocess.run(
            ["openssl", "passwd", "-6", "-stdin"],
            input=password, check=True, capture_output=True, text=True, timeout=30,
        ).stdout.strip()  # fmt: skip
        admins[login] = Admin(login, keyholder, f"{login}@{FQDN}", key, public, password, hashed)
    return admins


def make_loghost_ssh_key(directory: Path) -> Path:
    """The log host's SSH host key (private half, on the host): made before the install, because the
    server pins its public half (settings `loghost.ssh_host_key`); tests/system/loghost.py serves it."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = directory / "loghost_ssh_host_ed25519"
    if not key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key)],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
    return key


def settings_values(
    net: Network, admins: dict[str, Admin], loghost_ssh_host_key: str | None = None
) -> dict[str, Any]:
    """The values a human supplies, with the test's addresses (paths are inside the container)."""
    s = net.subnets
    values: dict[str, Any] = {
        "hostname": FQDN,
        "admins": [
            {
                "login": a.login,
                "mail": a.mail,
                "ssh_key": a.public_key,
                "keyholder": a.keyholder,
                "password_hash": a.password_hash,
            }
            for a in admins.values()
        ],
        "mail": {"relay": "", "from": f"strongroom@{FQDN}"},
        "loghost": {
            "address": s["loghost"].client_v4,
            "port": 6514,
            "permitted_peer": LOGHOST_NAME,
            "ca_file": f"{SETUP}/chain.pem",
            # The server's own certificate is its client certificate toward the log host.
            "cert_file": f"{SETUP}/{FQDN}.crt.pem",
            "key_file": f"{SETUP}/{FQDN}.key.pem",
        },
        "network": {
            "admins": [s["admins"].v4, s["admins"].v6],
            "employees": [s["employees"].v4, s["employees"].v6],
            "crm": [s["crm"].client_v4, s["crm"].client_v6],
        },
        "tls": {
            "server_cert": f"{SETUP}/{FQDN}.crt.pem",
            "server_key": f"{SETUP}/{FQDN}.key.pem",
            "ca_chain": f"{SETUP}/chain.pem",
            "crl": f"{SETUP}/crl.pem",
        },
    }
    if loghost_ssh_host_key is not None:
        # The log host's SSH host key ("ssh-ed25519 AAAA..."): the remote copy's pinned known_hosts.
        values["loghost"]["ssh_host_key"] = loghost_ssh_host_key
    return values


def merge_settings(example: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    merged = {k: v for k, v in example.items() if k != "backup"}
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def to_toml(data: dict[str, Any]) -> str:
    """TOML for the settings' shapes: strings, integers, booleans, lists of them, tables, arrays of tables."""
    lines: list[str] = []
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    arrays = {
        k: v for k, v in data.items() if isinstance(v, list) and v and all(isinstance(i, dict) for i in v)
    }
    for key, value in data.items():
        if key not in tables and key not in arrays:
            lines.append(f"{key} = {_value(value)}")
    for key, rows in arrays.items():
        for row in rows:
            lines += ["", f"[[{key}]]", *(f"{k} = {_value(v)}" for k, v in row.items())]
    for key, table in tables.items():
        lines += ["", f"[{key}]", *(f"{k} = {_value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {type(value).__name__}")


def render_settings(
    net: Network, admins: dict[str, Admin], example: Path = EXAMPLE, loghost_ssh_host_key: str | None = None
) -> str:
    template: dict[str, Any] = tomllib.loads(example.read_text(encoding="utf-8")) if example.exists() else {}
    if "ssh_host_key" not in template.get("loghost", {}):
        # The settings are strict: an install command that does not know the key yet would refuse it.
        loghost_ssh_host_key = None
    text = to_toml(merge_settings(template, settings_values(net, admins, loghost_ssh_host_key)))
    tomllib.loads(text)  # what we write must at least be TOML
    return text


@dataclass
class Server:
    """The booted container after (or before) the install: what scenario tests work with."""

    container: Container
    network: Network
    ca: TestCa
    admins: dict[str, Admin]
    hostname: str = FQDN
    settings_path: str = f"{SETUP}/server.toml"
    installs: list[subprocess.CompletedProcess[str]] = field(default_factory=list)
    install_error: str = ""  # the first install's failure: every later test reports it, none retries
    loghost_ssh_key: Path | None = None  # the log host's SSH host key, pinned by the settings

    def address(self, role: str, family: int = 4) -> str:
        """The server's address on the network `role` (employees, admins, untrusted, loghost, crm)."""
        subnet = self.network.subnets[role]
        return subnet.server_v4 if family == 4 else subnet.server_v6

    def put_setup_files(self) -> None:
        """Write the settings file and the files it names into the container (root, 0600)."""
        cert, key = self.ca.server_cert(
            FQDN, *(ip for s in self.network.subnets.values() for ip in (s.server_v4, s.server_v6))
        )
        c = self.container
        c.write_file(f"{SETUP}/{FQDN}.crt.pem", cert.read_bytes(), 0o644)
        c.write_file(f"{SETUP}/{FQDN}.key.pem", key.read_bytes(), 0o600)
        c.write_file(f"{SETUP}/chain.pem", self.ca.chain.read_bytes(), 0o644)
        c.write_file(f"{SETUP}/crl.pem", self.ca.crl.read_bytes(), 0o644)
        if self.loghost_ssh_key is None:
            self.loghost_ssh_key = make_loghost_ssh_key(self.ca.directory.parent / "loghost-ssh")
        host_key = " ".join(self.loghost_ssh_key.with_suffix(".pub").read_text().split()[:2])
        c.write_file(
            self.settings_path,
            render_settings(self.network, self.admins, loghost_ssh_host_key=host_key),
            0o600,
        )

    def install(
        self, *args: str, check: bool = True, timeout: float = 1200
    ) -> subprocess.CompletedProcess[str]:
        """Run the install command inside, as an admin would from the checkout, with the wheelhouse."""
        argv = [f"{SRC}/{INSTALL}", "--settings", self.settings_path, "--wheelhouse", WHEELS, *args]
        result = self.container.run(argv, check=check, timeout=timeout)
        self.installs.append(result)
        return result

    @staticmethod
    def changes(result: subprocess.CompletedProcess[str]) -> list[str]:
        """The `changed: ...` lines of an install run."""
        return [line for line in result.stdout.splitlines() if line.startswith("changed:")]
