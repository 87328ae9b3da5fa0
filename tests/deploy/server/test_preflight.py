"""deploy/server/__main__.py preflight: before anything is touched, the files the settings name are
plain files, and each private key belongs to its certificate (Apache's names the host): a wrong pair
would only show as Apache or rsyslog failing to start after the old files were replaced."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from deploy.server.__main__ import preflight
from deploy.server.settings import Settings, parse
from tests.support import need_binary

EXAMPLE = (Path(__file__).resolve().parents[3] / "deploy/server/server.toml.example").read_text()
HOST = "vault.example.internal"


def key_file(path: Path, *, password: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc))
    return key


def cert_file(path: Path, key: ec.EllipticCurvePrivateKey, name: str) -> None:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    need_binary("openssl")
    out = {n: tmp_path / n for n in ("server.crt", "server.key", "other.key", "enc.key", "chain", "crl")}
    cert_file(out["server.crt"], key_file(out["server.key"]), HOST)
    key_file(out["other.key"])
    key_file(out["enc.key"], password=b"not-asked-for")
    out["chain"].write_text("chain\n")
    out["crl"].write_text("crl\n")
    return out


def settings(files: dict[str, Path], **tls: str) -> Settings:
    s = parse(EXAMPLE)
    server = {"server_cert": str(files["server.crt"]), "server_key": str(files["server.key"])} | tls
    return dataclasses.replace(
        s,
        tls=dataclasses.replace(s.tls, ca_chain=str(files["chain"]), crl=str(files["crl"]), **server),
        loghost=dataclasses.replace(
            s.loghost,
            ca_file=str(files["chain"]),
            cert_file=str(files["server.crt"]),
            key_file=str(files["server.key"]),
        ),
    )


def test_matching_pair_passes(files: dict[str, Path]) -> None:
    assert preflight(settings(files)) == []


@pytest.mark.parametrize(
    ("setting", "name", "problem"),
    [
        ("server_key", "other.key", "tls.server_key: PATH is not the key of tls.server_cert"),
        ("server_key", "enc.key", "tls.server_key: PATH is not an unencrypted PEM private key"),
        ("server_key", "crl", "tls.server_key: PATH is not an unencrypted PEM private key"),
        ("server_cert", "chain", "tls.server_cert: PATH is not a PEM certificate"),
    ],
)
def test_a_key_that_is_not_the_certificates_is_refused(
    files: dict[str, Path], setting: str, name: str, problem: str
) -> None:
    problems = preflight(settings(files, **{setting: str(files[name])}))
    assert len(problems) == 1, problems
    assert problems[0].startswith(problem.replace("PATH", str(files[name])))
    # Nothing of a key's content in the message.
    assert "PRIVATE" not in problems[0]


def test_a_certificate_for_another_host_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    cert_file(tmp_path / "other.crt", key_file(tmp_path / "other2.key"), "other.example.internal")
    s = settings(files, server_cert=str(tmp_path / "other.crt"), server_key=str(tmp_path / "other2.key"))
    assert preflight(s) == [f"tls.server_cert: {tmp_path / 'other.crt'} does not name {HOST} (hostname)"]


def test_a_symlink_or_missing_file_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "link.crt").symlink_to(files["server.crt"])
    s = settings(files, server_cert=str(tmp_path / "link.crt"), server_key=str(tmp_path / "absent.key"))
    assert preflight(s) == [
        f"tls.server_cert: {tmp_path / 'link.crt'} is not a regular file",
        f"tls.server_key: {tmp_path / 'absent.key'} is not a regular file",
    ]
