"""The admin's workflows through `python -m ca`, with a fake web app binder and a movable clock.

The real web app binder (a subprocess running `flask --app webapp certs ...`) is exercised end to end
in tests/ca/test_webapp_binding.py when the web app's `certs` commands exist.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from ca import authority, fsutil
from ca.index import parse_index
from tests.ca.conftest import CA, ISSUING_PASSPHRASE, ROOT_PASSPHRASE, snapshot, write_secret
from tests.ca.openssl_helpers import verify


def _index(ca: CA) -> dict[str, dict[str, object]]:
    return {c["serial"]: c for c in json.loads((ca.dir / "index.json").read_text())["certificates"]}


def _crl_serials(ca: CA) -> set[str]:
    crl = x509.load_pem_x509_crl((ca.dir / "issuing" / "issuing-crl.pem").read_bytes())
    return {format(r.serial_number, "x") for r in crl}


def test_init_lays_out_a_private_ca_and_says_where_apache_looks(ca: CA) -> None:
    for d in ("", "root", "issuing", "certs", "publish"):
        assert (ca.dir / d).stat().st_mode & 0o777 == 0o700
    for f in ca.dir.rglob("*"):
        if f.is_file():
            assert f.stat().st_mode & 0o777 == 0o600, f
    chain = x509.load_pem_x509_certificates((ca.dir / "publish" / "chain.pem").read_bytes())
    assert [c.subject.rfc4514_string() for c in chain] == [
        "CN=Strongroom Issuing CA,O=Strongroom",
        "CN=Strongroom Root CA,O=Strongroom",
    ]
    crls = (ca.dir / "publish" / "crl.pem").read_text().count("BEGIN X509 CRL")
    assert crls == 2  # issuing + root, for SSLCARevocationCheck chain
    keys = [
        (ca.dir / "root" / "root-key.pem").read_text(),
        (ca.dir / "issuing" / "issuing-key.pem").read_text(),
    ]
    assert all("BEGIN ENCRYPTED PRIVATE KEY" in k for k in keys)


def test_issue_binds_then_records(ca: CA) -> None:
    bundle, _, serial = ca.issue("alice")
    entry = _index(ca)[serial]
    assert entry["name"] == "alice"
    assert entry["bound"] is True
    assert ca.binder.calls == [("bind", "alice", entry["fingerprint"])]
    assert bundle.exists()
    assert (ca.dir / "certs" / f"{serial}.pem").exists()


def test_service_and_server_certificates_are_never_bound(ca: CA) -> None:
    ca.ok("service", "crm", "--out", str(ca.work / "crm.p12"))
    out = ca.ok("server", "localhost", "127.0.0.1", "--out-dir", str(ca.work)).output
    assert ca.binder.calls == []
    assert all(e["bound"] is False for e in _index(ca).values())
    key = ca.work / "localhost.key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert f"SSLCertificateKeyFile {key}" in out
    assert len(x509.load_pem_x509_certificates((ca.work / "localhost.crt.pem").read_bytes())) == 2


def test_revoke_publishes_the_crl_and_unbinds(ca: CA) -> None:
    _, _, serial = ca.issue("alice")
    fp = _index(ca)[serial]["fingerprint"]
    cert = ca.dir / "certs" / f"{serial}.pem"
    assert verify(ca.dir, cert, crl=True).returncode == 0
    result = ca.ok("revoke", "alice", "--reason", "affiliationChanged")
    assert f"revoked alice's certificate {serial}" in result.output
    assert serial in _crl_serials(ca)
    failed = verify(ca.dir, cert, crl=True)
    assert failed.returncode != 0
    assert "certificate revoked" in failed.stderr
    assert ca.binder.calls[-1] == ("unbind", fp, "certificate revoked: affiliationChanged")
    assert _index(ca)[serial]["bound"] is False
    assert "revoked" in ca.ok("show", serial).output


def test_revoke_by_serial_with_colons(ca: CA) -> None:
    _, _, serial = ca.issue("alice")
    colons = ":".join(serial[i : i + 2] for i in range(0, len(serial), 2)).upper()
    ca.ok("revoke", colons, "--reason", "keyCompromise")
    assert serial in _crl_serials(ca)


def test_revoke_when_the_web_app_is_down_still_publishes_the_crl_and_fails_loudly(ca: CA) -> None:
    _, _, serial = ca.issue("alice")
    ca.binder.refuse_unbind = "database unavailable"
    result = ca.run("revoke", "alice", "--reason", "affiliationChanged")
    assert result.exit_code == 3
    assert "revoked alice (serial" in result.output
    assert "the web app did not unbind the certificate (database unavailable)" in result.output
    assert f"python -m ca unbind {serial}" in result.output
    assert serial in _crl_serials(ca)  # revocation was not blocked by the web app
    assert _index(ca)[serial]["bound"] is True
    assert "binding still active" in ca.ok("list", "--all").output
    log = (ca.dir / "ops.log").read_text()
    assert '"event": "ca.unbind_failed"' in log
    # Retrying while it is still down keeps failing loudly; once it is back, the retry clears it.
    assert ca.run("unbind", "alice").exit_code == 3
    ca.binder.refuse_unbind = None
    ca.ok("unbind", "alice")
    assert _index(ca)[serial]["bound"] is False


def test_a_refused_bind_leaves_no_trace(ca: CA) -> None:
    before = snapshot(ca.dir)
    ca.binder.refuse_bind = "unknown user: mallory"
    result = ca.run("issue", "mallory", "--out", str(ca.work / "m.p12"))
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: the web app refused to bind the certificate to mallory: unknown user: mallory "
        "(nothing was issued)"
    ]
    assert snapshot(ca.dir) == before
    assert not (ca.work / "m.p12").exists()


def test_a_failed_index_write_undoes_the_bind_and_the_bundle(ca: CA, monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(ca.dir)
    real_write = fsutil.atomic_write

    def failing_write(path: Path, data: bytes) -> None:
        if path.name == "index.json":
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(authority, "atomic_write", failing_write)
    result = ca.run("issue", "alice", "--out", str(ca.work / "a.p12"))
    assert result.exit_code == 4
    assert "Error: I/O failure: No space left on device" in result.output
    assert ca.binder.bound == {}  # bound, then unbound again
    assert [c[0] for c in ca.binder.calls] == ["bind", "unbind"]
    assert snapshot(ca.dir) == before
    assert not (ca.work / "a.p12").exists()


def test_replace_renews_and_revokes_the_old_one_as_superseded(ca: CA) -> None:
    _, _, old = ca.issue("alice")
    _, _, new = ca.issue("alice", "--replace")
    assert old != new
    index = _index(ca)
    assert index[old]["reason"] == "superseded"
    assert index[old]["bound"] is False  # the web app's bind of the new one ended the old binding
    assert index[new]["revoked_at"] is None
    assert old in _crl_serials(ca)
    assert ca.binder.bound == {index[new]["fingerprint"]: "alice"}


def test_expired_certificates_do_not_block_a_new_one(ca: CA) -> None:
    ca.issue("alice", "--days", "1")
    ca.clock.advance(days=2)
    ca.issue("alice")  # no --replace needed: the old one is expired, not valid
    assert "expired" in ca.ok("list", "--all").output


def test_list_and_show(ca: CA) -> None:
    _, _, serial = ca.issue("alice")
    ca.ok("service", "crm", "--out", str(ca.work / "crm.p12"))
    out = ca.ok("list").output
    assert "alice" in out
    assert "crm" in out
    assert "employee" in out
    assert serial in out
    shown = ca.ok("show", "alice").output
    assert "UID=alice,CN=alice,OU=Employees,O=Strongroom" in shown
    assert "bound in web app: yes" in shown


def test_typed_bundle_password_is_accepted_when_strong(ca: CA) -> None:
    pw = "tundra-velvet-orchid-42-saffron"
    out = ca.work / "a.p12"
    result = ca.ok("issue", "alice", "--out", str(out), "--ask-password", input=f"{pw}\n{pw}\n")
    assert "shown ONCE" not in result.output
    assert pw not in result.output.replace("*", "")


def test_the_issuing_passphrase_can_be_typed(ca: CA) -> None:
    result = ca.run(
        "issue", "alice", "--out", str(ca.work / "a.p12"), passphrase=False, input=ISSUING_PASSPHRASE + "\n"
    )
    assert result.exit_code == 0, result.output


def test_root_crl_needs_the_root_key_and_its_passphrase(ca: CA, tmp_path: Path) -> None:
    offline = tmp_path / "usb"
    offline.mkdir(mode=0o700)
    (ca.dir / "root" / "root-key.pem").rename(offline / "root-key.pem")
    missing = ca.run("root-crl", input=ROOT_PASSPHRASE + "\n")
    assert missing.exit_code == 1
    assert "the root key is not at" in missing.output
    ca.clock.advance(days=300)
    result = ca.run("--root-key", str(offline / "root-key.pem"), "root-crl", input=ROOT_PASSPHRASE + "\n")
    assert result.exit_code == 0, result.output
    root_crl = x509.load_pem_x509_crl((ca.dir / "root" / "root-crl.pem").read_bytes())
    assert root_crl.next_update_utc is not None
    assert root_crl.next_update_utc == ca.clock.now + timedelta(days=365)
    assert parse_index((ca.dir / "index.json").read_bytes()).root_crl_number == 2


def test_the_operations_log_says_who_did_what_and_holds_no_secrets(ca: CA) -> None:
    _, password, serial = ca.issue("alice")
    ca.ok("revoke", "alice", "--reason", "affiliationChanged")
    ca.run("issue", "bob", "--out", str(ca.work / "b.p12"), "--ask-password", input="password1\npassword1\n")
    lines = [json.loads(line) for line in (ca.dir / "ops.log").read_text().splitlines()]
    assert [entry["event"] for entry in lines] == [
        "ca.init",
        "ca.issue",
        "ca.revoke",
        "ca.unbind",
        "ca.refused",
    ]
    assert all(entry["who"] for entry in lines)
    assert lines[1]["serial"] == serial
    text = (ca.dir / "ops.log").read_text()
    for secret in (password, ISSUING_PASSPHRASE, ROOT_PASSPHRASE, "password1", "PRIVATE KEY"):
        assert secret not in text


def test_new_issuing_ca_is_a_clean_cut(ca: CA, tmp_path: Path) -> None:
    bundle, _, old_serial = ca.issue("alice")
    ca.ok("service", "crm", "--out", str(ca.work / "crm.p12"))
    old_issuing = x509.load_pem_x509_certificate((ca.dir / "issuing" / "issuing.pem").read_bytes())
    old_cert = ca.dir / "certs" / f"{old_serial}.pem"
    new_pass = write_secret(tmp_path / "secrets" / "issuing-2.pass", "harbor-tulip-granite-violin-58")
    result = ca.run(
        "--root-passphrase-file", str(ca.root_pass), "--passphrase-file", str(new_pass),
        "new-issuing", "--reason", "superseded", "--yes",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "revoked 2 certificate(s)" in result.output
    new_issuing = x509.load_pem_x509_certificate((ca.dir / "issuing" / "issuing.pem").read_bytes())
    assert new_issuing.serial_number != old_issuing.serial_number
    root_crl = x509.load_pem_x509_crl((ca.dir / "root" / "root-crl.pem").read_bytes())
    assert root_crl.get_revoked_certificate_by_serial_number(old_issuing.serial_number) is not None
    assert (ca.dir / "issuing" / "retired" / f"issuing-{old_issuing.serial_number:x}.pem").exists()
    # The old certificate no longer verifies: its CA left the chain and is revoked by the root.
    assert verify(ca.dir, old_cert, crl=True).returncode != 0
    assert ca.binder.bound == {}
    assert all(e["revoked_at"] for e in _index(ca).values())
    # The new CA issues with the new passphrase (the old one no longer opens the issuing key).
    ca.issuing_pass = new_pass
    _, _, new_serial = ca.issue("alice")
    assert verify(ca.dir, ca.dir / "certs" / f"{new_serial}.pem", crl=True).returncode == 0
    # The yearly root CRL renewal keeps the retired CA listed.
    ca.clock.advance(days=1)
    assert ca.run("--root-passphrase-file", str(ca.root_pass), "root-crl").exit_code == 0
    root_crl = x509.load_pem_x509_crl((ca.dir / "root" / "root-crl.pem").read_bytes())
    assert root_crl.get_revoked_certificate_by_serial_number(old_issuing.serial_number) is not None
    assert bundle.exists()


def test_names_follow_the_web_app_usernames(ca: CA) -> None:
    _, _, serial = ca.issue("Alice.Smith-2")
    assert ca.binder.calls[0][1] == "Alice.Smith-2"
    assert "UID=Alice.Smith-2" in ca.ok("show", serial).output
