"""The settings' [database] (deploy/server/remote_db.py wired into the installer): a hostile table is
refused by its key without quoting the URL; with it every database user's URL names the database host
over TLS with the password the installer generated and keeps, the units get their drop-ins and the web
app's AppArmor switch, the local database step is skipped with the database admin's `next:` line, and
removing the table takes it all back; without it nothing differs from a single server's install."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deploy.server import __main__ as installer
from deploy.server import remote_db, steps
from deploy.server.plan import Plan
from deploy.server.remote_db import RemoteDatabase
from deploy.server.settings import Settings, SettingsError, parse
from tests.support import need_root

CHECKOUT = Path(__file__).resolve().parents[3]
EXAMPLE = (CHECKOUT / "deploy/server/server.toml.example").read_text()
CA = "/etc/strongroom/db-ca.pem"
URL = f"mysql+pymysql://192.0.2.13:3306/strongroom?charset=utf8mb4&ssl_ca={CA}"
DB = RemoteDatabase("192.0.2.13", 3306, CA)
WEB_UID = 64995


def with_database(table: str | None) -> Settings:
    return parse(EXAMPLE if table is None else EXAMPLE + "\n[database]\n" + table + "\n")


def test_a_database_table_is_read() -> None:
    assert with_database(None).database is None
    assert with_database(f'url = "{URL}"').database == DB
    v6 = URL.replace("192.0.2.13:3306", "[2001:DB8::13]:3307")
    assert with_database(f'url = "{v6}"').database == RemoteDatabase("2001:db8::13", 3307, CA)
    assert with_database(f'url = "{URL.replace(":3306", "")}"').database == DB


def test_each_user_s_url_is_rebuilt_from_the_checked_parts() -> None:
    assert remote_db.url_for(DB, "strongroom", "ab12") == (
        f"mysql+pymysql://strongroom:ab12@192.0.2.13:3306/strongroom?charset=utf8mb4&ssl_ca={CA}"
    )
    v6 = RemoteDatabase("2001:db8::13", 3307, CA)
    assert remote_db.url_for(v6, "u", "p").startswith("mysql+pymysql://u:p@[2001:db8::13]:3307/strongroom?")
    # What the URL gives is what the web app's URL parser reads back (the one the unit's PyMySQL gets).
    assert remote_db.parse_url(remote_db.url_for(v6, "u", "p")) == v6


SECRET = "hunter2-pw"
HOSTILE = [
    (f'url = "{URL.replace("//", f"//strongroom:{SECRET}@")}"', "no user or password"),
    (f'url = "{URL.replace("//", "//strongroom@")}"', "no user or password"),
    (
        'url = "mysql+pymysql://strongroom:x@localhost/strongroom?unix_socket=/run/mysqld/mysqld.sock"',
        "this host",
    ),
    (f'url = "{URL.replace("192.0.2.13", "db.example.internal")}"', "is not an IP address"),
    (f'url = "{URL.replace("192.0.2.13", "127.0.0.1")}"', "loopback"),
    (f'url = "{URL.replace(f"&ssl_ca={CA}", "")}"', "ssl_ca= once"),
    (f'url = "{URL.replace(CA, "/tmp/ca.pem")}"', "under /etc/strongroom"),
    (f'url = "{URL.replace(CA, "/etc/strongroom/../shadow")}"', "under /etc/strongroom"),
    (f'url = "{URL}&ssl_verify_identity=true"', "no ssl_verify_identity"),
    (f'url = "{URL}&init_command=DROP"', "only charset= and ssl_ca="),
    (f'url = "{URL.replace("/strongroom?", "/mysql?")}"', "the database is /strongroom"),
    (f'url = "{URL.replace("/strongroom?", "/strongroom/x?")}"', "the database is /strongroom"),
    (f'url = "{URL.replace("utf8mb4", "latin1")}"', "charset=utf8mb4"),
    (f'url = "{URL.replace("charset=utf8mb4&", "")}"', "charset=utf8mb4"),
    (f'url = "{URL}&charset=utf8mb4"', "charset=utf8mb4"),
    (f'url = "{URL}\\nSTRONGROOM_SECRET_KEY=x"', "letters, digits"),
    (f'url = "{URL} "', "letters, digits"),
    (f'url = "{URL}\'"', "letters, digits"),
    (f'url = "{URL}#x"', "letters, digits"),
    (f'url = "{URL}{"&charset=utf8mb4" * 30}"', "at most 400"),
    (f'url = "{URL.replace(":3306", ":0")}"', "port"),
    (f'url = "{URL.replace(":3306", ":99999")}"', "port"),
    (f'url = "{URL.replace("192.0.2.13:3306", "[2001:db8::1%eth0]:3306")}"', "without a %zone"),
    (f'url = "{URL.replace("mysql+pymysql", "mysql")}"', "mysql+pymysql://"),
    ('url = ""', "missing"),
    ("url = 3306", "missing"),
    ("", "missing"),
    (f'url = "{URL}"\npassword = "{SECRET}"', "database.password: unknown key"),
]


@pytest.mark.parametrize(("table", "why"), HOSTILE)
def test_a_hostile_database_table_is_refused_by_its_key(table: str, why: str) -> None:
    with pytest.raises(SettingsError) as err:
        with_database(table)
    assert len(err.value.problems) == 1, err.value.problems
    problem = err.value.problems[0]
    assert problem.startswith("database"), problem
    assert why in problem
    assert SECRET not in problem
    assert "192.0.2.13" not in problem
    given = table.partition('"')[2].rpartition('"')[0]
    assert not given or given not in problem


def test_database_must_be_a_table() -> None:
    with pytest.raises(SettingsError) as err:
        parse(f'database = "{URL}"\n' + EXAMPLE)
    assert err.value.problems == ["database: must be a table"]


def test_the_ca_must_be_there_before_anything_is_touched(tmp_path: Path) -> None:
    ca = tmp_path / "db-ca.pem"
    db = RemoteDatabase("192.0.2.13", 3306, str(ca))
    assert remote_db.preflight(None) == []
    assert remote_db.preflight(db) == [
        f"database.url: ssl_ca {ca} is not a regular file (the database's CA, PEM)"
    ]
    ca.write_text("not a certificate\n")
    assert remote_db.preflight(db) == [f"database.url: ssl_ca {ca} is not a readable PEM certificate"]
    ca.unlink()
    ca.symlink_to("/etc/hostname")
    assert "is not a regular file" in remote_db.preflight(db)[0]
    ca.unlink()
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    assert remote_db.preflight(db) == []


# ---- what the installer writes ------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    need_root()  # root-owned files with a service group
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(
        f"root:x:0:0::/root:/bin/sh\nstrongroom-web:x:{WEB_UID}:{WEB_UID}::/nonexistent:/usr/sbin/nologin\n"
        f"strongroom-keyd:x:{WEB_UID + 1}:{WEB_UID + 1}::/nonexistent:/usr/sbin/nologin\n"
    )
    (etc / "group").write_text(f"root:x:0:\nstrongroom-web:x:{WEB_UID}:\n")
    return tmp_path


def install(root: Path, s: Settings, *, check: bool = False) -> tuple[Plan, dict[str, str], list[str]]:
    """The steps [database] changes, in the install's order (the firewall's in its own test)."""
    notes: list[str] = []
    plan = Plan(
        root=root, check=check, out=lambda line: notes.append(line) if line.startswith("next:") else None
    )
    passwords = steps.webapp_env(plan, CHECKOUT, s)
    remote_db.step(plan, s.database)
    return plan, passwords, notes


def urls(root: Path) -> dict[str, str]:
    found = {}
    for f in sorted((root / "etc/strongroom").glob("*.env")):
        for m in re.finditer(r"^(STRONGROOM_\w*DATABASE_URL)=(.*)$", f.read_text(), re.M):
            found[m[1]] = m[2]
    return found


DROPINS = [remote_db.DROPIN.format(unit=u).lstrip("/") for u in remote_db.UNITS]
SWITCH = remote_db.APPARMOR_SWITCH.lstrip("/")
LOCAL = "@localhost/strongroom?unix_socket=/run/mysqld/mysqld.sock&charset=utf8mb4"


def test_without_database_the_local_database_as_before(root: Path) -> None:
    plan, pw, notes = install(root, with_database(None))
    # The URLs exactly as the installer wrote them before [database] existed.
    assert urls(root) == {
        "STRONGROOM_DATABASE_URL": f"mysql+pymysql://strongroom:{pw['strongroom']}{LOCAL}",
        "STRONGROOM_KEYS_DATABASE_URL": f"mysql+pymysql://strongroom_keys:{pw['strongroom_keys']}{LOCAL}",
        "STRONGROOM_OUTBOX_PRUNE_DATABASE_URL": f"mysql+pymysql://strongroom_prune:{pw['strongroom_prune']}{LOCAL}",
        "STRONGROOM_PURGE_DATABASE_URL": f"mysql+pymysql://strongroom_purge:{pw['strongroom_purge']}{LOCAL}",
    }
    assert [p for p in [*DROPINS, SWITCH] if (root / p).exists()] == []
    assert not (root / "etc/apparmor.d").exists()
    assert not (root / "etc/systemd").exists()
    assert notes == []
    assert sorted(plan.changes) == sorted(
        f"/etc/strongroom/{n}.env" for n in ("webapp", "keys", "outbox-prune", "purge-retired")
    )


def test_with_database_every_url_names_the_host_and_the_units_may_reach_it(root: Path) -> None:
    local_pw = install(root, with_database(None))[1]
    s = with_database(f'url = "{URL}"')
    plan, pw, notes = install(root, s)
    assert pw == local_pw, "the passwords are kept: the database admin sets the same ones"
    assert urls(root) == {
        "STRONGROOM_DATABASE_URL": remote_db.url_for(DB, "strongroom", pw["strongroom"]),
        "STRONGROOM_KEYS_DATABASE_URL": remote_db.url_for(DB, "strongroom_keys", pw["strongroom_keys"]),
        "STRONGROOM_OUTBOX_PRUNE_DATABASE_URL": remote_db.url_for(
            DB, "strongroom_prune", pw["strongroom_prune"]
        ),
        "STRONGROOM_PURGE_DATABASE_URL": remote_db.url_for(DB, "strongroom_purge", pw["strongroom_purge"]),
    }
    env = root / "etc/strongroom/webapp.env"
    assert (env.stat().st_mode & 0o777, env.stat().st_uid, env.stat().st_gid) == (0o640, 0, WEB_UID)
    for unit in remote_db.UNITS:
        drop = root / remote_db.DROPIN.format(unit=unit).lstrip("/")
        assert drop.read_text() == remote_db.dropin(unit, DB)
        assert drop.stat().st_mode & 0o777 == 0o644
    assert (root / SWITCH).read_text() == remote_db.APPARMOR_TEXT
    assert {"strongroom-web", "strongroom-mail", "strongroom-health-agent"} <= plan.restart
    # The database admin's part, never a password or a URL.
    assert len(notes) == 1
    assert "192.0.2.13 port 3306" in notes[0]
    assert "REQUIRE SSL" in notes[0]
    assert not any(p in notes[0] for p in pw.values())
    assert "mysql+pymysql" not in notes[0]
    # A second run finds nothing to do, and still says what the database admin does.
    again, _, notes = install(root, s, check=True)
    assert again.changes == []
    assert len(notes) == 1


def test_removing_database_takes_it_all_back(root: Path) -> None:
    first = install(root, with_database(None))[1]
    install(root, with_database(f'url = "{URL}"'))
    checked = install(root, with_database(None), check=True)[0]
    assert {f"/{p} removed" for p in [*DROPINS, SWITCH]} <= set(checked.changes)
    plan, pw, notes = install(root, with_database(None))
    assert pw == first
    assert notes == []
    assert [p for p in [*DROPINS, SWITCH] if (root / p).exists()] == []
    assert all(LOCAL in url for url in urls(root).values())
    assert {"strongroom-web", "strongroom-mail"} <= plan.restart


def test_the_firewall_lets_the_web_user_reach_the_database_only_with_it(root: Path) -> None:
    nft = root / "etc/strongroom/firewall/strongroom.nft"
    steps.firewall(Plan(root=root, check=False, out=lambda _l: None), CHECKOUT, with_database(None))
    single = nft.read_text()
    assert "daddr 192.0.2.13" not in single
    s = with_database(f'url = "{URL}"')
    steps.firewall(Plan(root=root, check=False, out=lambda _l: None), CHECKOUT, s)
    assert nft.read_text() == single + remote_db.nft_rules(DB, [str(WEB_UID)])
    steps.firewall(Plan(root=root, check=False, out=lambda _l: None), CHECKOUT, with_database(None))
    assert nft.read_text() == single


def test_the_local_database_step_runs_only_without_database(monkeypatch: pytest.MonkeyPatch) -> None:
    """run_all's order, every step replaced by a recorder: [database] skips steps.database (the users,
    schema and grants are the database admin's, on the cluster) and nothing else."""
    calls: list[str] = []
    for name in dir(steps):
        if callable(getattr(steps, name)) and not name.startswith("_") and name.islower():
            monkeypatch.setattr(steps, name, lambda *_a, _n=name, **_k: calls.append(_n) or {})
    monkeypatch.setattr(remote_db, "step", lambda _plan, db: calls.append(f"remote_db.step {db}"))
    plan = Plan(root=Path("/nonexistent"), check=True, out=lambda _l: None)
    installer.run_all(plan, with_database(None), None)
    single = list(calls)
    calls.clear()
    installer.run_all(plan, with_database(f'url = "{URL}"'), None)
    assert "database" in single
    assert "remote_db.step None" in single
    assert [c for c in single if c != "database"] == [c.replace(str(DB), "None") for c in calls]
    assert single.index("database") < single.index("remote_db.step None") < single.index("firewall")
