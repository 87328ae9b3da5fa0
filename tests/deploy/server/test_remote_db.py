"""deploy/server/remote_db.py: a database URL with a TCP host is taken only as an IP with the
database's CA and without ssl_verify_identity; the drop-ins name units that exist and open exactly
what they sandbox; the firewall rule, loaded in a real network namespace (tests/hardening/conftest.py's
Lan) with the firewall the install renders, lets a process of strongroom-web's uid reach the
database's address and port, and nothing else."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.server import remote_db, steps
from deploy.server.plan import Plan
from deploy.server.remote_db import RemoteDatabase, RemoteDatabaseError, parse_url
from deploy.server.settings import parse
from tests.hardening.conftest import Lan
from tests.support import need_binary, need_root

CHECKOUT = Path(__file__).resolve().parents[3]
EXAMPLE = (CHECKOUT / "deploy/server/server.toml.example").read_text()
CA = "ssl_ca=/etc/strongroom/db-ca.pem"
PW = "s3cret-pw"
GOOD = f"mysql+pymysql://strongroom:{PW}@192.0.2.2:3306/strongroom?charset=utf8mb4&{CA}"


def test_the_local_database_is_not_remote() -> None:
    local = (CHECKOUT / "deploy/webapp.env.in").read_text().split("STRONGROOM_DATABASE_URL=", 1)[1]
    assert parse_url(local.splitlines()[0]) is None
    assert parse_url("mysql+pymysql://strongroom:x@localhost/strongroom") is None


@pytest.mark.parametrize(
    ("url", "want"),
    [
        (GOOD, RemoteDatabase("192.0.2.2", 3306, "/etc/strongroom/db-ca.pem")),
        (GOOD.replace(":3306", ""), RemoteDatabase("192.0.2.2", 3306, "/etc/strongroom/db-ca.pem")),
        (GOOD.replace("192.0.2.2:3306", "[2001:DB8::2]:3307"),
         RemoteDatabase("2001:db8::2", 3307, "/etc/strongroom/db-ca.pem")),
    ],
)  # fmt: skip
def test_a_remote_database(url: str, want: RemoteDatabase) -> None:
    assert parse_url(url) == want


@pytest.mark.parametrize(
    ("url", "why"),
    [
        (GOOD.replace("192.0.2.2", "db.example.internal"), "the host is not an IP address"),
        (GOOD.replace(f"&{CA}", ""), "ssl_ca= once"),
        (GOOD + "&ssl_verify_identity=true", "no ssl_verify_identity"),
        (GOOD + "&ssl_ca=/etc/strongroom/other.pem", "ssl_ca= once"),
        (GOOD.replace("/etc/strongroom/db-ca.pem", "/tmp/ca.pem"), "a file under /etc/strongroom/"),
        (GOOD.replace("/etc/strongroom/db-ca.pem", "/etc/strongroom/../shadow"), "a file under"),
        (GOOD.replace(":3306", ":0"), "port 1-65535"),
        (GOOD.replace(":3306", ":65536"), "port outside 1-65535"),
        (GOOD.replace(":3306", ":x"), "port outside 1-65535"),
        (GOOD.replace("192.0.2.2", "127.0.0.1"), "must be one host's address"),
        (GOOD.replace("192.0.2.2", "0.0.0.0"), "must be one host's address"),  # noqa: S104
        (GOOD.replace("192.0.2.2", "224.0.0.1"), "must be one host's address"),
        (GOOD.replace("192.0.2.2", "[::ffff:192.0.2.2]"), "an IPv4 address written as IPv4"),
        (GOOD.replace("192.0.2.2", "[fe80::1%25eth0]"), "without a %zone"),
        (GOOD.replace("192.0.2.2", "[fe80::1]"), "link-local"),
        (GOOD.replace("192.0.2.2", "240.0.0.1"), "reserved"),
        (GOOD + "&ssl_disabled=true", "only charset= and ssl_ca="),
        (GOOD + "&unix_socket=/run/mysqld/mysqld.sock", "unix_socket= and a TCP host"),
        (GOOD.replace("mysql+pymysql", "mysql"), r"mysql\+pymysql://"),
    ],
)
def test_hostile_urls_are_refused_without_quoting_them(url: str, why: str) -> None:
    with pytest.raises(RemoteDatabaseError, match=why) as caught:
        parse_url(url)
    assert PW not in str(caught.value)
    assert "\n" not in str(caught.value)


DB = RemoteDatabase("192.0.2.2", 3306, "/etc/strongroom/db-ca.pem")


@pytest.mark.parametrize("unit", sorted(remote_db.UNITS))
def test_the_dropins_open_what_their_unit_closes(unit: str) -> None:
    source = CHECKOUT / "deploy" / f"{unit}.service"
    if not source.exists():
        source = CHECKOUT / "deploy" / f"{unit}.service.in"
    text = source.read_text()
    assert "IPAddressDeny=any" in text
    # PrivateNetwork=no exactly where the unit sets PrivateNetwork=yes.
    assert ("PrivateNetwork=yes" in text) == remote_db.UNITS[unit]
    drop = remote_db.dropin(unit, DB)
    assert drop.splitlines()[1:] == [
        "[Service]",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        *(["PrivateNetwork=no"] if remote_db.UNITS[unit] else []),
        "IPAddressAllow=192.0.2.2",
    ]
    assert "IPAddressDeny" not in drop


def test_systemd_verifies_the_web_unit_with_its_dropin(tmp_path: Path) -> None:
    """The drop-in's options are ones systemd knows, in the section it reads them from."""
    analyze = need_binary("systemd-analyze")
    unit_dir = tmp_path / "strongroom-web.service.d"
    unit_dir.mkdir()
    (unit_dir / "50-strongroom-remote-database.conf").write_text(remote_db.dropin("strongroom-web", DB))
    unit = (CHECKOUT / "deploy/strongroom-web.service").read_text()
    (tmp_path / "strongroom-web.service").write_text(unit.replace("/opt/strongroom", str(CHECKOUT)))
    res = subprocess.run(
        [analyze, "verify", "--man=no", str(tmp_path / "strongroom-web.service")],
        capture_output=True, text=True, check=False,
        env={"SYSTEMD_UNIT_PATH": f"{tmp_path}:", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    bad = [line for line in res.stderr.splitlines() if "remote-database" in line or "Unknown" in line]
    assert bad == [], res.stderr


# ---- the firewall, in a namespace ------------------------------------------------------------------

WEB_UID, KEYD_UID = 64993, 64994
SYSTEM_PYTHON = "/usr/bin/python3"
ASK = r"""
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5):
        print("connected")
except OSError as exc:
    print(type(exc).__name__)
"""


@pytest.fixture(scope="module")
def lan() -> Iterator[Lan]:
    need_root()
    need_binary("setpriv")
    need_binary("nft")
    # The crm host plays the database, the untrusted one another host with a database port.
    with Lan(("server", "crm", "untrusted")) as built:
        built["crm"].listen("3306", "3307")
        built["untrusted"].listen("3306")
        yield built


def test_the_web_app_s_user_reaches_the_database_and_nothing_else(tmp_path: Path, lan: Lan) -> None:
    server, db, other = lan["server"], lan["crm"], lan["untrusted"]
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(
        f"root:x:0:0::/root:/bin/sh\nstrongroom-web:x:{WEB_UID}:{WEB_UID}::/:/x\n"
        f"strongroom-keyd:x:{KEYD_UID}:{KEYD_UID}::/:/x\n"
    )
    (etc / "group").write_text("root:x:0:\n")
    steps.firewall(Plan(root=tmp_path, check=False, out=lambda _line: None), CHECKOUT, parse(EXAMPLE))
    path = tmp_path / "etc/strongroom/firewall/strongroom.nft"
    remote = RemoteDatabase(db.v4, 3306, "/etc/strongroom/db-ca.pem")

    def ask(uid: int, host: str, port: int) -> str:
        return server.run(
            "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            SYSTEM_PYTHON, "-c", ASK, host, str(port),
        ).stdout.strip()  # fmt: skip

    server.run("nft", "flush", "ruleset")
    server.run("nft", "-f", str(path))
    assert ask(WEB_UID, db.v4, 3306) == "OSError", "the owner rule alone must refuse it"
    # The install's own firewall step with the settings' [database] adds the rule.
    url = f"mysql+pymysql://{db.v4}:3306/strongroom?charset=utf8mb4&ssl_ca=/etc/strongroom/db-ca.pem"
    with_db = parse(f'{EXAMPLE}\n[database]\nurl = "{url}"\n')
    steps.firewall(Plan(root=tmp_path, check=False, out=lambda _line: None), CHECKOUT, with_db)
    assert path.read_text().endswith(remote_db.nft_rules(remote, [str(WEB_UID)]))
    server.run("nft", "flush", "ruleset")
    server.run("nft", "-f", str(path))
    assert ask(WEB_UID, db.v4, 3306) == "connected"
    assert ask(WEB_UID, db.v4, 3307) == "OSError"  # another port of the database host
    assert ask(WEB_UID, other.v4, 3306) == "OSError"  # the same port elsewhere
    assert ask(KEYD_UID, db.v4, 3306) == "OSError"  # keyd's uid is not in the rule
