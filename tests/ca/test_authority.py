"""ca/authority.py: CRL freshness, the timer's `crl --if-due`, the reload hook. Time moves, never sleeps."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import timedelta

from cryptography import x509

from tests.ca.conftest import CA
from tests.ca.openssl_helpers import verify


def _crl(ca: CA) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl((ca.dir / "issuing" / "issuing-crl.pem").read_bytes())


def _crl_number(ca: CA) -> int:
    return _crl(ca).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_init_publishes_a_crl_valid_for_crl_days(ca: CA) -> None:
    crl = _crl(ca)
    assert crl.next_update_utc == ca.clock.now + timedelta(days=7)
    assert _crl_number(ca) == 1
    assert crl.is_signature_valid(
        x509.load_pem_x509_certificate((ca.dir / "issuing" / "issuing.pem").read_bytes()).public_key()  # type: ignore[arg-type]
    )


def test_crl_if_due_waits_a_day_then_refreshes(ca: CA) -> None:
    ca.clock.advance(hours=23)
    before = (ca.dir / "publish" / "crl.pem").read_bytes()
    assert "CRL not due yet" in ca.ok("crl", "--if-due").output
    assert (ca.dir / "publish" / "crl.pem").read_bytes() == before
    ca.clock.advance(hours=1)
    assert "published a new CRL" in ca.ok("crl", "--if-due").output
    assert _crl_number(ca) == 2
    assert _crl(ca).next_update_utc == ca.clock.now + timedelta(days=7)


def test_a_missing_or_damaged_crl_is_always_due(ca: CA) -> None:
    (ca.dir / "issuing" / "issuing-crl.pem").write_bytes(b"garbage")
    assert "published a new CRL" in ca.ok("crl", "--if-due").output
    assert _crl_number(ca) == 2


def test_an_expired_crl_fails_closed_and_a_refresh_restores_access(ca: CA) -> None:
    """What Apache's chain check does: past nextUpdate every client is refused. The timer prevents it."""
    _, _, serial = ca.issue("alice")
    cert = ca.dir / "certs" / f"{serial}.pem"
    late = ca.clock.now + timedelta(days=8)
    expired = verify(ca.dir, cert, crl=True, at=late)
    assert expired.returncode != 0
    assert "CRL has expired" in expired.stderr
    ca.clock.now = late
    ca.ok("crl", "--if-due")
    assert verify(ca.dir, cert, crl=True, at=late).returncode == 0


def test_daily_refreshes_keep_the_crl_valid_for_a_year(ca: CA) -> None:
    _, _, serial = ca.issue("alice", "--days", "300")
    numbers = []
    for _ in range(290):
        ca.clock.advance(hours=24)
        ca.run("crl", "--if-due")  # exit 3 from day 305 on would be the root CRL reminder: not reached
        numbers.append(_crl_number(ca))
        next_update = _crl(ca).next_update_utc
        assert next_update is not None
        assert next_update - ca.clock.now >= timedelta(days=6)
    assert numbers == sorted(set(numbers))  # strictly increasing CRL numbers
    assert verify(ca.dir, ca.dir / "certs" / f"{serial}.pem", crl=True, at=ca.clock.now).returncode == 0


def test_the_timer_fails_loudly_when_the_root_crl_needs_the_offline_key(ca: CA) -> None:
    ca.clock.advance(days=365 - 59)
    result = ca.run("crl", "--if-due")
    assert result.exit_code == 3
    assert "the root CRL expires" in result.stderr
    assert "python -m ca root-crl --root-key PATH" in result.stderr
    assert _crl(ca).next_update_utc == ca.clock.now + timedelta(days=7)  # the issuing CRL was still refreshed


def test_revocation_survives_a_crl_refresh(ca: CA) -> None:
    _, _, serial = ca.issue("alice")
    ca.ok("revoke", "alice", "--reason", "keyCompromise")
    ca.clock.advance(days=3)
    ca.ok("crl")
    revoked = _crl(ca).get_revoked_certificate_by_serial_number(int(serial, 16))
    assert revoked is not None
    reason = revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.key_compromise


def test_the_reload_hook_runs_after_each_crl_change(make_ca: Callable[..., CA]) -> None:
    # The hook runs in the admin's working directory (the tests' `work`).
    probe = make_ca(reload_command=[sys.executable, "-c", "open('reloaded', 'a').write('x')"])
    probe.ok("issue", "alice", "--out", str(probe.work / "a.p12"))
    assert not (probe.work / "reloaded").exists()  # issuing does not change the CRL
    probe.ok("revoke", "alice", "--reason", "affiliationChanged")
    probe.ok("crl")
    assert (probe.work / "reloaded").read_text() == "xx"


def test_a_failed_reload_is_reported_but_the_crl_stands(make_ca: Callable[..., CA]) -> None:
    ca = make_ca(reload_command=[sys.executable, "-c", "import sys; sys.exit(7)"])
    _, _, serial = ca.issue("alice")
    result = ca.run("revoke", "alice", "--reason", "affiliationChanged")
    assert result.exit_code == 3
    assert "the reload command exited 7: Apache still serves the OLD CRL" in result.stderr
    assert _crl(ca).get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
    assert '"event": "ca.reload_failed"' in (ca.dir / "ops.log").read_text()


def test_a_failed_reload_after_a_renewal_still_shows_the_bundle_password(make_ca: Callable[..., CA]) -> None:
    ca = make_ca(reload_command=[sys.executable, "-c", "import sys; sys.exit(7)"])
    ca.issue("alice")
    out = ca.work / "renewed.p12"
    result = ca.run("issue", "alice", "--replace", "--out", str(out))
    assert result.exit_code == 3
    assert "bundle password (shown ONCE" in result.stdout
    assert "Apache still serves the OLD CRL" in result.stderr
    assert out.exists()
