"""X.509 building blocks on `cryptography`: keys, the three certificate profiles, CRLs, PKCS#12.

No I/O and no clock here: callers pass `now`, so tests can move time.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from ca.errors import WrongPassphrase
from ca.index import Profile, Reason

# Certificate policy OIDs under the UUID arc (2.25, ITU-T X.667): no registration needed, never collide.
# The web app (and Apache's SSLRequire, if wanted) tells an employee from a machine client by them,
# as well as by the OU.
POLICY_EMPLOYEE = ObjectIdentifier("2.25.22033508438951570933007078275750193565")
POLICY_SERVICE = ObjectIdentifier("2.25.49452677250441379777008201441656671832")
POLICY_SERVER = ObjectIdentifier("2.25.332953976194850092138277269184397963864")

OU = {Profile.EMPLOYEE: "Employees", Profile.SERVICE: "Services", Profile.SERVER: "Servers"}
POLICY = {Profile.EMPLOYEE: POLICY_EMPLOYEE, Profile.SERVICE: POLICY_SERVICE, Profile.SERVER: POLICY_SERVER}

# Tolerate a client whose clock is a little behind when a certificate is used right after issue.
BACKDATE = timedelta(minutes=5)

CAKey = ec.EllipticCurvePrivateKey


def new_ca_key() -> CAKey:
    return ec.generate_private_key(ec.SECP384R1())


def new_leaf_key() -> CAKey:
    # P-256: accepted by every current browser, OS key store and OpenSSL for TLS client auth.
    return ec.generate_private_key(ec.SECP256R1())


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER, lowercase hex: the value the web app binds to a user."""
    return cert.fingerprint(hashes.SHA256()).hex()


def encrypt_key(key: CAKey, passphrase: bytes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )


def decrypt_key(pem: bytes, passphrase: bytes, cert: x509.Certificate, what: str) -> CAKey:
    """Unlock a CA key and check it belongs to `cert`; every failure is one opaque `WrongPassphrase`."""
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase)
    except (ValueError, TypeError):
        raise WrongPassphrase(f"wrong passphrase for the {what} key (nothing was changed)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise WrongPassphrase(f"the {what} key does not match the {what} certificate (nothing was changed)")
    return key


def _ca_name(org: str, cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
    )  # fmt: skip


def _leaf_usage() -> x509.KeyUsage:
    # ECDSA client and server auth (TLS 1.2 ECDHE and TLS 1.3) need digitalSignature and nothing else.
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
    )  # fmt: skip


def build_root(key: CAKey, *, org: str, now: datetime, days: int) -> x509.Certificate:
    name = _ca_name(org, f"{org} Root CA")
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        # path length 1: the root signs issuing CAs, which sign only leaves.
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )


def build_issuing(
    public_key: ec.EllipticCurvePublicKey,
    *,
    root: x509.Certificate,
    root_key: CAKey,
    org: str,
    now: datetime,
    days: int,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(_ca_name(org, f"{org} Issuing CA"))
        .issuer_name(root.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + timedelta(days=days), root.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        # OpenSSL and browsers honour EKU on intermediates: this CA cannot mint code-signing certs.
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False
        )
        .sign(root_key, hashes.SHA384())
    )


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def build_leaf(
    profile: Profile,
    name: str,
    public_key: ec.EllipticCurvePublicKey,
    *,
    serial: int,
    issuer: x509.Certificate,
    issuer_key: CAKey,
    org: str,
    now: datetime,
    days: int,
    hosts: Sequence[str] = (),
) -> x509.Certificate:
    attrs = [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, OU[profile]),
        x509.NameAttribute(NameOID.COMMON_NAME, name),
    ]
    if profile is Profile.EMPLOYEE:
        attrs.append(x509.NameAttribute(NameOID.USER_ID, name))  # the web app username, unambiguous
    eku = ExtendedKeyUsageOID.SERVER_AUTH if profile is Profile.SERVER else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(now - BACKDATE)
        # Never outlive the issuing CA: a chain that expires early fails everywhere at once.
        .not_valid_after(min(now + timedelta(days=days), issuer.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(
            x509.CertificatePolicies([x509.PolicyInformation(POLICY[profile], None)]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    if profile is Profile.SERVER:
        builder = builder.add_extension(_san(hosts), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


_REASON_FLAGS = {
    Reason.KEY_COMPROMISE: x509.ReasonFlags.key_compromise,
    Reason.AFFILIATION_CHANGED: x509.ReasonFlags.affiliation_changed,
    Reason.SUPERSEDED: x509.ReasonFlags.superseded,
    Reason.CESSATION_OF_OPERATION: x509.ReasonFlags.cessation_of_operation,
    Reason.CA_COMPROMISE: x509.ReasonFlags.ca_compromise,
}


def build_crl(
    revoked: Iterable[tuple[int, datetime, Reason]],
    *,
    issuer: x509.Certificate,
    issuer_key: CAKey,
    number: int,
    now: datetime,
    days: int,
) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(now - BACKDATE)
        .next_update(now + timedelta(days=days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    for serial, when, reason in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when)
        if reason in _REASON_FLAGS:  # RFC 5280: omit the reason code rather than say "unspecified"
            entry = entry.add_extension(x509.CRLReason(_REASON_FLAGS[reason]), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(issuer_key, hashes.SHA384())


def pkcs12_bundle(
    name: str,
    key: CAKey,
    cert: x509.Certificate,
    chain: Sequence[x509.Certificate],
    password: bytes,
    *,
    kdf_rounds: int,
) -> bytes:
    """A PKCS#12 bundle with PBES2 (PBKDF2-SHA256, AES-256-CBC) and an HMAC-SHA256 MAC.

    Not the legacy 3DES/RC2 + SHA-1 that OpenSSL 3 refuses without `-legacy`.
    """
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(kdf_rounds)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(password)
    )
    return pkcs12.serialize_key_and_certificates(name.encode("utf-8"), key, cert, list(chain), encryption)


def pem(cert: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
