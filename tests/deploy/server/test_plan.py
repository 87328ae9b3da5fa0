"""deploy/server/plan.py and the steps that need no running service, on a throwaway root: drift in a
file's content, owner or mode (and a directory's) is found by --check without touching anything,
apply fixes it and a check after that finds nothing, a planted symlink is refused, a file a validator
refuses never replaces the old one, generated secrets are made once and kept, and an admin removed from
the settings loses their key file."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from deploy.server import steps
from deploy.server.plan import InstallError, Plan, Want
from deploy.server.settings import Settings, parse
from tests.support import need_binary, need_root

CHECKOUT = Path(__file__).resolve().parents[3]
EXAMPLE = (CHECKOUT / "deploy/server/server.toml.example").read_text()
SVC_UID = 4321


@pytest.fixture
def root(tmp_path: Path) -> Path:
    need_root()  # files owned by another uid than ours
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(
        f"root:x:0:0::/root:/bin/sh\nsvc:x:{SVC_UID}:{SVC_UID}::/:/usr/sbin/nologin\n"
    )
    (etc / "group").write_text(f"root:x:0:\nsvc:x:{SVC_UID}:\nstrongroom-web:x:{SVC_UID + 1}:\n")
    return tmp_path


def plans(root: Path) -> tuple[Callable[[], Plan], Callable[[], Plan]]:
    def make(check: bool) -> Callable[[], Plan]:
        return lambda: Plan(root=root, check=check, out=lambda _line: None)

    return make(True), make(False)


WANT = Want("/etc/strongroom/x.conf", b"wanted\n", 0o640, "svc", "svc")


def meta(p: Path) -> tuple[int, int, int, bytes]:
    st = p.stat()
    return st.st_uid, st.st_gid, st.st_mode & 0o7777, p.read_bytes()


def write(p: Path, content: bytes, mode: int, uid: int) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(content)
    os.chown(p, uid, uid)
    p.chmod(mode)


@pytest.mark.parametrize(
    ("content", "mode", "uid"),
    [
        (None, None, None),  # absent
        (b"tampered\n", 0o640, SVC_UID),  # content
        (b"wanted\n", 0o644, SVC_UID),  # mode
        (b"wanted\n", 0o4640, SVC_UID),  # a setuid bit
        (b"wanted\n", 0o640, 0),  # owner
    ],
    ids=["absent", "content", "mode", "setuid", "owner"],
)
def test_file_drift_found_then_fixed(root: Path, content: bytes | None, mode: int, uid: int) -> None:
    check, apply = plans(root)
    target = root / "etc/strongroom/x.conf"
    if content is not None:
        write(target, content, mode, uid)
    before = meta(target) if content is not None else None

    p = check()
    assert p.file(WANT)
    assert p.changes == ["/etc/strongroom/x.conf"]
    assert (meta(target) if content is not None else None) == before, "--check changed the file"

    assert apply().file(WANT)
    assert meta(target) == (SVC_UID, SVC_UID, 0o640, b"wanted\n")
    again = check()
    assert not again.file(WANT)
    assert again.changes == []


@pytest.mark.parametrize(
    ("mode", "uid"), [(None, None), (0o775, SVC_UID), (0o750, 0)], ids=["absent", "mode", "owner"]
)
def test_dir_drift_found_then_fixed(root: Path, mode: int | None, uid: int | None) -> None:
    check, apply = plans(root)
    d = root / "var/lib/svc"
    if mode is not None and uid is not None:
        d.mkdir(parents=True)
        os.chown(d, uid, uid)
        d.chmod(mode)
    assert check().dir("/var/lib/svc", 0o750, "svc", "svc")
    assert d.exists() == (mode is not None)
    assert apply().dir("/var/lib/svc", 0o750, "svc", "svc")
    st = d.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (SVC_UID, SVC_UID, 0o750)
    assert not check().dir("/var/lib/svc", 0o750, "svc", "svc")


@pytest.mark.parametrize("check_mode", [True, False], ids=["check", "apply"])
def test_planted_symlink_is_refused(
    root: Path, tmp_path_factory: pytest.TempPathFactory, check_mode: bool
) -> None:
    outside = tmp_path_factory.mktemp("outside") / "shadow"
    outside.write_bytes(b"not yours\n")
    link = root / "etc/strongroom/x.conf"
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    (root / "var").mkdir()
    (root / "var/dirlink").symlink_to(outside.parent)
    plan = Plan(root=root, check=check_mode, out=lambda _line: None)
    with pytest.raises(InstallError, match="symbolic link"):
        plan.file(WANT)
    with pytest.raises(InstallError, match="symbolic link"):
        plan.dir("/var/dirlink", 0o700)
    assert outside.read_bytes() == b"not yours\n"
    assert (outside.stat().st_uid, outside.stat().st_mode & 0o777) == (os.geteuid(), 0o644)


def test_unknown_owner_is_an_error_when_applying(root: Path) -> None:
    with pytest.raises(InstallError, match="nobody-here"):
        plans(root)[1]().file(Want("/etc/y", b"y", owner="nobody-here"))
    assert not (root / "etc/y").exists()


def refuse(_candidate: Path) -> None:
    raise InstallError("validator says no")


def test_a_refused_file_keeps_the_old_one(root: Path) -> None:
    target = root / "etc/strongroom/x.conf"
    write(target, b"old\n", 0o640, SVC_UID)
    with pytest.raises(InstallError, match="validator says no"):
        plans(root)[1]().file(WANT, validate=refuse)
    assert meta(target) == (SVC_UID, SVC_UID, 0o640, b"old\n")
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.conf"], "the candidate was left behind"


def test_sshd_refuses_a_broken_config(tmp_path: Path) -> None:
    need_binary("sshd")
    candidate = tmp_path / "sshd_config"
    candidate.write_text("PermitRootLogin sometimes\n")
    with pytest.raises(InstallError, match="old one is kept"):
        steps.sshd_accepts(candidate)


def settings(text: str = EXAMPLE) -> Settings:
    return parse(text)


def test_secrets_are_generated_once_and_kept(root: Path) -> None:
    check, apply = plans(root)
    first = steps.webapp_env(apply(), CHECKOUT, settings())
    env = (root / "etc/strongroom/webapp.env").read_text()
    keys = (root / "etc/strongroom/keys.env").read_text()
    secret = re.search(r"^STRONGROOM_SECRET_KEY=(.+)$", env, re.M)
    assert secret is not None
    assert len(secret[1]) >= 32
    assert set(first) == {"strongroom", "strongroom_keys", "strongroom_prune", "strongroom_purge"}
    assert len(set(first.values())) == 4
    assert f"strongroom:{first['strongroom']}@" in env
    assert f"strongroom_keys:{first['strongroom_keys']}@" in keys
    assert "CHANGE-ME" not in env
    # Filled on its assignment line only: the template's comment that names it keeps the placeholder.
    assert not any("@SECRET_KEY@" in line for line in env.splitlines() if not line.startswith("#"))
    assert env.count(secret[1]) == 1
    st = (root / "etc/strongroom/keys.env").stat()
    assert st.st_mode & 0o777 == 0o600
    # The nightly jobs' users: each URL in a root-only file its unit reads (EnvironmentFile=).
    for user, (path, var, _, _) in steps.JOB_USERS.items():
        job = root / path.lstrip("/")
        assert f"{var}=mysql+pymysql://{user}:{first[user]}@" in job.read_text()
        assert (job.stat().st_mode & 0o777, job.stat().st_uid) == (0o600, 0)

    second_plan = check()
    assert steps.webapp_env(second_plan, CHECKOUT, settings()) == first
    assert second_plan.changes == []
    # A settings change rewrites the managed lines and keeps every secret.
    relayed = re.sub(r'^relay = ""$', 'relay = "[mail.example.internal]:587"', EXAMPLE, flags=re.M)
    relayed = relayed.replace('mail = "alice@vault.example.internal"', 'mail = "security@example.org"')
    assert steps.webapp_env(apply(), CHECKOUT, settings(relayed)) == first
    env2 = (root / "etc/strongroom/webapp.env").read_text()
    assert "STRONGROOM_ALERT_TO=security@example.org" in env2
    assert f"STRONGROOM_SECRET_KEY={secret[1]}" in env2


def test_a_removed_admin_is_drift_and_loses_the_key(root: Path) -> None:
    keys = root / "etc/ssh/authorized_keys"
    keys.mkdir(parents=True)
    (keys / "alice").write_text("alice's key\n")
    (keys / "mallory").write_text("a key nobody listed\n")
    with (root / "etc/group").open("a") as f:
        f.write("strongroom-admins:x:999:alice,bob\n")
    check, apply = plans(root)
    p = check()
    steps.former_admins(p, settings())
    assert [c.split(":")[0] for c in p.changes] == ["former admin bob", "former admin mallory"]
    assert (keys / "mallory").exists()
    # Neither is a local person (uid >= 1000) nor in the group with a key here: only the key file goes.
    with (root / "etc/group").open("w") as f:
        f.write("root:x:0:\nstrongroom-admins:x:999:alice\n")
    p = apply()
    steps.former_admins(p, settings())
    assert p.changes == [
        f"former admin mallory: SSH key removed, account out of {steps.ADMIN_GROUP}, locked and expired"
    ]
    assert sorted(x.name for x in keys.iterdir()) == ["alice"]
    again = check()
    steps.former_admins(again, settings())
    assert again.changes == []
