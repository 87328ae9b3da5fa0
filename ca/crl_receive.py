"""The web node's side of the CRL push: the forced command of the CA host's SSH key.

    python -m ca.crl_receive --crl /etc/apache2/strongroom-crl/crl.pem \
        --chain /etc/apache2/strongroom/chain.pem --reload-command "sudo -n /usr/sbin/apache2ctl graceful"

Reads a CRL file (PEM, the CA's publish/crl.pem: the issuing CA's CRL and the root's) from stdin and
installs it over --crl only if it is one this node's Apache should load:

- at most MAX_BYTES, nothing but PEM "X509 CRL" blocks;
- each CRL signed by a CA of the installed chain (--chain, Apache's SSLCACertificateFile), and one
  current CRL for every CA there: under `SSLCARevocationCheck chain` a missing or expired one would
  lock every employee out;
- not older than the installed CRL of the same CA (no rollback): whoever holds the CA host's push
  key, or replays an old push, must not un-revoke a certificate. A lower CRL number, an earlier
  lastUpdate, or the same number with other contents is refused.

Then it is written atomically beside the installed file (same owner and mode) and Apache is reloaded
gracefully. Any refusal: exit 1 and one line on stderr, nothing changed. Installed but the reload
failed: exit 3 (the next reload picks it up). The SSH command the client asked for is ignored.
Standard library, `cryptography` and `click` only: this runs on the web nodes.
"""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import stat
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import click
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from common import atomic

# Each revoked entry is ~60 bytes of PEM: 1 MiB is >15 000 revocations, and bounds what an
# unauthenticated-looking stream can make this process hold.
MAX_BYTES = 1024 * 1024
MAX_CRLS = 8  # one per CA in the chain: root and issuing (and a retiring issuing CA)
RELOAD_TIMEOUT = 30
_BLOCK = re.compile(rb"-----BEGIN X509 CRL-----\r?\n[A-Za-z0-9+/=\r\n]+-----END X509 CRL-----")
_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


class Refused(click.ClickException):
    """Nothing was changed."""

    exit_code = 1


class ReloadFailed(click.ClickException):
    """The new CRL is installed, but Apache still serves the old one."""

    exit_code = 3


def parse_crls(data: bytes, *, what: str) -> list[x509.CertificateRevocationList]:
    """Every CRL in `data`, which must hold PEM CRL blocks and whitespace only."""
    blocks = _BLOCK.findall(data)
    if not blocks or _BLOCK.sub(b"", data).strip():
        raise Refused(f"{what} is not a PEM CRL file (only X509 CRL blocks are accepted)")
    if len(blocks) > MAX_CRLS:
        raise Refused(f"{what} holds more than {MAX_CRLS} CRLs")
    try:
        return [x509.load_pem_x509_crl(block) for block in blocks]
    except ValueError:
        raise Refused(f"{what} holds a CRL that does not parse") from None


def load_chain(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise Refused(f"cannot read the installed chain {path}: {e.strerror}") from None
    try:
        certs = [x509.load_pem_x509_certificate(block) for block in _CERT.findall(data)]
    except ValueError:
        certs = []
    if not certs:
        raise Refused(f"the installed chain {path} holds no certificate: fix this node by hand")
    return certs


def _number(crl: x509.CertificateRevocationList, what: str) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        # RFC 5280 5.2.3: conforming CRL issuers MUST include it; without it rollback is undetectable.
        raise Refused(f"{what} has no CRL number") from None


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    key = ca.public_key()
    return isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey) and crl.is_signature_valid(key)


def check(new: bytes, *, chain: Sequence[x509.Certificate], installed: bytes, now: datetime) -> None:
    """Raise Refused unless `new` may replace `installed` (see the module docstring)."""
    crls = parse_crls(new, what="the input")
    current = {c.issuer.public_bytes(): c for c in parse_crls(installed, what="the installed CRL file")}
    by_ca: dict[bytes, x509.CertificateRevocationList] = {}
    for crl in crls:
        ca = next((c for c in chain if c.subject == crl.issuer), None)
        if ca is None or not _signed_by(crl, ca):
            raise Refused("a CRL is not signed by a CA of the installed chain")
        if crl.issuer.public_bytes() in by_ca:
            raise Refused(f"two CRLs for {crl.issuer.rfc4514_string()}")
        by_ca[crl.issuer.public_bytes()] = crl
    for ca in chain:
        name = ca.subject.rfc4514_string()
        fresh = by_ca.get(ca.subject.public_bytes())
        if fresh is None:
            raise Refused(f"no CRL for {name}: Apache would refuse every client")
        if fresh.next_update_utc is None or fresh.next_update_utc <= now:
            raise Refused(f"the CRL for {name} has expired: Apache would refuse every client")
        number = _number(fresh, f"the CRL for {name}")
        old = current.get(ca.subject.public_bytes())
        if old is None:
            continue  # the installed file had none for this CA: nothing to roll back
        old_number = _number(old, f"the installed CRL for {name}")
        if (
            number < old_number
            or fresh.last_update_utc < old.last_update_utc
            or (number == old_number and fresh.public_bytes(Encoding.DER) != old.public_bytes(Encoding.DER))
        ):
            raise Refused(
                f"the CRL for {name} is older than the installed one "
                f"(CRL number {number}, installed {old_number}): refusing a rollback"
            )


def read_limited(stream: BinaryIO, limit: int = MAX_BYTES) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise Refused(f"the input is larger than {limit} bytes")
    if not data:
        raise Refused("the input is empty")
    return data


def install(path: Path, data: bytes) -> None:
    """Replace `path` atomically with `data`, keeping its owner and mode."""
    st = path.lstat()
    if not stat.S_ISREG(st.st_mode):
        raise Refused(f"{path} is not a regular file: point --crl at the file Apache reads")
    atomic.write_bytes(path, data, mode=stat.S_IMODE(st.st_mode), owner=(st.st_uid, st.st_gid))


def receive(
    data: bytes, *, crl_path: Path, chain_path: Path, reload_command: Sequence[str], now: datetime
) -> None:
    """Check, install and reload; the whole of the forced command but reading stdin."""
    chain = load_chain(chain_path)
    # One push at a time per node: two racing pushes could otherwise both pass the rollback check
    # and the older one land last.
    try:
        fd = os.open(crl_path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise Refused(f"cannot open the CRL's directory {crl_path.parent}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            installed = crl_path.read_bytes()
        except OSError as e:
            raise Refused(
                f"cannot read the installed CRL {crl_path}: {e.strerror}; install one by hand"
            ) from None
        check(data, chain=chain, installed=installed, now=now)
        try:
            install(crl_path, data)
        except OSError as e:
            raise Refused(f"cannot write {crl_path}: {e.strerror}") from None
    finally:
        os.close(fd)
    try:
        done = subprocess.run(list(reload_command), capture_output=True, timeout=RELOAD_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ReloadFailed(
            f"CRL installed, but the reload command failed to run ({type(e).__name__})"
        ) from None
    if done.returncode != 0:
        raise ReloadFailed(f"CRL installed, but the reload command exited {done.returncode}")


@click.command()
@click.option(
    "--crl",
    "crl_path",
    type=click.Path(path_type=Path),
    required=True,
    help="The installed CRL file (Apache's SSLCARevocationFile), replaced in place.",
)
@click.option(
    "--chain",
    "chain_path",
    type=click.Path(path_type=Path),
    required=True,
    help="The installed client CA chain (Apache's SSLCACertificateFile): the CRLs must be signed by it.",
)
@click.option(
    "--reload-command",
    required=True,
    help='Reloads Apache gracefully, e.g. "apache2ctl graceful" (split like a shell line, no shell).',
)
def main(crl_path: Path, chain_path: Path, reload_command: str) -> None:
    """Install the CRL on stdin if it is newer and signed by the installed chain; reload Apache."""
    argv = shlex.split(reload_command)
    if not argv:
        raise click.UsageError("--reload-command is empty")
    data = read_limited(sys.stdin.buffer)
    receive(data, crl_path=crl_path, chain_path=chain_path, reload_command=argv, now=datetime.now(UTC))
    click.echo(f"installed the CRL in {crl_path} and reloaded Apache")


if __name__ == "__main__":
    main(prog_name="python -m ca.crl_receive")
