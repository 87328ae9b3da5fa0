"""Hostile and mistaken input: one row per case, the exact refusal, and nothing changed on disk.

"Nothing changed" is checked on a snapshot of the whole CA directory (modes and bytes) and of the
admin's working directory; the only thing a refusal may add is a `ca.refused` line in ops.log.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ca.conftest import CA, ISSUING_PASSPHRASE, snapshot, write_secret


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    exit_code: int
    message: str  # the exact last stderr line; {alice}, {bob}, {ca}, {work} are filled in
    setup: Callable[[CA], None] = lambda ca: None
    input: str | None = None
    passphrase: bool = True


def _corrupt_json(ca: CA) -> None:
    (ca.dir / "index.json").write_bytes(b'{"version": 1, "certificates": [')


def _unknown_field(ca: CA) -> None:
    doc = json.loads((ca.dir / "index.json").read_text())
    doc["certificates"][0]["is_admin"] = True
    (ca.dir / "index.json").write_text(json.dumps(doc))


def _duplicate_serial(ca: CA) -> None:
    doc = json.loads((ca.dir / "index.json").read_text())
    doc["certificates"].append(dict(doc["certificates"][0], fingerprint="0" * 64))
    (ca.dir / "index.json").write_text(json.dumps(doc))


def _wrong_passphrase(ca: CA) -> None:
    write_secret(ca.issuing_pass, "not-the-issuing-passphrase-at-all")


def _open_passphrase_file(ca: CA) -> None:
    ca.issuing_pass.chmod(0o644)


def _readable_index(ca: CA) -> None:
    (ca.dir / "index.json").chmod(0o640)


def _readable_dir(ca: CA) -> None:
    (ca.dir / "issuing").chmod(0o755)


def _bundle_exists(ca: CA) -> None:
    (ca.work / "carol.p12").write_bytes(b"the previous bundle")


def _server_key_exists(ca: CA) -> None:
    (ca.work / "localhost.key.pem").write_bytes(b"someone's key")


def _unknown_user(ca: CA) -> None:
    ca.binder.refuse_bind = "unknown user 'zed'"


def _fingerprint_taken(ca: CA) -> None:
    ca.binder.refuse_bind = "fingerprint already bound"


def _bad_config(ca: CA) -> None:
    with (ca.dir / "config.toml").open("a") as f:
        f.write("crl_dayz = 7\n")


def _symlinked_index(ca: CA) -> None:
    real = ca.dir / "index.json"
    moved = ca.dir / "certs" / "index-real.json"
    real.rename(moved)
    real.symlink_to(moved)


CASES = [
    Case("unknown user", ("issue", "zed", "--out", "zed.p12"), 1,
         "Error: the web app refused to bind the certificate to zed: unknown user 'zed' (nothing was issued)",
         setup=_unknown_user),
    Case("fingerprint already bound", ("issue", "carol", "--out", "carol.p12"), 1,
         "Error: the web app refused to bind the certificate to carol: fingerprint already bound "
         "(nothing was issued)", setup=_fingerprint_taken),
    Case("duplicate active certificate", ("issue", "alice", "--out", "a2.p12"), 1,
         "Error: alice already holds a valid certificate (serial {alice}, expires {alice_expiry}): "
         "revoke it first, or pass --replace to renew"),
    Case("replace across profiles", ("service", "alice", "--replace", "--out", "a2.p12"), 1,
         "Error: alice's current certificate has the employee profile: --replace cannot change it"),
    Case("name with a space", ("issue", "alice smith"), 1,
         "Error: invalid name 'alice smith': use 1-64 letters, digits, '.', '_' or '-', "
         "starting with a letter or digit"),
    Case("name with a path", ("issue", "../../etc/x"), 1,
         "Error: invalid name '../../etc/x': use 1-64 letters, digits, '.', '_' or '-', "
         "starting with a letter or digit"),
    Case("name like an option", ("issue", "--", "-rf"), 1,
         "Error: invalid name '-rf': use 1-64 letters, digits, '.', '_' or '-', "
         "starting with a letter or digit"),
    Case("empty name", ("issue", ""), 1,
         "Error: invalid name '': use 1-64 letters, digits, '.', '_' or '-', "
         "starting with a letter or digit"),
    Case("bad host name", ("server", "exa mple.com"), 1,
         "Error: invalid host name 'exa mple.com': give DNS names or IP addresses"),
    Case("bundle exists", ("issue", "carol", "--out", "carol.p12"), 1,
         "Error: carol.p12 already exists: refusing to overwrite it", setup=_bundle_exists),
    Case("server key exists", ("server", "localhost"), 1,
         "Error: localhost.key.pem already exists: refusing to overwrite it", setup=_server_key_exists),
    Case("revoke unknown name", ("revoke", "nobody", "--reason", "affiliationChanged"), 1,
         "Error: no certificate for 'nobody': not a known name or serial (see `python -m ca list`)"),
    Case("revoke unknown serial", ("revoke", "0x1234abcd", "--reason", "keyCompromise"), 1,
         "Error: no certificate for '0x1234abcd': not a known name or serial (see `python -m ca list`)"),
    Case("revoke twice", ("revoke", "bob", "--reason", "affiliationChanged"), 1,
         "Error: bob's certificate {bob} is already revoked (since {bob_revoked} UTC, affiliationChanged)"),
    Case("revoke without a reason", ("revoke", "alice"), 2,
         "Error: Missing option '--reason'. Choose from:"),
    Case("revoke with a made-up reason", ("revoke", "alice", "--reason", "fired"), 2,
         "Error: Invalid value for '--reason': 'fired' is not one of 'unspecified', 'keyCompromise', "
         "'affiliationChanged', 'superseded', 'cessationOfOperation'."),
    Case("unbind a valid certificate", ("unbind", "alice"), 1,
         "Error: alice's certificate {alice} is not revoked: revoke it instead"),
    Case("wrong issuing passphrase", ("issue", "carol", "--out", "carol.p12"), 1,
         "Error: wrong passphrase for the issuing CA key (nothing was changed)", setup=_wrong_passphrase),
    Case("wrong typed passphrase", ("revoke", "alice", "--reason", "keyCompromise"), 1,
         "Error: wrong passphrase for the issuing CA key (nothing was changed)",
         input="lantern-quartz-meadow-piano-75\n", passphrase=False),
    Case("passphrase file readable by others", ("crl",), 1,
         "Error: the issuing CA passphrase file {secrets}/issuing.pass is readable by others: "
         "chmod 600 {secrets}/issuing.pass", setup=_open_passphrase_file),
    Case("weak bundle password: short", ("issue", "carol", "--out", "carol.p12", "--ask-password"), 1,
         "Error: the bundle password is too short: use at least 12 characters (nothing was changed)",
         input="Tr0ub4dor&3\nTr0ub4dor&3\n"),
    Case("weak bundle password: guessable", ("issue", "carol", "--out", "carol.p12", "--ask-password"), 1,
         "Error: the bundle password is too easy to guess (strength 1/4, need 3): This is similar to a "
         "commonly used password. (nothing was changed)", input="Password1234\nPassword1234\n"),
    Case("weak bundle password: holder name", ("issue", "carol", "--out", "carol.p12", "--ask-password"),
         1, "Error: the bundle password is too easy to guess (strength 2/4, need 3): add more unrelated "
         "words or characters (nothing was changed)", input="StrongroomCarol1\nStrongroomCarol1\n"),
    Case("corrupt index", ("issue", "carol", "--out", "carol.p12"), 1,
         "Error: the index is not valid JSON (JSONDecodeError); restore a backup", setup=_corrupt_json),
    Case("index with an unknown field", ("list",), 1,
         "Error: certificate #0: missing fields [], unexpected fields ['is_admin']", setup=_unknown_field),
    Case("index with a duplicate serial", ("revoke", "alice", "--reason", "keyCompromise"), 1,
         "Error: index: a serial number appears twice", setup=_duplicate_serial),
    Case("index readable by group", ("list",), 1,
         "Error: refusing to run: {ca}/index.json has mode 0640, which lets others read it; "
         "fix it with: chmod 600 {ca}/index.json", setup=_readable_index),
    Case("issuing dir readable by others", ("crl",), 1,
         "Error: refusing to run: {ca}/issuing has mode 0755, which lets others read it; "
         "fix it with: chmod 700 {ca}/issuing", setup=_readable_dir),
    Case("index is a symlink", ("list",), 1,
         "Error: refusing to run: {ca}/index.json is a symbolic link", setup=_symlinked_index),
    Case("typo in config", ("crl",), 1,
         "Error: {ca}/config.toml: crl_dayz: is not a known setting", setup=_bad_config),
    Case("wrong root passphrase", ("new-issuing", "--reason", "superseded", "--yes"), 1,
         "Error: wrong passphrase for the root CA key (nothing was changed)",
         input="orbit-walnut-cascade-ferry-32\n"),
    Case("new issuing CA with a made-up reason", ("new-issuing", "--reason", "keyCompromise", "--yes"), 2,
         "Error: Invalid value for '--reason': 'keyCompromise' is not one of 'superseded', 'cACompromise', "
         "'cessationOfOperation'."),
    Case("init over an existing CA", ("init",), 1,
         "Error: {ca} already exists and is not empty: refusing to overwrite a CA"),
    Case("days out of range", ("issue", "carol", "--days", "0"), 2,
         "Error: Invalid value for '--days': 0 is not in the range 1<=x<=1095."),
]  # fmt: skip


@pytest.fixture
def populated(ca: CA) -> tuple[CA, dict[str, str]]:
    _, _, alice = ca.issue("alice")
    _, _, bob = ca.issue("bob")
    ca.clock.advance(minutes=5)
    ca.ok("revoke", "bob", "--reason", "affiliationChanged")
    index = {
        c["name"] + c["serial"][:0]: c
        for c in json.loads((ca.dir / "index.json").read_text())["certificates"]
    }
    values = {
        "alice": alice,
        "bob": bob,
        "alice_expiry": index["alice"]["not_after"][:10],
        "bob_revoked": index["bob"]["revoked_at"][:16].replace("T", " "),
        "ca": str(ca.dir),
        "work": str(ca.work),
        "secrets": str(ca.issuing_pass.parent),
    }
    return ca, values


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_clearly_and_changes_nothing(
    populated: tuple[CA, dict[str, str]], case: Case
) -> None:
    ca, values = populated
    case.setup(ca)
    before, work_before = snapshot(ca.dir), _tree(ca.work)
    log_before = (ca.dir / "ops.log").read_text()
    calls_before = list(ca.binder.calls)

    result = ca.run(*case.args, input=case.input, passphrase=case.passphrase)

    assert result.exit_code == case.exit_code, result.output
    last = [line for line in result.stderr.splitlines() if line.lower().startswith("error:")][-1]
    expected = case.message.format(**values)
    if expected.endswith(":"):
        assert last.startswith(expected)
    else:
        assert last == expected
    assert snapshot(ca.dir) == before
    assert _tree(ca.work) == work_before
    assert ca.binder.calls == calls_before or ca.binder.refuse_bind
    log_after = (ca.dir / "ops.log").read_text() if not (ca.dir / "ops.log").is_symlink() else log_before
    added = log_after[len(log_before) :].splitlines()
    assert log_after.startswith(log_before)
    assert all(json.loads(line)["event"] == "ca.refused" for line in added)
    for secret in (ISSUING_PASSPHRASE, *(case.input or "").split("\n")):
        if secret:
            assert secret not in result.output
            assert secret not in log_after


def test_a_second_admin_is_refused_while_the_lock_is_held(populated: tuple[CA, dict[str, str]]) -> None:
    ca, _ = populated
    before = snapshot(ca.dir)
    fd = os.open(ca.dir / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        result = ca.run("revoke", "alice", "--reason", "keyCompromise")
    finally:
        os.close(fd)
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "Error: another CA operation is in progress (the CA lock is held); try again in a moment"
    )
    assert snapshot(ca.dir) == before
