"""ca/pki.py: the certificate profiles and the PKCS#12 bundle, checked with the real openssl."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca import pki
from ca.config import DEFAULT_PKCS12_KDF_ROUNDS
from ca.index import Profile
from tests.ca.conftest import CA
from tests.ca.openssl_helpers import openssl, verify

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _chain() -> tuple[x509.Certificate, pki.CAKey]:
    root_key, issuing_key = pki.new_ca_key(), pki.new_ca_key()
    root = pki.build_root(root_key, org="T", now=NOW, days=3650)
    issuing = pki.build_issuing(
        issuing_key.public_key(), root=root, root_key=root_key, org="T", now=NOW, days=1095
    )
    return issuing, issuing_key


def _leaf(profile: Profile, name: str, hosts: tuple[str, ...] = ()) -> x509.Certificate:
    issuing, key = _chain()
    return pki.build_leaf(
        profile,
        name,
        pki.new_leaf_key().public_key(),
        serial=x509.random_serial_number(),
        issuer=issuing,
        issuer_key=key,
        org="T",
        now=NOW,
        days=90,
        hosts=hosts,
    )


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _policies(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return [
        p.policy_identifier for p in cert.extensions.get_extension_for_class(x509.CertificatePolicies).value
    ]


def test_employee_profile_is_client_auth_only_and_names_the_user() -> None:
    cert = _leaf(Profile.EMPLOYEE, "alice")
    assert _eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.subject.get_attributes_for_oid(NameOID.USER_ID)[0].value == "alice"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "Employees"
    assert _policies(cert) == [pki.POLICY_EMPLOYEE]
    assert (cert.not_valid_after_utc - NOW).days == 90


def test_service_profile_is_distinguishable_from_employees() -> None:
    cert = _leaf(Profile.SERVICE, "crm")
    assert _eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert _policies(cert) == [pki.POLICY_SERVICE] != [pki.POLICY_EMPLOYEE]
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "Services"
    assert not cert.subject.get_attributes_for_oid(NameOID.USER_ID)  # never mistaken for a web app user


def test_server_profile_has_server_auth_and_san() -> None:
    cert = _leaf(Profile.SERVER, "localhost", ("localhost", "127.0.0.1"))
    assert _eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_leaf_never_outlives_its_issuer() -> None:
    issuing, key = _chain()
    cert = pki.build_leaf(
        Profile.EMPLOYEE, "a", pki.new_leaf_key().public_key(), serial=1, issuer=issuing, issuer_key=key,
        org="T", now=NOW, days=5000,
    )  # fmt: skip
    assert cert.not_valid_after_utc == issuing.not_valid_after_utc


def test_serials_are_large_and_random(ca: CA) -> None:
    serials = {int(ca.issue(f"user{i}")[2], 16) for i in range(3)}
    assert len(serials) == 3
    assert all(s.bit_length() > 120 for s in serials)  # 159 random bits: below 2^120 is 1 in 2^39


def test_issued_certificates_verify_against_the_published_chain(ca: CA) -> None:
    _, _, serial = ca.issue("alice")
    ca.ok("service", "crm", "--out", str(ca.work / "crm.p12"))
    ca.ok("server", "localhost", "127.0.0.1", "--out-dir", str(ca.work))
    for cert in (ca.dir / "certs").glob("*.pem"):
        result = verify(ca.dir, cert, crl=True)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().endswith("OK")
    purpose = verify(ca.dir, ca.dir / "certs" / f"{serial}.pem", crl=False, extra=("-purpose", "sslclient"))
    assert purpose.returncode == 0, purpose.stderr
    wrong = verify(ca.dir, ca.dir / "certs" / f"{serial}.pem", crl=False, extra=("-purpose", "sslserver"))
    assert wrong.returncode != 0  # an employee certificate cannot serve TLS


def test_bundle_opens_with_its_password_and_not_without(ca: CA) -> None:
    bundle, password, serial = ca.issue("alice")
    assert bundle.stat().st_mode & 0o777 == 0o600
    good = openssl("pkcs12", "-in", str(bundle), "-nodes", "-passin", f"pass:{password}")
    assert good.returncode == 0, good.stderr
    assert "BEGIN PRIVATE KEY" in good.stdout
    assert "CN=alice" in good.stdout.replace(" = ", "=")
    for wrong in ("", "wrong-password", password[:-1]):
        bad = openssl("pkcs12", "-in", str(bundle), "-nodes", "-passin", f"pass:{wrong}")
        assert bad.returncode != 0
        assert "BEGIN PRIVATE KEY" not in bad.stdout
    key, cert, extra = pkcs12.load_key_and_certificates(bundle.read_bytes(), password.encode())
    assert cert is not None
    assert format(cert.serial_number, "x") == serial
    assert key is not None
    assert key.public_key() == cert.public_key()
    assert [c.subject for c in extra] == [
        x509.load_pem_x509_certificate((ca.dir / "issuing/issuing.pem").read_bytes()).subject
    ]


def test_production_pkcs12_encryption_is_modern_and_openssl_reads_it(tmp_path: Path) -> None:
    """The production default (not the tests' lowered KDF cost): AES-256-CBC, PBKDF2-SHA256, HMAC-SHA256."""
    issuing, key = _chain()
    leaf_key = pki.new_leaf_key()
    cert = pki.build_leaf(
        Profile.EMPLOYEE, "alice", leaf_key.public_key(), serial=7, issuer=issuing, issuer_key=key, org="T",
        now=NOW, days=90,
    )  # fmt: skip
    bundle = tmp_path / "a.p12"
    bundle.write_bytes(
        pki.pkcs12_bundle(
            "alice", leaf_key, cert, [issuing], b"s3cret-Pass-phrase", kdf_rounds=DEFAULT_PKCS12_KDF_ROUNDS
        )
    )
    info = openssl("pkcs12", "-in", str(bundle), "-info", "-noout", "-passin", "pass:s3cret-Pass-phrase")
    assert info.returncode == 0, info.stderr  # no -legacy needed
    text = info.stderr + info.stdout
    assert f"PBES2, PBKDF2, AES-256-CBC, Iteration {DEFAULT_PKCS12_KDF_ROUNDS}, PRF hmacWithSHA256" in text
    assert "MAC: sha256" in text
    assert "RC2" not in text
    assert "3DES" not in text
    assert "sha1" not in text.lower()


@pytest.mark.parametrize("wrong", [b"", b"nope"])
def test_decrypt_key_with_the_wrong_passphrase_says_only_that(wrong: bytes) -> None:
    root_key = pki.new_ca_key()
    root = pki.build_root(root_key, org="T", now=NOW, days=10)
    pem = pki.encrypt_key(root_key, b"right-passphrase")
    with pytest.raises(
        Exception, match=r"^wrong passphrase for the root CA key \(nothing was changed\)$"
    ) as info:
        pki.decrypt_key(pem, wrong, root, "root CA")
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
