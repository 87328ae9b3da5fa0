"""One delivery pass: for each event name with pending rows, claim the rows, send one mail, mark them.

Exactly once, and where it is not:
- Two mailers at once. MariaDB: rows are claimed with SELECT ... FOR UPDATE SKIP LOCKED in the
  transaction that later marks them sent, so a second mailer skips rows the first one holds. SQLite:
  the whole pass holds an exclusive flock on `<database>.mailer-lock`; a second mailer skips its pass.
  (On SQLite the rows cannot stay locked during SMTP: the database lock would stall every request.)
- The mail server down or refusing: the rows get attempts + 1 and the failure's class name in
  `last_error` (never its text: a server's reply may quote anything) and stay pending; the next pass
  sends them. Nothing is deleted, ever.
- A crash after the mail server accepted a message (250 to DATA) and before our COMMIT: the rows are
  still pending and the next pass sends them again. The window is one SMTP round trip plus one
  commit. The resent mail carries the same Message-ID (derived from the event name and row ids) when
  the same rows are resent, so mail clients that de-duplicate by Message-ID show it once.

Every mail sent or failed is audited (mail.sent / mail.failed) in the same transaction as the
rows' new state.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import smtplib
import ssl
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from webapp import outbox
from webapp.clock import Clock, from_db
from webapp.db.engine import READ_ONLY, is_sqlite
from webapp.events import Event
from webapp.mail.settings import MailSettings
from webapp.mail.spool import Spool
from webapp.mail.texts import notification
from webapp.unit import Origin, UnitOfWork

ACTOR = "mailer"
PASS_LIMIT = 1000  # rows per event name per pass; the rest go in the next mail
# Errors after which the connection is unusable: the rest of the pass fails without retrying.
_CONNECTION_ERRORS = (
    OSError,  # refused, unreachable, timeout, TLS failures (ssl.SSLError is an OSError)
    smtplib.SMTPServerDisconnected,
    smtplib.SMTPConnectError,
    smtplib.SMTPHeloError,
    smtplib.SMTPNotSupportedError,
    smtplib.SMTPAuthenticationError,
)


class DeliveryFailed(Exception):
    """A mail was not accepted. `reason` is an exception name and SMTP code, never a server text;
    `error_class` the failure's class name alone (what the outbox row keeps as `last_error`), or for
    the mailer's own refusals (STARTTLS not offered, AUTH without TLS) that refusal's fixed name."""

    def __init__(self, reason: str, *, connection_lost: bool, error_class: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.connection_lost = connection_lost
        self.error_class = error_class or reason


def _reason(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{type(exc).__name__}:{exc.smtp_code}"
    return type(exc).__name__


def _class(exc: BaseException) -> str:
    return type(exc).__name__


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verify the server certificate and name: against `ca_file` only when set, else the system store."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class SmtpSession:
    """One SMTP connection for one pass, opened on first use."""

    def __init__(self, settings: MailSettings) -> None:
        self._settings = settings
        self._smtp: smtplib.SMTP | None = None

    def _open(self) -> smtplib.SMTP:
        s = self._settings
        smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
        try:
            smtp.ehlo()
            if s.starttls:
                if not smtp.has_extn("starttls"):
                    # Never fall back to clear text: that is what a downgrade attacker wants.
                    raise DeliveryFailed("starttls_not_offered", connection_lost=True)
                smtp.starttls(context=tls_context(s.ca_file))
                smtp.ehlo()
            if s.user is not None:
                if not s.starttls:  # settings refuse this too; never send a password in clear
                    raise DeliveryFailed("auth_without_tls", connection_lost=True)
                smtp.login(s.user, s.password or "")
        except BaseException:
            with contextlib.suppress(Exception):
                smtp.close()
            raise
        return smtp

    def send(self, message: EmailMessage) -> int:
        """Send; return how many recipients were refused (all refused raises)."""
        try:
            if self._smtp is None:
                self._smtp = self._open()
            refused = self._smtp.send_message(
                message, from_addr=self._settings.sender, to_addrs=list(self._settings.recipients)
            )
        except DeliveryFailed:
            self.close()
            raise
        except _CONNECTION_ERRORS as exc:
            self.close()
            raise DeliveryFailed(_reason(exc), connection_lost=True, error_class=_class(exc)) from None
        except smtplib.SMTPException as exc:
            raise DeliveryFailed(_reason(exc), connection_lost=False, error_class=_class(exc)) from None
        return len(refused)

    def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                smtp.close()


def message_id(event: str, ids: Sequence[int | str], domain: str) -> str:
    """The same rows give the same Message-ID: a resend after a crash is recognisably the same mail.
    (Callers pass row ids and counts, e.g. "17x3": a coalesced row that grew is a new mail.)"""
    digest = hashlib.sha256(f"{event}:{','.join(map(str, ids))}".encode()).hexdigest()[:40]
    return f"<strongroom-{digest}@{domain}>"


def compose_counted(
    settings: MailSettings,
    event: str,
    *,
    count: int,
    first: datetime,
    last: datetime,
    identity: Sequence[str],
    now_header: str,
) -> EmailMessage:
    """The mail for `count` events of one name: only the name, the count and the times go out."""
    text = notification(event, count=count, first=first, last=last)
    msg = EmailMessage(policy=SMTP)
    msg["From"] = settings.sender
    msg["To"] = ", ".join(settings.recipients)
    msg["Subject"] = text.subject
    msg["Date"] = now_header
    msg["Message-ID"] = message_id(event, identity, settings.domain)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
    msg.set_content(text.body)
    return msg


def compose(settings: MailSettings, event: str, rows: Sequence[sa.Row], *, now_header: str) -> EmailMessage:
    """The mail for one event name's outbox rows (each row counts `n_events` coalesced events). The
    rows' actor, IP, resource and detail never leave the server."""
    return compose_counted(
        settings,
        event,
        count=sum(int(r.n_events) for r in rows),
        first=min(from_db(r.created_at) for r in rows),
        last=max(from_db(r.last_at or r.created_at) for r in rows),
        identity=[f"{r.id}x{r.n_events}" for r in rows],
        now_header=now_header,
    )


@dataclass
class PassResult:
    mails_sent: int = 0
    events_sent: int = 0
    mails_failed: int = 0
    events_failed: int = 0
    spooled_sent: int = 0  # alerts from the spool (raised while the database was unusable)
    skipped: bool = False  # another mailer holds the SQLite lock
    more: bool = False  # a name had more than PASS_LIMIT rows: run another pass
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.mails_failed == 0


class Mailer:
    def __init__(
        self,
        *,
        engine: Engine,
        clock: Clock,
        settings: MailSettings,
        units: Callable[[Origin], UnitOfWork],
        session_factory: Callable[[MailSettings], SmtpSession] = SmtpSession,
        limit: int = PASS_LIMIT,
        spool: Spool | None = None,
    ) -> None:
        self._spool = spool
        self._engine = engine
        self._clock = clock
        self._settings = settings
        self._units = units
        self._session_factory = session_factory
        self._limit = limit
        self._sqlite = is_sqlite(engine)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[bool]:
        """SQLite only: one mailer pass at a time on this database file (all on one host, by nature)."""
        database = self._engine.url.database
        if not self._sqlite or not database or database == ":memory:":
            yield True
            return
        fd = os.open(f"{database}.mailer-lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock

    def _read(self, event: str) -> list[sa.Row]:
        with self._engine.connect().execution_options(**{READ_ONLY: True}) as conn:
            return outbox.claim(conn, event, limit=self._limit, skip_locked=False)

    def deliver_spool(self) -> PassResult:
        """Mail what the web app spooled while the database was unusable, straight over SMTP: this
        needs no database. Each event name's files are removed once the server accepted its mail."""
        result = PassResult()
        if self._spool is None:
            return result
        entries = self._spool.collect()
        if not entries:
            return result
        session = self._session_factory(self._settings)
        down: DeliveryFailed | None = None
        try:
            for entry in entries:
                now = self._clock.now()
                msg = compose_counted(
                    self._settings,
                    entry.event,
                    count=entry.count,
                    first=entry.first,
                    last=entry.last,
                    identity=["spool", *entry.identity],
                    now_header=format_datetime(now),
                )
                try:
                    if down is not None:
                        raise down
                    session.send(msg)
                except DeliveryFailed as exc:
                    result.mails_failed += 1
                    result.events_failed += entry.count
                    result.failures.append(f"spooled {entry.event}: {exc.reason}")
                    if exc.connection_lost:
                        down = exc
                    continue
                self._spool.remove(entry)
                result.mails_sent += 1
                result.events_sent += entry.count
                result.spooled_sent += entry.count
        finally:
            session.close()
        return result

    def deliver(self) -> PassResult:
        result = PassResult()
        with self._exclusive() as mine:
            if not mine:
                result.skipped = True
                return result
            with self._engine.connect().execution_options(**{READ_ONLY: True}) as conn:
                kinds = outbox.pending_kinds(conn)
            session = self._session_factory(self._settings)
            down: DeliveryFailed | None = None
            try:
                for event in kinds:
                    down = self._deliver_kind(event, session, down, result)
            finally:
                session.close()
        return result

    def _deliver_kind(
        self, event: str, session: SmtpSession, down: DeliveryFailed | None, result: PassResult
    ) -> DeliveryFailed | None:
        uow = self._units(Origin(actor=ACTOR, ip="local"))
        try:
            # MariaDB: lock the rows in the transaction that will mark them. SQLite: read them
            # (the flock keeps other mailers out); uow.conn opens only after the SMTP exchange.
            rows = (
                self._read(event)
                if self._sqlite
                else outbox.claim(uow.conn, event, limit=self._limit, skip_locked=True)
            )
            if not rows:
                uow.rollback()
                return down
            ids = [int(r.id) for r in rows]
            n_events = sum(int(r.n_events) for r in rows)
            now = self._clock.now()
            msg = compose(self._settings, event, rows, now_header=format_datetime(now))
            resource = f"outbox:{event}"[:200]
            try:
                if down is not None:
                    raise down  # the server is unreachable this pass: do not hammer it
                refused = session.send(msg)
            except DeliveryFailed as exc:
                outbox.mark_failed(uow.conn, ids, error=exc.error_class)
                detail = f"events={n_events} error={exc.reason}"
                uow.record(Event.MAIL_FAILED, ok=False, resource=resource, detail=detail[:200])
                result.mails_failed += 1
                result.events_failed += n_events
                result.failures.append(f"{event}: {exc.reason}")
                if exc.connection_lost:
                    down = exc
            else:
                marked = outbox.mark_mailed(uow.conn, rows, now=now)
                detail = f"events={marked} message_id={msg['Message-ID']}"
                if refused:
                    detail += f" refused_recipients={refused}"
                uow.record(Event.MAIL_SENT, ok=True, resource=resource, detail=detail[:200])
                result.mails_sent += 1
                result.events_sent += marked
            if len(rows) >= self._limit:
                result.more = True
            uow.commit()
        finally:
            uow.close()
        return down
