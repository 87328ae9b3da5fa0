"""The CA's operations: init, issue, revoke, crl, unbind, list/show. No terminal I/O here.

Every mutating operation follows one pattern: check permissions, take the lock, load and validate
everything, ask for the CA passphrase only once the request is known to be valid, compute the
result in memory, and only then write - index first (it is the source of truth for the CRL), then
the files derived from it. A refusal at any step before the writes changes nothing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from ca import pki
from ca.binding import Binder, BindError, WebappBinder, default_webapp_command, default_webapp_dir
from ca.config import Config, load_config, render_config
from ca.crl_push import last_line
from ca.errors import BindingFailed, CAError, FollowUpFailed
from ca.fsutil import (
    atomic_write,
    check_private,
    check_tree,
    exclusive_lock,
    make_private_dir,
)
from ca.index import Entry, Index, Profile, Reason, RetiredCA, dump_index, parse_index
from ca.oplog import Event, OpsLog

Clock = Callable[[], datetime]
# Asked lazily, with "root" or "issuing", once a request has been validated.
PassphraseSource = Callable[[str], bytes]

ROOT_DAYS = 3650
ISSUING_DAYS = 3 * 365
RELOAD_TIMEOUT = 60

# Usernames as the web app allows them (ASCII letters, digits, '.', '_', '-'; 1-64), except that the
# first character must be a letter or digit: the name becomes an argv item of the web app's CLI,
# where a leading '-' would read as an option. It also ends up in a subject and in the logs.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def utcnow() -> datetime:
    return datetime.now(UTC)


def validate_name(name: str) -> str:
    if not _NAME.match(name):
        raise CAError(
            f"invalid name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def validate_host(host: str) -> str:
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(host))
    labels = host.lower().rstrip(".").split(".")
    if len(host) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        raise CAError(f"invalid host name {host!r}: give DNS names or IP addresses")
    return ".".join(labels)


class Layout:
    """Where everything lives in a CA directory (see docs/ca.md)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.config = base / "config.toml"
        self.index = base / "index.json"
        self.ops_log = base / "ops.log"
        self.lock = base / ".lock"
        self.root_dir = base / "root"
        self.root_key = base / "root" / "root-key.pem"  # moved offline after init
        self.root_cert = base / "root" / "root.pem"
        self.root_crl = base / "root" / "root-crl.pem"
        self.issuing_dir = base / "issuing"
        self.issuing_key = base / "issuing" / "issuing-key.pem"
        self.issuing_cert = base / "issuing" / "issuing.pem"
        self.issuing_crl = base / "issuing" / "issuing-crl.pem"
        self.certs_dir = base / "certs"
        self.publish_dir = base / "publish"
        self.chain = base / "publish" / "chain.pem"  # Apache SSLCACertificateFile
        self.crl = base / "publish" / "crl.pem"  # Apache SSLCARevocationFile

    def cert_file(self, serial: str) -> Path:
        return self.certs_dir / f"{serial}.pem"


@dataclass(frozen=True)
class Issued:
    entry: Entry
    cert: x509.Certificate
    replaced: Entry | None
    # A follow-up that failed after the certificate was issued (the Apache reload after --replace).
    # Returned, not raised: the caller must still hand over the bundle and its password.
    problem: str | None = None


@dataclass(frozen=True)
class Revoked:
    entry: Entry


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise CAError(f"{path} is missing") from None
    except ValueError:
        raise CAError(f"{path} is not a PEM certificate") from None


def _load_crl(path: Path) -> x509.CertificateRevocationList | None:
    try:
        return x509.load_pem_x509_crl(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None


class Authority:
    """One CA directory. Collaborators are passed in, so tests can fake the clock and the web app."""

    def __init__(
        self,
        base: Path,
        *,
        passphrases: PassphraseSource,
        clock: Clock = utcnow,
        binder: Binder | None = None,
        root_key: Path | None = None,
    ) -> None:
        self.layout = Layout(base)
        self._passphrases = passphrases
        self._clock = clock
        self._binder = binder
        self._root_key = root_key
        self._config: Config | None = None

    # -- loading and checks ---------------------------------------------------------------------

    @property
    def config(self) -> Config:
        if self._config is None:
            check_tree(self.layout.base)  # every run: refuse if anything has become readable to others
            self._config = load_config(self.layout.config)
        return self._config

    def log(self) -> OpsLog:
        return OpsLog(self.layout.ops_log, use_syslog=self.config.syslog)

    def load_index(self) -> Index:
        _ = self.config
        try:
            data = self.layout.index.read_bytes()
        except FileNotFoundError:
            raise CAError(f"{self.layout.index} is missing: restore it from backup") from None
        return parse_index(data)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        _ = self.config
        with exclusive_lock(self.layout.lock):
            yield

    def root_key_online(self) -> bool:
        return self.layout.root_key.exists()

    def binder(self) -> Binder:
        if self._binder is None:
            cfg = self.config
            cwd = Path(cfg.webapp_dir) if cfg.webapp_dir else default_webapp_dir()
            self._binder = WebappBinder(cfg.webapp_command or default_webapp_command(), cwd=cwd)
        return self._binder

    def _issuing(self) -> tuple[x509.Certificate, pki.CAKey]:
        cert = _load_cert(self.layout.issuing_cert)
        key = pki.decrypt_key(
            self.layout.issuing_key.read_bytes(), self._passphrases("issuing"), cert, "issuing CA"
        )
        return cert, key

    def _root(self) -> tuple[x509.Certificate, pki.CAKey]:
        cert = _load_cert(self.layout.root_cert)
        path = self._root_key or self.layout.root_key
        if not path.exists():
            raise CAError(f"the root key is not at {path}: mount the offline medium and pass --root-key PATH")
        check_private(path)
        key = pki.decrypt_key(path.read_bytes(), self._passphrases("root"), cert, "root CA")
        return cert, key

    # -- init -----------------------------------------------------------------------------------

    def init(self, config: Config) -> None:
        """Create the root and issuing CAs, their CRLs, an empty index and the published files."""
        base = self.layout.base
        if base.exists() and (not base.is_dir() or any(base.iterdir())):
            raise CAError(f"{base} already exists and is not empty: refusing to overwrite a CA")
        if not base.parent.is_dir():
            raise CAError(f"{base.parent} does not exist")
        root_pass = self._passphrases("root")
        issuing_pass = self._passphrases("issuing")
        if root_pass == issuing_pass:
            raise CAError("the root and issuing passphrases must differ (the root key lives offline)")
        now = self._clock()
        root_key, issuing_key = pki.new_ca_key(), pki.new_ca_key()
        root = pki.build_root(root_key, org=config.organization, now=now, days=ROOT_DAYS)
        issuing = pki.build_issuing(
            issuing_key.public_key(),
            root=root,
            root_key=root_key,
            org=config.organization,
            now=now,
            days=ISSUING_DAYS,
        )
        root_crl = pki.build_crl(
            [], issuer=root, issuer_key=root_key, number=1, now=now, days=config.root_crl_days
        )
        index = Index(crl_number=0, root_crl_number=1)
        created = not base.exists()
        try:
            if created:
                make_private_dir(base)
            check_private(base)
            for d in (
                self.layout.root_dir,
                self.layout.issuing_dir,
                self.layout.certs_dir,
                self.layout.publish_dir,
            ):
                make_private_dir(d)
            atomic_write(self.layout.config, render_config(config).encode("utf-8"))
            atomic_write(self.layout.lock, b"")
            atomic_write(self.layout.root_key, pki.encrypt_key(root_key, root_pass))
            atomic_write(self.layout.root_cert, pki.pem(root))
            atomic_write(self.layout.root_crl, pki.pem(root_crl))
            atomic_write(self.layout.issuing_key, pki.encrypt_key(issuing_key, issuing_pass))
            atomic_write(self.layout.issuing_cert, pki.pem(issuing))
            atomic_write(self.layout.chain, pki.pem(issuing) + pki.pem(root))
            self._config = config
            self._publish_crl(index, issuing, issuing_key, now)
        except BaseException:
            # Half a CA is worse than none: remove what this call created.
            if created:
                shutil.rmtree(base, ignore_errors=True)
            else:
                for child in base.iterdir():
                    if child.is_dir():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink()
            raise
        self.log().record(
            Event.INIT,
            now,
            root_serial=format(root.serial_number, "x"),
            issuing_serial=format(issuing.serial_number, "x"),
            root_not_after=root.not_valid_after_utc,
            issuing_not_after=issuing.not_valid_after_utc,
        )

    # -- CRL ------------------------------------------------------------------------------------

    def _publish_crl(self, index: Index, issuing: x509.Certificate, key: pki.CAKey, now: datetime) -> Index:
        """Sign the next issuing CRL from `index`; write index, then CRL, then the published file."""
        index = replace(index, crl_number=index.crl_number + 1)
        revoked = [(e.serial_int, e.revoked_at, e.reason) for e in index.entries if e.revoked_at and e.reason]
        crl = pki.build_crl(
            revoked,
            issuer=issuing,
            issuer_key=key,
            number=index.crl_number,
            now=now,
            days=self.config.crl_days,
        )
        atomic_write(self.layout.index, dump_index(index))
        atomic_write(self.layout.issuing_crl, pki.pem(crl))
        self._write_published_crl()
        return index

    def _write_published_crl(self) -> None:
        # Both CRLs in one file: with `SSLCARevocationCheck chain` Apache needs a current CRL from
        # every CA in the chain, or it refuses every client.
        atomic_write(
            self.layout.crl, self.layout.issuing_crl.read_bytes() + self.layout.root_crl.read_bytes()
        )

    def _reload(self, now: datetime) -> str | None:
        """Run the reload hook; return a problem description instead of raising (the CRL stands)."""
        command = self.config.reload_command
        if not command:
            return None
        try:
            proc = subprocess.run(
                command, capture_output=True, text=True, timeout=RELOAD_TIMEOUT, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            problem = f"the reload command failed to run: {type(e).__name__}"
        else:
            if proc.returncode == 0:
                return None
            problem = f"the reload command exited {proc.returncode}"
            # `push-crl` names the web nodes that did not get the CRL there: the admin must see which.
            if detail := last_line(proc.stderr, limit=1000):
                problem += f" ({detail})"
        self.log().record(Event.RELOAD_FAILED, now, command=command, problem=problem)
        return f"{problem}: Apache still serves the OLD CRL; reload it by hand ({' '.join(command)})"

    def crl_status(self) -> tuple[datetime | None, datetime | None, datetime | None]:
        """(issuing CRL last update, issuing CRL next update, root CRL next update); None if unreadable."""
        issuing = _load_crl(self.layout.issuing_crl)
        root = _load_crl(self.layout.root_crl)
        # `is not None`, not truthiness: a CRL with no entries has len() 0 and is falsy.
        return (
            issuing.last_update_utc if issuing is not None else None,
            issuing.next_update_utc if issuing is not None else None,
            root.next_update_utc if root is not None else None,
        )

    def crl_due(self, now: datetime) -> bool:
        last, next_, _ = self.crl_status()
        if last is None or next_ is None:
            return True  # missing or unreadable: regenerate (fail towards a fresh CRL)
        refresh_at = last + pki.BACKDATE + timedelta(hours=self.config.crl_refresh_hours)
        return now >= refresh_at or now >= next_ - timedelta(days=1)

    def crl(self, *, if_due: bool = False) -> bool:
        """Re-sign the issuing CRL (always, or only when due). Returns whether it was re-signed.

        Raises FollowUpFailed after publishing if Apache was not reloaded or the root CRL needs the
        offline root key soon: the timer's unit then shows as failed, which is the alert.
        """
        with self._locked():
            now = self._clock()
            index = self.load_index()
            problems: list[str] = []
            regenerated = False
            if not if_due or self.crl_due(now):
                issuing, key = self._issuing()
                index = self._publish_crl(index, issuing, key, now)
                regenerated = True
                self.log().record(Event.CRL, now, crl_number=index.crl_number)
                if problem := self._reload(now):
                    problems.append(problem)
            _, _, root_next = self.crl_status()
            if root_next is None:
                problems.append(f"the root CRL {self.layout.root_crl} is missing or unreadable")
            elif now >= root_next - timedelta(days=self.config.root_crl_warn_days):
                problems.append(
                    f"the root CRL expires {root_next:%Y-%m-%d %H:%M} UTC: re-sign it with the root key "
                    "(`python -m ca root-crl --root-key PATH`) before then, or every client is locked out"
                )
            if problems:
                raise FollowUpFailed("; ".join(problems))
            return regenerated

    def _sign_root_crl(
        self, index: Index, root: x509.Certificate, key: pki.CAKey, now: datetime
    ) -> tuple[Index, bytes]:
        index = replace(index, root_crl_number=index.root_crl_number + 1)
        crl = pki.build_crl(
            [(r.serial_int, r.revoked_at, r.reason) for r in index.retired_issuing],
            issuer=root,
            issuer_key=key,
            number=index.root_crl_number,
            now=now,
            days=self.config.root_crl_days,
        )
        return index, pki.pem(crl)

    def root_crl(self) -> None:
        """Re-sign the root's CRL with the (offline) root key and publish it."""
        with self._locked():
            now = self._clock()
            index = self.load_index()
            root, key = self._root()
            index, crl = self._sign_root_crl(index, root, key, now)
            atomic_write(self.layout.index, dump_index(index))
            atomic_write(self.layout.root_crl, crl)
            self._write_published_crl()
            self.log().record(Event.ROOT_CRL, now, crl_number=index.root_crl_number)
            if problem := self._reload(now):
                raise FollowUpFailed(problem)

    def new_issuing(self, reason: Reason) -> tuple[x509.Certificate, list[Entry]]:
        """Replace the issuing CA (planned rotation, or its key leaked). Needs the root key.

        A clean cut: the old issuing CA is revoked in the root's CRL and leaves the chain file, so
        every certificate it signed stops working at the next Apache reload; they are marked
        revoked here and unbound in the web app, and employees get new ones from the new CA.
        Returns the new issuing certificate and the certificates revoked with the old CA.
        """
        if reason not in (Reason.SUPERSEDED, Reason.CA_COMPROMISE, Reason.CESSATION_OF_OPERATION):
            raise CAError(
                "the reason for replacing the issuing CA must be superseded, cACompromise or "
                "cessationOfOperation"
            )
        with self._locked():
            now = self._clock()
            index = self.load_index()
            old = _load_cert(self.layout.issuing_cert)
            root, root_key = self._root()
            new_pass = self._passphrases("issuing")
            if new_pass == self._passphrases("root"):
                raise CAError("the root and issuing passphrases must differ (the root key lives offline)")
            key = pki.new_ca_key()
            new = pki.build_issuing(
                key.public_key(),
                root=root,
                root_key=root_key,
                org=self.config.organization,
                now=now,
                days=ISSUING_DAYS,
            )
            leaf_reason = Reason.CA_COMPROMISE if reason is Reason.CA_COMPROMISE else Reason.SUPERSEDED
            revoked = [e.revoke(now, leaf_reason) for e in index.entries if e.state(now) == "valid"]
            for entry in revoked:
                index = index.with_entry(entry)
            retired = RetiredCA(serial=format(old.serial_number, "x"), revoked_at=now, reason=reason)
            index = replace(index, retired_issuing=(*index.retired_issuing, retired))
            index, root_crl = self._sign_root_crl(index, root, root_key, now)
            # The index first (the record of what is revoked), then the files derived from it. A crash
            # in between leaves a key that does not match its certificate: every command then refuses
            # (fail closed) until the CA directory is restored from backup.
            retired_dir = self.layout.issuing_dir / "retired"
            if not retired_dir.exists():
                make_private_dir(retired_dir)
            atomic_write(retired_dir / f"issuing-{retired.serial}.pem", pki.pem(old))
            atomic_write(self.layout.root_crl, root_crl)
            atomic_write(self.layout.issuing_key, pki.encrypt_key(key, new_pass))
            atomic_write(self.layout.issuing_cert, pki.pem(new))
            atomic_write(self.layout.chain, pki.pem(new) + pki.pem(root))
            index = self._publish_crl(index, new, key, now)
            self.log().record(
                Event.NEW_ISSUING,
                now,
                reason=str(reason),
                old_serial=retired.serial,
                new_serial=format(new.serial_number, "x"),
                revoked=[e.serial for e in revoked],
            )
            problems = []
            if problem := self._reload(now):
                problems.append(problem)
            failed = []
            for entry in revoked:
                if entry.bound:
                    try:
                        index = self._unbind_in(index, entry, f"issuing CA replaced: {reason}", now)
                    except BindError:
                        failed.append(entry.serial)
            if failed:
                problems.append(
                    "the web app did not unbind "
                    + ", ".join(failed)
                    + ": retry each with `python -m ca unbind SERIAL`"
                )
            if problems:
                raise FollowUpFailed("replaced the issuing CA, but " + "; ".join(problems))
            return new, revoked

    # -- issue ----------------------------------------------------------------------------------

    def _new_serial(self, index: Index) -> int:
        while True:
            serial = x509.random_serial_number()  # 159 random bits, positive
            if index.by_serial(serial) is None:
                return serial

    def issue(
        self,
        profile: Profile,
        name: str,
        *,
        deliver: Callable[[pki.CAKey, x509.Certificate, x509.Certificate], Callable[[], None]],
        bind: bool,
        replace_existing: bool = False,
        days: int | None = None,
        hosts: Sequence[str] = (),
        check: Callable[[], None] = lambda: None,
    ) -> Issued:
        """Issue a certificate. `deliver(key, cert, issuing)` writes the bundle/key files and returns
        an undo function; `check()` runs once the request is valid (e.g. to ask for the bundle password).

        Order: validate -> unlock issuing key -> sign -> deliver -> bind -> write index. A failed bind
        undoes the delivery; a failed index write undoes the bind and the delivery.
        """
        cfg = self.config
        lifetime = (
            days
            or {
                Profile.EMPLOYEE: cfg.employee_days,
                Profile.SERVICE: cfg.service_days,
                Profile.SERVER: cfg.server_days,
            }[profile]
        )
        if lifetime <= 0 or lifetime > ISSUING_DAYS:
            raise CAError(f"invalid lifetime {lifetime} days")
        bind = bind and profile is Profile.EMPLOYEE  # service and server certificates are never bound
        with self._locked():
            now = self._clock()
            index = self.load_index()
            current = index.valid_for(name, now)
            if current is not None and not replace_existing:
                raise CAError(
                    f"{name} already holds a valid certificate (serial {current.serial}, expires "
                    f"{current.not_after:%Y-%m-%d}): revoke it first, or pass --replace to renew"
                )
            if current is not None and current.profile is not profile:
                raise CAError(
                    f"{name}'s current certificate has the {current.profile} profile: "
                    "--replace cannot change it"
                )
            check()
            issuing, issuing_key = self._issuing()
            key = pki.new_leaf_key()
            cert = pki.build_leaf(
                profile,
                name,
                key.public_key(),
                serial=self._new_serial(index),
                issuer=issuing,
                issuer_key=issuing_key,
                org=cfg.organization,
                now=now,
                days=lifetime,
                hosts=hosts,
            )
            entry = Entry(
                serial=format(cert.serial_number, "x"),
                profile=profile,
                name=name,
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
                fingerprint=pki.fingerprint(cert),
                bound=bind,
            )
            undo_delivery = deliver(key, cert, issuing)
            if bind:
                try:
                    self.binder().bind(name, cert)
                except BindError as e:
                    undo_delivery()
                    raise BindingFailed(
                        f"the web app refused to bind the certificate to {name}: {e} (nothing was issued)"
                    ) from None
            new_index = index.with_entry(entry)
            if current is not None:
                # The web app's bind already ended the old binding; the CRL makes the old certificate dead.
                new_index = new_index.with_entry(
                    replace(current.revoke(now, Reason.SUPERSEDED), bound=current.bound and not bind)
                )
            try:
                atomic_write(self.layout.cert_file(entry.serial), pki.pem(cert))
                if current is None:
                    atomic_write(self.layout.index, dump_index(new_index))
                else:
                    self._publish_crl(new_index, issuing, issuing_key, now)
            except BaseException:
                if bind:
                    with contextlib.suppress(BindError):
                        self.binder().unbind(
                            entry.fingerprint, "issuance aborted: the CA could not record it"
                        )
                undo_delivery()
                with contextlib.suppress(FileNotFoundError):
                    self.layout.cert_file(entry.serial).unlink()
                raise
            self.log().record(
                Event.ISSUE,
                now,
                profile=str(profile),
                name=name,
                serial=entry.serial,
                fingerprint=entry.fingerprint,
                not_after=entry.not_after,
                bound=bind,
                replaced=current.serial if current else None,
            )
            problem = self._reload(now) if current is not None else None
            return Issued(entry=entry, cert=cert, replaced=current, problem=problem)

    # -- revoke ---------------------------------------------------------------------------------

    def find(self, index: Index, target: str, now: datetime) -> Entry:
        """A certificate by name (its valid one) or by serial (hex, colons and 0x allowed)."""
        if any(e.name == target for e in index.entries):
            entry = index.valid_for(target, now)
            if entry is not None:
                return entry
            return max((e for e in index.entries if e.name == target), key=lambda e: e.not_before)
        digits = target.lower().removeprefix("0x").replace(":", "")
        if re.fullmatch(r"[0-9a-f]{1,40}", digits):
            entry = index.by_serial(int(digits, 16))
            if entry is not None:
                return entry
        raise CAError(f"no certificate for {target!r}: not a known name or serial (see `python -m ca list`)")

    def revoke(self, target: str, reason: Reason, *, unbind: bool = True) -> Revoked:
        """Revoke, publish the CRL, reload Apache, then unbind in the web app.

        The CRL is what Apache enforces, so it is published first and stands even if the web app is
        down; a failed unbind (or reload) raises FollowUpFailed so the admin retries (`ca unbind`).
        """
        with self._locked():
            now = self._clock()
            index = self.load_index()
            entry = self.find(index, target, now)
            if entry.revoked_at is not None:
                pending = (
                    f"; its web app binding is still active: run `python -m ca unbind {entry.serial}`"
                    if entry.bound
                    else ""
                )
                raise CAError(
                    f"{entry.name}'s certificate {entry.serial} is already revoked "
                    f"(since {entry.revoked_at:%Y-%m-%d %H:%M} UTC, {entry.reason}){pending}"
                )
            issuing, key = self._issuing()
            entry = entry.revoke(now, reason)
            index = self._publish_crl(index.with_entry(entry), issuing, key, now)
            self.log().record(
                Event.REVOKE,
                now,
                name=entry.name,
                serial=entry.serial,
                reason=str(reason),
                crl=index.crl_number,
            )
            problems = []
            if problem := self._reload(now):
                problems.append(problem)
            if entry.bound and unbind:
                try:
                    entry = self._unbind(index, entry, f"certificate revoked: {reason}", now)
                except BindError as e:
                    problems.append(
                        f"the web app did not unbind the certificate ({e}); the CRL stands, but retry with "
                        f"`python -m ca unbind {entry.serial}`"
                    )
            if problems:
                raise FollowUpFailed(
                    f"revoked {entry.name} (serial {entry.serial}) in the CRL, but " + "; ".join(problems)
                )
            return Revoked(entry=entry)

    def _unbind(self, index: Index, entry: Entry, reason: str, now: datetime) -> Entry:
        self._unbind_in(index, entry, reason, now)
        return replace(entry, bound=False)

    def _unbind_in(self, index: Index, entry: Entry, reason: str, now: datetime) -> Index:
        """Unbind in the web app, then record it in the index; returns the updated index."""
        try:
            self.binder().unbind(entry.fingerprint, reason)
        except BindError as e:
            self.log().record(Event.UNBIND_FAILED, now, name=entry.name, serial=entry.serial, problem=str(e))
            raise
        index = index.with_entry(replace(entry, bound=False))
        atomic_write(self.layout.index, dump_index(index))
        self.log().record(
            Event.UNBIND, now, name=entry.name, serial=entry.serial, fingerprint=entry.fingerprint
        )
        return index

    def retry_unbind(self, target: str) -> Entry:
        """Retry the web app unbind of a revoked certificate after the web app was unreachable."""
        with self._locked():
            now = self._clock()
            index = self.load_index()
            entry = self.find(index, target, now)
            if entry.revoked_at is None:
                raise CAError(f"{entry.name}'s certificate {entry.serial} is not revoked: revoke it instead")
            if not entry.bound:
                raise CAError(f"{entry.name}'s certificate {entry.serial} has no active web app binding")
            try:
                return self._unbind(index, entry, f"certificate revoked: {entry.reason}", now)
            except BindError as e:
                raise FollowUpFailed(f"the web app still did not unbind it: {e}") from None
