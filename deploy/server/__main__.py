"""`python3 -m deploy.server --settings FILE [--wheelhouse DIR] [--check]` (run by deploy/strongroom-install).

Exit status: 0 done / in step, 1 drift found (--check), 2 invalid settings (nothing touched),
3 a step failed (the message names it; a second run continues from where it stopped).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from deploy.server import remote_db, steps
from deploy.server.plan import InstallError, Plan
from deploy.server.settings import Settings, SettingsError, load

SRC = Path(__file__).resolve().parents[2]
MAX_INPUT_FILE = 1024 * 1024


def preflight(s: Settings) -> list[str]:
    """The files the settings name must be there and plain, before anything is touched."""
    files = {
        "tls.server_cert": s.tls.server_cert,
        "tls.server_key": s.tls.server_key,
        "tls.ca_chain": s.tls.ca_chain,
        "tls.crl": s.tls.crl,
        "loghost.ca_file": s.loghost.ca_file,
        "loghost.cert_file": s.loghost.cert_file,
        "loghost.key_file": s.loghost.key_file,
        "backup.env_file": s.backup_env,
    }
    problems = []
    for key, path in files.items():
        if not path:
            continue
        p = Path(path)
        if p.is_symlink() or not p.is_file():
            problems.append(f"{key}: {path} is not a regular file")
        elif p.stat().st_size > MAX_INPUT_FILE:
            problems.append(f"{key}: {path} is larger than {MAX_INPUT_FILE} bytes")
        elif not os.access(p, os.R_OK):
            problems.append(f"{key}: {path} is not readable")
    problems += listen_address(s)
    problems += remote_db.preflight(s.database)
    if problems:
        return problems
    if shutil.which("openssl") is None:
        return ["openssl is missing: it checks that each key belongs to its certificate"]
    problems += key_pair("tls.server_cert", s.tls.server_cert, "tls.server_key", s.tls.server_key)
    problems += key_pair("loghost.cert_file", s.loghost.cert_file, "loghost.key_file", s.loghost.key_file)
    if not problems and "does match" not in _openssl(
        "x509", "-in", s.tls.server_cert, "-noout", "-checkhost", s.hostname
    ):
        problems.append(f"tls.server_cert: {s.tls.server_cert} does not name {s.hostname} (hostname)")
    return problems


def listen_address(s: Settings) -> list[str]:
    """[balancer] listen must be an address of this host (the settings can only check that it is an
    IP): the health agent would fail to bind it at every start, and the firewall's rule for it would
    admit nothing. A bind to port 0 answers without listening."""
    if s.balancer is None:
        return []
    family = socket.AF_INET6 if ":" in s.balancer.listen else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((s.balancer.listen, 0))
    except OSError:
        return [f"balancer.listen: {s.balancer.listen} is not an address of this host (ip -brief address)"]
    return []


def key_pair(cert_name: str, cert: str, key_name: str, key: str) -> list[str]:
    """A key that is not its certificate's would only show as Apache (or rsyslog) failing to start,
    after the old files were replaced: compare the public keys first. openssl's own messages are
    dropped: they could quote the key file."""
    cert_pub = _openssl("x509", "-in", cert, "-noout", "-pubkey")
    # -passin pass: and no stdin: an encrypted key fails here instead of prompting (the services
    # read their keys unattended).
    key_pub = _openssl("pkey", "-in", key, "-pubout", "-passin", "pass:")
    if not cert_pub:
        return [f"{cert_name}: {cert} is not a PEM certificate"]
    if not key_pub:
        return [f"{key_name}: {key} is not an unencrypted PEM private key"]
    if cert_pub != key_pub:
        return [f"{key_name}: {key} is not the key of {cert_name} ({cert})"]
    return []


def _openssl(*args: str) -> str:
    res = subprocess.run(
        ["openssl", *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    return res.stdout if res.returncode == 0 else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="strongroom-install", description=__doc__.split("\n")[0])
    ap.add_argument("--settings", required=True, type=Path)
    ap.add_argument("--wheelhouse", type=Path, help="install the virtualenv offline from these wheels")
    ap.add_argument("--check", action="store_true", help="change nothing; report drift, exit 1 if any")
    args = ap.parse_args(argv)
    try:
        settings = load(args.settings)
        problems = preflight(settings)
        if problems:
            raise SettingsError(problems)
    except SettingsError as exc:
        for line in exc.problems:
            print(f"strongroom-install: settings: {line}", file=sys.stderr)
        return 2
    if args.wheelhouse is not None and not args.wheelhouse.is_dir():
        print(f"strongroom-install: --wheelhouse {args.wheelhouse} is not a directory", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("strongroom-install: run as root", file=sys.stderr)
        return 2

    plan = Plan(root=Path("/"), check=args.check, out=lambda line: print(line, flush=True))
    try:
        run_all(plan, settings, args.wheelhouse)
    except InstallError as exc:
        print(f"strongroom-install: failed: {exc}", file=sys.stderr)
        return 3
    if args.check:
        print(
            f"strongroom-install: {'drift' if plan.changes else 'in step'}, {len(plan.changes)} differences"
        )
        return 1 if plan.changes else 0
    print(f"strongroom-install: done, {len(plan.changes)} changes")
    return 0


def run_all(plan: Plan, s: Settings, wheelhouse: Path | None) -> None:
    steps.packages(plan, SRC)
    steps.code(plan, SRC)
    steps.venv(plan, SRC, wheelhouse)
    steps.install_sh(plan, SRC)
    passwords = steps.webapp_env(plan, SRC, s)
    steps.etc_strongroom(plan, SRC, s)
    steps.apache(plan, s)
    steps.health_agent(plan, SRC, s)
    steps.mariadb_config(plan)
    if s.database is None:
        steps.database(plan, SRC, passwords)
    # [database]: the units' drop-ins and the web app's AppArmor switch (removed without it), and the
    # database admin's part as a next: line: the users, the schema and the grants are made there.
    remote_db.step(plan, s.database)
    steps.postfix(plan, SRC, s)
    steps.rsyslog(plan, s)
    steps.remote_copy(plan, SRC, s)
    steps.ssh(plan, SRC, s)
    steps.firewall(plan, SRC, s)
    steps.kernel(plan, SRC)
    steps.apt_updates(plan)
    steps.backup(plan, SRC, s)
    steps.services(plan, s)
    # Last: AIDE's first database must hold what the install itself did (enabled units included).
    steps.aide(plan)


if __name__ == "__main__":
    sys.exit(main())
