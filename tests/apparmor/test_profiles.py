"""The AppArmor profiles compile, a broken one is caught, and the compiled policy denies what each
process must never reach: the web app cannot read keyd's state, the drop file or the CA; keyd cannot
read the web app's files or use the network; Apache cannot read /root, the CA (but its two published
files) or keyd's files. The kernel here has no AppArmor, so nothing is enforced: the questions are
asked of the rules the parser compiles (tests/apparmor/policy.py); apparmor/README.md says how to
check a real host.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.apparmor.policy import (
    FileRule,
    compiled_file_rules,
    compiled_network,
    decide,
    preprocessed,
    run_parser,
    statements,
)
from tests.support import need_binary

ROOT = Path(__file__).resolve().parents[2]
APPARMOR = ROOT / "apparmor"
DEPLOY = ROOT / "deploy"
PROFILES = (
    "strongroom-keyd",
    "strongroom-web",
    "strongroom-mail",
    "strongroom-apache2",
    "strongroom-health-agent",
)


@pytest.fixture(scope="module")
def parser() -> str:
    return need_binary("apparmor_parser")


@pytest.fixture(scope="module")
def rules(parser: str) -> dict[str, list[FileRule]]:
    return {name: compiled_file_rules(parser, APPARMOR / name) for name in PROFILES}


def test_the_profile_files_are_the_ones_installed() -> None:
    on_disk = {p.name for p in APPARMOR.iterdir() if p.name.startswith("strongroom-")}
    assert on_disk == set(PROFILES)
    # install.sh copies exactly this list.
    assert f"profiles=({' '.join(PROFILES)})" in (DEPLOY / "install.sh").read_text()


@pytest.mark.parametrize("name", PROFILES)
def test_profile_compiles(parser: str, name: str) -> None:
    res = run_parser(parser, APPARMOR / name)
    assert res.returncode == 0, res.stderr
    names = run_parser(parser, APPARMOR / name, "-N")
    # One profile per file, named like the file (the units' AppArmorProfile= use these names).
    assert names.stdout.split() == [name]


BREAKAGES: list[tuple[str, Callable[[str], str]]] = [
    ("missing closing brace", lambda t: t.rstrip().removesuffix("}")),
    ("rule without its comma", lambda t: t.replace("/etc/passwd r,", "/etc/passwd r", 1)),
    ("unknown permission", lambda t: t.replace("/etc/passwd r,", "/etc/passwd rq,", 1)),
    ("unknown network family", lambda t: t.replace("network unix stream,", "network unixx stream,", 1)),
    ("unknown capability", lambda t: t.replace("deny ptrace,", "capability sys_everything,", 1)),
    ("relative path", lambda t: t.replace("/etc/passwd r,", "etc/passwd r,", 1)),
    ("missing include", lambda t: t.replace("<abstractions/base>", "<abstractions/no-such-file>", 1)),
    ("unbalanced braces in a glob", lambda t: t.replace("/etc/passwd r,", "/etc/{passwd r,", 1)),
]


@pytest.mark.parametrize(("why", "breaking"), BREAKAGES, ids=[b[0] for b in BREAKAGES])
@pytest.mark.parametrize("name", ["strongroom-keyd", "strongroom-web"])
def test_a_broken_profile_is_caught(
    parser: str, tmp_path: Path, name: str, why: str, breaking: Callable[[str], str]
) -> None:
    text = (APPARMOR / name).read_text()
    broken = breaking(text)
    assert broken != text, f"the breakage '{why}' did not apply"
    (tmp_path / name).write_text(broken)
    res = run_parser(parser, tmp_path / name)
    assert res.returncode != 0, f"apparmor_parser accepted a profile with {why}"


# (profile, path, permissions, allowed). Paths are production paths (docs/deploy.md).
KEYD_STATE = "/var/lib/strongroom-keyd/state.json"
CA_KEYS = [
    "/var/lib/strongroom-ca/issuing/issuing-key.pem",
    "/var/lib/strongroom-ca/root/root-key.pem",
    "/var/lib/strongroom-ca/index.json",
    "/var/lib/strongroom-ca/config.toml",
    "/var/lib/strongroom-ca/ops.log",
    "/var/lib/strongroom-ca/certs/0A1B.pem",
    "/var/lib/strongroom-ca/new-dir/some-key.pem",
]
CASES: list[tuple[str, str, str, bool]] = [
    # The web app: no keyd state, drop file, keyd config or CA; its own things work.
    ("strongroom-web", KEYD_STATE, "r", False),
    ("strongroom-web", "/var/lib/strongroom-keyd/budgets.json", "w", False),
    ("strongroom-web", "/var/lib/strongroom-keyd/events.jsonl", "r", False),
    ("strongroom-web", "/dev/shm/ekey", "r", False),
    ("strongroom-web", "/dev/shm/ekey-tmp", "w", False),
    ("strongroom-web", "/dev/shm/anything", "w", False),
    ("strongroom-web", "/etc/strongroom/keyd.toml", "r", False),
    *[("strongroom-web", p, "r", False) for p in CA_KEYS],
    ("strongroom-web", "/var/lib/strongroom-ca/publish/chain.pem", "r", False),
    ("strongroom-web", "/etc/apache2/strongroom/server.key.pem", "r", False),
    ("strongroom-web", "/root/.ssh/id_ed25519", "r", False),
    ("strongroom-web", "/opt/strongroom/webapp/app.py", "w", False),
    ("strongroom-web", "/opt/strongroom/webapp/app.py", "r", True),
    ("strongroom-web", "/opt/strongroom/.venv/lib/python3.11/site-packages/flask/app.py", "r", True),
    ("strongroom-web", "/var/lib/strongroom-web/strongroom.cfg", "rw", True),
    ("strongroom-web", "/run/strongroom-web/gunicorn.sock", "rw", True),
    ("strongroom-web", "/run/strongroom-keyd/keyd.sock", "rw", True),
    ("strongroom-web", "/run/mysqld/mysqld.sock", "rw", True),
    # The mailer: like the web app, and not even keyd's socket.
    ("strongroom-mail", KEYD_STATE, "r", False),
    ("strongroom-mail", "/run/strongroom-keyd/keyd.sock", "w", False),
    ("strongroom-mail", "/dev/shm/ekey", "r", False),
    *[("strongroom-mail", p, "r", False) for p in CA_KEYS],
    ("strongroom-mail", "/run/strongroom-web/gunicorn.sock", "w", False),
    ("strongroom-mail", "/run/mysqld/mysqld.sock", "rw", True),
    # keyd: nothing of the web app's (settings, state, socket, code), no CA; its own things work.
    ("strongroom-keyd", "/etc/strongroom/webapp.env", "r", False),
    ("strongroom-keyd", "/var/lib/strongroom-web/strongroom.cfg", "r", False),
    ("strongroom-keyd", "/run/strongroom-web/gunicorn.sock", "w", False),
    ("strongroom-keyd", "/opt/strongroom/webapp/app.py", "r", False),
    ("strongroom-keyd", "/opt/strongroom/webapp/templates/base.html", "r", False),
    *[("strongroom-keyd", p, "r", False) for p in CA_KEYS],
    ("strongroom-keyd", "/etc/apache2/strongroom/server.key.pem", "r", False),
    ("strongroom-keyd", "/root/.bash_history", "r", False),
    ("strongroom-keyd", "/dev/shm/other-file", "r", False),
    ("strongroom-keyd", "/opt/strongroom/keyd/server.py", "w", False),
    ("strongroom-keyd", "/etc/strongroom/keyd.toml", "w", False),
    ("strongroom-keyd", "/etc/strongroom/keyd.toml", "r", True),
    ("strongroom-keyd", KEYD_STATE, "rw", True),
    ("strongroom-keyd", "/var/lib/strongroom-keyd/events.jsonl", "rwk", True),
    ("strongroom-keyd", "/run/strongroom-keyd/keyd.sock", "rw", True),
    ("strongroom-keyd", "/dev/shm/ekey", "rw", True),
    ("strongroom-keyd", "/opt/strongroom/keyd/server.py", "r", True),
    ("strongroom-keyd", "/opt/strongroom/common/atomic.py", "r", True),
    ("strongroom-keyd", "/opt/strongroom/common/atomic.py", "w", False),
    ("strongroom-keyd", "/opt/strongroom/ca/authority.py", "r", False),
    # Apache: not /root, not the CA but its two published files (read-only), nothing of keyd's.
    ("strongroom-apache2", "/root/.ssh/id_rsa", "r", False),
    ("strongroom-apache2", "/root/ca-backup.tar", "r", False),
    *[("strongroom-apache2", p, "r", False) for p in CA_KEYS],
    ("strongroom-apache2", "/var/lib/strongroom-ca/publish/chain.pem", "r", True),
    # The web app reads its copy of the CRL (the admin console), never changes it, never Apache's.
    ("strongroom-web", "/etc/strongroom/crl.pem", "r", True),
    ("strongroom-web", "/etc/strongroom/crl.pem", "w", False),
    ("strongroom-web", "/etc/apache2/strongroom/crl.pem", "r", False),
    ("strongroom-web", "/etc/strongroom/keyd.toml", "r", False),
    ("strongroom-apache2", "/var/lib/strongroom-ca/publish/crl.pem", "r", True),
    ("strongroom-apache2", "/var/lib/strongroom-ca/publish/crl.pem", "w", False),
    ("strongroom-apache2", "/var/lib/strongroom-ca/publish/leftover-key.pem", "r", False),
    ("strongroom-apache2", KEYD_STATE, "r", False),
    ("strongroom-apache2", "/run/strongroom-keyd/keyd.sock", "w", False),
    ("strongroom-apache2", "/etc/strongroom/keyd.toml", "r", False),
    ("strongroom-apache2", "/etc/strongroom/webapp.env", "r", False),
    ("strongroom-apache2", "/dev/shm/ekey", "r", False),
    ("strongroom-apache2", "/var/lib/strongroom-web/strongroom.cfg", "r", False),
    ("strongroom-apache2", "/opt/strongroom/webapp/app.py", "r", False),
    ("strongroom-apache2", "/etc/apache2/strongroom/server.key.pem", "w", False),
    ("strongroom-apache2", "/etc/apache2/strongroom/server.key.pem", "r", True),
    ("strongroom-apache2", "/etc/apache2/sites-enabled/strongroom.conf", "r", True),
    ("strongroom-apache2", "/usr/share/modsecurity-crs/rules/REQUEST-942-SQLI.conf", "r", True),
    ("strongroom-apache2", "/run/strongroom-web/gunicorn.sock", "rw", True),
    ("strongroom-apache2", "/var/log/apache2/strongroom-access.log", "w", True),
    # Its piped loggers: Debian's python3 (the link's target), the standard library read-only, the
    # installed filter, the two logs it appends to; no site-packages, nothing else to run.
    ("strongroom-apache2", "/usr/bin/python3.11", "x", True),
    ("strongroom-apache2", "/usr/lib/python3.11/re/__init__.py", "r", True),
    ("strongroom-apache2", "/usr/lib/python3.11/__pycache__/os.cpython-311.pyc", "r", True),
    (
        "strongroom-apache2",
        "/usr/lib/python3.11/lib-dynload/_json.cpython-311-x86_64-linux-gnu.so",
        "m",
        True,
    ),
    ("strongroom-apache2", "/etc/apache2/strongroom/logfilter.py", "r", True),
    ("strongroom-apache2", "/var/log/apache2/error.log", "w", True),
    ("strongroom-apache2", "/var/log/apache2/modsecurity/", "w", True),
    ("strongroom-apache2", "/var/log/apache2/modsecurity/strongroom-audit.log", "w", True),
    ("strongroom-apache2", "/etc/apache2/strongroom/logfilter.py", "w", False),
    ("strongroom-apache2", "/usr/lib/python3.11/os.py", "w", False),
    ("strongroom-apache2", "/usr/lib/python3.11/__pycache__/os.cpython-311.pyc", "w", False),
    ("strongroom-apache2", "/usr/lib/python3/dist-packages/distutils-precedence.pth", "r", False),
    ("strongroom-apache2", "/usr/lib/python3/dist-packages/", "r", False),
    ("strongroom-apache2", "/usr/local/lib/python3.11/dist-packages/planted.pth", "r", False),
    ("strongroom-apache2", "/usr/local/lib/python3.11/dist-packages/", "r", False),
    ("strongroom-apache2", "/opt/strongroom/.venv/bin/python3", "x", False),
    ("strongroom-apache2", "/usr/bin/python3.11-config", "x", False),
    ("strongroom-apache2", "/usr/bin/perl", "x", False),
    ("strongroom-apache2", "/bin/sh", "x", False),
    ("strongroom-apache2", "/usr/bin/dash", "x", False),
    ("strongroom-apache2", "/tmp/python3", "x", False),
    # The health agent: the web app's reach without gunicorn's socket; nothing of keyd's or the CA's.
    ("strongroom-health-agent", KEYD_STATE, "r", False),
    ("strongroom-health-agent", "/etc/strongroom/keyd.toml", "r", False),
    ("strongroom-health-agent", "/dev/shm/ekey", "r", False),
    *[("strongroom-health-agent", p, "r", False) for p in CA_KEYS],
    ("strongroom-health-agent", "/etc/apache2/strongroom/server.key.pem", "r", False),
    ("strongroom-health-agent", "/root/.ssh/id_ed25519", "r", False),
    ("strongroom-health-agent", "/run/strongroom-web/gunicorn.sock", "w", False),
    ("strongroom-health-agent", "/opt/strongroom/webapp/app.py", "w", False),
    ("strongroom-health-agent", "/var/lib/strongroom-web/strongroom.cfg", "w", False),
    ("strongroom-health-agent", "/opt/strongroom/webapp/health_agent.py", "r", True),
    ("strongroom-health-agent", "/opt/strongroom/.venv/bin/flask", "r", True),
    ("strongroom-health-agent", "/var/lib/strongroom-web/strongroom.cfg", "r", True),
    ("strongroom-health-agent", "/run/strongroom-keyd/keyd.sock", "rw", True),
    ("strongroom-health-agent", "/run/mysqld/mysqld.sock", "rw", True),
    ("strongroom-health-agent", "/etc/strongroom/db-ca.pem", "r", True),
]


@pytest.mark.parametrize(
    ("name", "path", "perms", "allowed"), CASES, ids=[f"{c[0]}:{c[1]}:{c[2]}" for c in CASES]
)
def test_compiled_policy(
    rules: dict[str, list[FileRule]], name: str, path: str, perms: str, allowed: bool
) -> None:
    assert decide(rules[name], path).allows(perms) is allowed


# The secrets a profile must never reach are refused by an explicit deny (logged, and stronger than
# any allow a later edit or abstraction could add), not only by the absence of an allow.
EXPLICIT = [
    ("strongroom-web", KEYD_STATE),
    ("strongroom-web", "/dev/shm/ekey"),
    ("strongroom-web", "/var/lib/strongroom-ca/issuing/issuing-key.pem"),
    ("strongroom-mail", KEYD_STATE),
    ("strongroom-mail", "/dev/shm/ekey"),
    ("strongroom-health-agent", KEYD_STATE),
    ("strongroom-health-agent", "/dev/shm/ekey"),
    ("strongroom-health-agent", "/var/lib/strongroom-ca/issuing/issuing-key.pem"),
    ("strongroom-keyd", "/etc/strongroom/webapp.env"),
    ("strongroom-keyd", "/var/lib/strongroom-web/strongroom.cfg"),
    ("strongroom-keyd", "/var/lib/strongroom-ca/root/root-key.pem"),
    ("strongroom-apache2", "/root/.ssh/id_rsa"),
    ("strongroom-apache2", "/var/lib/strongroom-ca/issuing/issuing-key.pem"),
    ("strongroom-apache2", "/var/lib/strongroom-ca/index.json"),
    ("strongroom-apache2", KEYD_STATE),
    ("strongroom-apache2", "/run/strongroom-keyd/keyd.sock"),
    ("strongroom-apache2", "/dev/shm/ekey"),
    # A .pth file is code: the root logger must not run one from outside the standard library.
    ("strongroom-apache2", "/usr/local/lib/python3.11/dist-packages/planted.pth"),
]


@pytest.mark.parametrize(("name", "path"), EXPLICIT, ids=[f"{n}:{p}" for n, p in EXPLICIT])
def test_secrets_are_denied_explicitly_and_granted_by_nothing(
    rules: dict[str, list[FileRule]], name: str, path: str
) -> None:
    decision = decide(rules[name], path)
    assert decision.denied & 0x7 == 0x7  # r, w and x explicitly denied
    assert decision.granted & 0x6 == 0, "some allow rule (maybe from an abstraction) grants it"


def _network(text: str) -> tuple[set[str], set[str]]:
    allowed: set[str] = set()
    denied: set[str] = set()
    for s in statements(text):
        m = re.fullmatch(r"(audit )?(deny )?network( (\w+))?( \w+)?", s)
        if m:
            (denied if m[2] else allowed).add(m[4] or "ALL")
    return allowed, denied


@pytest.mark.parametrize(
    ("name", "may", "must_deny"),
    [
        ("strongroom-keyd", {"unix"}, {"inet", "inet6"}),
        ("strongroom-web", {"unix"}, {"inet", "inet6"}),
        ("strongroom-mail", {"unix", "inet", "inet6"}, set()),
        ("strongroom-apache2", {"unix", "inet", "inet6", "netlink"}, set()),
        # TCP for the balancers (and a database through the balancer); no netlink, no raw sockets.
        ("strongroom-health-agent", {"unix", "inet", "inet6"}, {"netlink", "packet"}),
    ],
)
def test_network_families(parser: str, name: str, may: set[str], must_deny: set[str]) -> None:
    # Includes resolved (-p): an abstraction that grants inet would show up here.
    allowed, denied = _network(preprocessed(parser, APPARMOR / name))
    if name != "strongroom-web":  # its allow sits in a conditional: the compiled test below
        assert allowed <= may, f"{name} may also use {allowed - may}"
    assert must_deny <= denied
    # The same, as the parser evaluated it (conditionals included): whole families denied.
    compiled, compiled_denied = compiled_network(parser, APPARMOR / name)
    assert set(compiled) <= may, f"{name} may also use {set(compiled) - may}"
    assert must_deny <= {f for f, types in compiled_denied.items() if types == {"ALL"}}


@pytest.mark.parametrize(
    ("name", "caps"),
    [
        ("strongroom-keyd", None),
        ("strongroom-web", None),
        ("strongroom-mail", None),
        ("strongroom-health-agent", None),
        ("strongroom-apache2", {"net_bind_service", "setuid", "setgid", "chown", "kill", "dac_override"}),
    ],
)
def test_capabilities(parser: str, name: str, caps: set[str] | None) -> None:
    stmts = statements(preprocessed(parser, APPARMOR / name))
    granted: set[str] = set()
    for s in stmts:
        m = re.fullmatch(r"(audit )?capability( (.+))?", s)
        if m:
            granted |= set((m[3] or "ALL").split())
    if caps is None:
        assert granted == set()
        assert "deny capability" in stmts
    else:
        assert granted == caps
        # Never the ones that would let Apache read around DAC entirely or trace keyd.
        assert not granted & {"ALL", "sys_ptrace", "dac_read_search", "sys_admin"}


def test_units_name_these_profiles() -> None:
    for unit, profile in [
        ("strongroom-keyd.service", "strongroom-keyd"),
        ("strongroom-web.service", "strongroom-web"),
        ("strongroom-mail.service", "strongroom-mail"),
        ("strongroom-health-agent.service.in", "strongroom-health-agent"),
    ]:
        assert f"\nAppArmorProfile={profile}\n" in (DEPLOY / unit).read_text()
    # Apache is attached by path: the profile must name Debian's binary.
    assert "profile strongroom-apache2 /usr/sbin/apache2 " in (APPARMOR / "strongroom-apache2").read_text()


WEAKENINGS: list[tuple[str, Callable[[str], str], str]] = [
    # (profile, edit, path the checks must now flag)
    (
        "strongroom-web",
        lambda t: t.replace("  deny /var/lib/strongroom-keyd/{,**} rwklx,\n", ""),
        KEYD_STATE,
    ),
    (
        "strongroom-web",
        lambda t: t.replace("  /var/lib/strongroom-web/ r,\n", "  /var/lib/** r,\n"),
        KEYD_STATE,
    ),
    (
        "strongroom-apache2",
        lambda t: t.replace(
            "  deny /var/lib/strongroom-ca/issuing/{,**} rwklx,\n", "  /var/lib/strongroom-ca/** r,\n"
        ),
        "/var/lib/strongroom-ca/issuing/issuing-key.pem",
    ),
    (
        "strongroom-keyd",
        lambda t: t.replace("  deny /etc/strongroom/webapp.env rwklx,\n", "  /etc/strongroom/* r,\n"),
        "/etc/strongroom/webapp.env",
    ),
]


@pytest.mark.parametrize(("name", "edit", "path"), WEAKENINGS, ids=[f"{w[0]}:{w[2]}" for w in WEAKENINGS])
def test_the_checks_notice_a_weakened_profile(
    parser: str, tmp_path: Path, name: str, edit: Callable[[str], str], path: str
) -> None:
    """The explicit-deny check above is not vacuous: dropping a deny, or adding a broad allow, is seen."""
    text = (APPARMOR / name).read_text()
    weakened = edit(text)
    assert weakened != text
    (tmp_path / name).write_text(weakened)
    decision = decide(compiled_file_rules(parser, tmp_path / name), path)
    assert decision.denied & 0x7 != 0x7 or decision.granted & 0x6 != 0


def _imported_packages(start: str) -> set[str]:
    """The project's top-level packages that `start`'s code needs: its own, and what they import,
    followed through every package reached."""
    ours = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    seen: set[str] = set()
    todo = [start]
    while todo:
        package = todo.pop()
        if package in seen:
            continue
        seen.add(package)
        for source in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                else:
                    continue
                todo += [n.split(".")[0] for n in names if n.split(".")[0] in ours]
    return seen


def test_keyd_reads_exactly_the_code_it_imports(rules: dict[str, list[FileRule]]) -> None:
    """keyd's profile lets it read every package its code imports (a missing one fails only in
    production, at the first import under enforcement) and no other project package."""
    needed = _imported_packages("keyd")
    assert {"keyd", "common"} <= needed
    assert "webapp" not in needed  # the trust boundary, seen from keyd's side
    ours = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    readable = {
        package
        for package in ours
        if decide(rules["strongroom-keyd"], f"/opt/strongroom/{package}/__init__.py").allows("r")
    }
    assert readable == needed
