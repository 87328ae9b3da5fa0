"""Bulk import of cards: a CSV or JSON-lines file of (crm_ref, cardholder, pan, expiry) rows, strictly
read, checked with the browser's rules, encrypted through keyd in batches and stored in batches.

Formats (docs/runbook.md "Moving an existing card store in"):

- CSV, UTF-8, one card per line (LF or CRLF). The first line is the header: the four names
  `crm_ref,cardholder,pan,expiry`, each once, in any order. A column named like a card security
  code (CVV_FIELDS) refuses the whole file (alerted); so does any other name, or no header.
  Fields may be quoted ("Smith, J" is not a valid cardholder anyway); a quoted newline is not
  allowed (one card per line keeps line numbers true).
- JSON lines: one object per line with exactly the four keys, string values. A line carrying a
  security-code key is refused (alerted); the file goes on.
- `expiry` is `MM/YYYY` (e.g. `07/2029`); `pan` is 13 to 19 digits, spaces and dashes allowed.

Every row goes through the same rules as the browser's add-card form (webapp/records/cards.py:
length, Luhn, brand; expiry not past and at most 20 years ahead; cardholder name rules; the CRM
reference pattern of the site, and a card number in any other field refused and alerted). A refused
line is reported by its number, field and rule, never its value.

Hard limits: the file at most MAX_FILE_BYTES (it is read once into memory, so what is hashed is
exactly what is imported), a line at most MAX_LINE_BYTES, each field at most FIELD_MAX characters.

Exactly once: an import job row per (file SHA-256, actor) holds the checkpoint, the last line whose
batch is committed. A batch is one transaction: the checkpoint move (conditional on its previous value,
so two runs of one file cannot both commit a batch), the customer records it creates (found by CRM
reference, else created), its cards, and one audit record with its counts. Encryption happens before
the transaction, through keyd's batch call, with each card's random id and the field name as the
context, exactly as the browser's add_card (service.add_card): an imported card decrypts and reveals
the same way. A crash at any point loses at most the batch under way; the next run resumes after
the checkpoint. A finished file imported again by the same actor is a no-op. While batch k is
written (one writer thread, batches committed in order), batch k+1 is parsed and sealed.

Who: an operator on the server (`flask --app webapp records import`, actor `cli:<os user>`,
webapp/records/commands.py), or the CRM's service account through `POST /api/v1/imports`
(`run_rows`: one batch of at most API_MAX_ROWS, in the request's transaction with its
Idempotency-Key; webapp/api/bulk.py).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from keyd.client import Context
from keyd.errors import KeydError
from webapp.clock import to_db
from webapp.db.engine import write_phase
from webapp.events import Event
from webapp.records.cards import CVV_FIELDS, check_expiry, check_name, parse_pan
from webapp.records.errors import Refused
from webapp.records.service import NewCard, check_crm_ref, new_id
from webapp.records.tables import cards, customer_records, import_jobs
from webapp.redact import PAN_REFUSAL, contains_pan
from webapp.unit import Origin, UnitOfWork

if TYPE_CHECKING:
    from webapp.services import Services

FORMATS = ("csv", "jsonl")
COLUMNS = ("crm_ref", "cardholder", "pan", "expiry")
HEADER = ",".join(COLUMNS)
MAX_FILE_BYTES = 256 * 1024 * 1024  # ~3.5 million cards: split a larger store into several files
MAX_LINE_BYTES = 512
FIELD_MAX = {"crm_ref": 32, "cardholder": 64, "pan": 32, "expiry": 7}
DEFAULT_BATCH = 1000
MAX_BATCH = 5000
# The bulk API call (webapp/api/bulk.py): one batch per call. 200 rows of 4 fields stay inside the
# front door's ModSecurity limits (1000 fields, 64 KiB a body).
API_MAX_ROWS = 200
API_MAX_BYTES = 60 * 1024
PURPOSE = "card.import"
_KEYD_MAX_ITEMS = 999  # keyd takes at most 1000 items per call (keyd/protocol MAX_ITEMS): 333 cards
_EXPIRY = re.compile(r"(0[1-9]|1[0-2])/([0-9]{4})")
_KEYD_ACTOR_BAD = re.compile(r"[^A-Za-z0-9._@+-]")
_CVV = frozenset(CVV_FIELDS)
CVV_RULE = "card security codes (CVV/CVC) are never accepted or stored"


class FileRefused(Exception):
    """The whole file is refused before anything is stored; `reason` names the rule, never a value."""

    def __init__(self, reason: str, *, alert: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.alert = alert


class ImportFailed(Exception):
    """keyd or the database failed a batch: that batch rolled back, the checkpoint kept; run again."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class LineRefusal:
    line: int
    field: str  # a column name, or "line" for the line as a whole
    rule: str  # the rule's fixed text: never the value
    alert: bool = False  # a card number where none belongs, a security code

    def __str__(self) -> str:
        return f"line {self.line}\t{self.field}\t{self.rule}"


@dataclass(frozen=True)
class Row:
    line: int
    crm_ref: str
    card: NewCard = field(repr=False)  # the number is masked in Pan's repr; the name is secret too


@dataclass
class Report:
    job_id: int | None = None
    resumed_after: int = 0  # lines handled by an earlier run (their batches were committed then)
    already_finished: bool = False
    accepted: int = 0  # in this run
    refused: int = 0  # in this run
    alerts: int = 0
    batches: int = 0
    records_created: int = 0
    lines: int = 0  # the file's last line number
    # The API call's (one batch), by row: (row number, card id, brand, last four). Empty for files.
    cards: list[tuple[int, str, str, str]] = field(default_factory=list)
    refusals: list[LineRefusal] = field(default_factory=list)  # the API call's; files stream theirs


# --- reading ------------------------------------------------------------------------------------


def sniff_format(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    return None


def split_lines(data: bytes) -> list[bytes]:
    """The file's lines without their LF (a final LF ends the last line, it does not start another)."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def _decode(raw: bytes, number: int) -> str | LineRefusal:
    if len(raw) > MAX_LINE_BYTES:
        return LineRefusal(number, "line", f"line too long (at most {MAX_LINE_BYTES} bytes)")
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return LineRefusal(number, "line", "not valid UTF-8")
    if number == 1 and text.startswith("\ufeff"):
        text = text[1:]  # a byte-order mark, as spreadsheet exports write it
    if not text.strip():
        return LineRefusal(number, "line", "empty line")
    return text


def csv_columns(first: bytes) -> tuple[str, ...]:
    """The column order the header names; FileRefused for anything but the four names."""
    text = _decode(first, 1)
    if isinstance(text, LineRefusal):
        raise FileRefused(f"header (line 1): {text.rule}")
    names = tuple(n.strip().lower() for n in text.split(","))
    if _CVV & set(names):
        raise FileRefused(f"header (line 1): a security-code column: {CVV_RULE}", alert=True)
    if sorted(names) != sorted(COLUMNS):
        raise FileRefused(f"header (line 1): must name the columns {HEADER} (each once, any order)")
    return names


def _csv_values(text: str, number: int, columns: tuple[str, ...]) -> dict[str, str] | LineRefusal:
    if '"' in text:
        try:
            values = next(csv.reader([text], strict=True))
        except (csv.Error, StopIteration):
            return LineRefusal(number, "line", "CSV: malformed quoting")
    else:
        values = text.split(",")
    if len(values) != len(columns):
        return LineRefusal(number, "line", f"CSV: expected {len(columns)} columns")
    return dict(zip(columns, values, strict=True))


def _json_values(text: str, number: int) -> dict[str, str] | LineRefusal:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return LineRefusal(number, "line", "JSON: not a valid JSON value")
    return _json_object(obj, number)


def _json_object(obj: object, number: int) -> dict[str, str] | LineRefusal:
    if not isinstance(obj, dict):
        return LineRefusal(number, "line", "JSON: must be an object")
    keys = set(obj)
    if {str(k).lower() for k in keys} & _CVV:
        return LineRefusal(number, "line", CVV_RULE, alert=True)
    if keys - set(COLUMNS):
        return LineRefusal(number, "line", f"JSON: unknown field (allowed: {HEADER})")
    if keys != set(COLUMNS):
        return LineRefusal(number, "line", f"JSON: every field is required ({HEADER})")
    if not all(type(v) is str for v in obj.values()):
        return LineRefusal(number, "line", "JSON: every value must be a string")
    return obj


class Rules:
    """The browser's add-card rules on one row (webapp/records/cards.py and service.check_crm_ref)."""

    def __init__(self, crm_pattern: str, now: datetime) -> None:
        self.crm_pattern = crm_pattern
        self.now = now

    def row(self, number: int, values: dict[str, str]) -> Row | LineRefusal:
        for name in COLUMNS:
            if len(values[name]) > FIELD_MAX[name]:
                if name != "pan" and contains_pan(values[name]):
                    return LineRefusal(number, name, f"{name}: {PAN_REFUSAL}", alert=True)
                return LineRefusal(number, name, f"too long (at most {FIELD_MAX[name]} characters)")
        try:
            crm_ref = check_crm_ref(values["crm_ref"].strip(), self.crm_pattern)
            pan = parse_pan(values["pan"].strip())
        except Refused as exc:
            return LineRefusal(number, exc.field or "line", exc.reason, alert=exc.alert)
        raw_name = values["cardholder"]
        try:
            name = check_name(raw_name)
        except Refused as exc:
            if contains_pan(raw_name):  # a card number in the wrong column: alerted, never echoed
                return LineRefusal(number, "cardholder", f"cardholder name: {PAN_REFUSAL}", alert=True)
            return LineRefusal(number, "cardholder", exc.reason)
        expiry = values["expiry"].strip()
        m = _EXPIRY.fullmatch(expiry)
        if m is None:
            if contains_pan(values["expiry"]):
                return LineRefusal(number, "expiry", f"expiry: {PAN_REFUSAL}", alert=True)
            return LineRefusal(number, "expiry", "expiry: must be MM/YYYY")
        try:
            expiry = check_expiry(int(m[1]), int(m[2]), now=self.now)
        except Refused as exc:
            return LineRefusal(number, "expiry", exc.reason)
        return Row(number, crm_ref, NewCard(pan=pan, cardholder=name, expiry=expiry))


def parse(lines: Sequence[bytes], fmt: str, rules: Rules, *, start: int = 0) -> Iterator[Row | LineRefusal]:
    """Every line after line `start` (1-based numbers), checked: a Row or the line's refusal."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    if not lines:
        raise FileRefused("the file is empty")
    columns: tuple[str, ...] = ()
    first = 1
    if fmt == "csv":
        columns = csv_columns(lines[0])
        first = 2
        if len(lines) < 2:
            raise FileRefused("no rows after the header")
    for index in range(max(start, first - 1), len(lines)):
        number = index + 1
        text = _decode(lines[index], number)
        if isinstance(text, LineRefusal):
            yield text
            continue
        values = _csv_values(text, number, columns) if fmt == "csv" else _json_values(text, number)
        yield values if isinstance(values, LineRefusal) else rules.row(number, values)


# --- storing ------------------------------------------------------------------------------------


def keyd_actor(actor: str) -> str:
    """keyd's actor alphabet has no ':' (cli:alice -> cli.alice)."""
    return _KEYD_ACTOR_BAD.sub(".", actor)[:64] or "import"


@dataclass
class _Batch:
    rows: list[Row] = field(default_factory=list)
    refusals: list[LineRefusal] = field(default_factory=list)
    last_line: int = 0
    first_line: int = 0


@dataclass(frozen=True)
class _Sealed:
    batch: _Batch
    card_rows: list[dict[str, Any]]


# Built once: building a statement per batch costs more CPU than running it.
_OPEN_RECORDS = (
    sa.select(customer_records.c.id, customer_records.c.crm_ref)
    .where(
        customer_records.c.crm_ref.in_(sa.bindparam("refs", expanding=True)),
        customer_records.c.retired_at.is_(None),
    )
    .order_by(customer_records.c.id)
)
_INSERT_RECORD = sa.insert(customer_records)
_INSERT_CARD = sa.insert(cards)


def _fold(engine: sa.Engine) -> Callable[[str], str]:
    # MariaDB compares the CRM reference under a case-insensitive collation: so does the lookup here.
    return str if engine.dialect.name == "sqlite" else str.casefold


class Importer:
    """One import: a file (`run_file`) or one API call's body (`run_body`), as `origin.actor`."""

    def __init__(
        self,
        svc: Services,
        *,
        origin: Origin,
        crm_pattern: str,
        batch_size: int = DEFAULT_BATCH,
        progress: Callable[[int], None] | None = None,
        on_refused: Callable[[LineRefusal], None] | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch size must be 1 to {MAX_BATCH}")
        self.svc = svc
        self.origin = origin
        self.actor = origin.actor[:64]
        self.keyd_actor = keyd_actor(origin.actor)
        self.crm_pattern = crm_pattern
        self.batch_size = batch_size
        self.progress = progress or (lambda n: None)
        self.on_refused = on_refused or (lambda r: None)
        self._fold = _fold(svc.engine)
        self._lock = threading.Lock()

    # -- the job row ----------------------------------------------------------------------------

    def _open_job(self, digest: str, fmt: str, report: Report) -> int:
        now = self.svc.clock.now()
        uow = self.svc.unit(self.origin)
        try:
            conn = uow.conn
            write_phase(conn)
            job = conn.execute(
                sa.select(import_jobs)
                .where(import_jobs.c.file_sha256 == digest, import_jobs.c.actor == self.actor)
                .with_for_update()
            ).one_or_none()
            if job is None:
                job_id = int(
                    conn.execute(
                        sa.insert(import_jobs).values(
                            file_sha256=digest,
                            actor=self.actor,
                            format=fmt,
                            last_line=0,
                            accepted=0,
                            refused=0,
                            started_at=to_db(now),
                            updated_at=to_db(now),
                        )
                    ).inserted_primary_key[0]  # type: ignore[index]
                )
            else:
                job_id = int(job.id)
                if job.format != fmt:
                    raise FileRefused(
                        f"this file was imported before as {job.format}: import it with --format {job.format}"
                    )
                report.resumed_after = int(job.last_line)
                report.already_finished = job.finished_at is not None
            report.job_id = job_id
            state = "finished" if report.already_finished else f"resume_after={report.resumed_after}"
            uow.record(
                Event.IMPORT_STARTED,
                ok=True,
                resource=f"import:{job_id}",
                detail=f"sha256={digest[:16]} format={fmt} {state}",
            )
            uow.commit()
        except BaseException:
            uow.rollback()
            raise
        return job_id

    def _finish_job(self, job_id: int, report: Report) -> None:
        now = self.svc.clock.now()
        uow = self.svc.unit(self.origin)
        try:
            conn = uow.conn
            write_phase(conn)
            conn.execute(
                sa.update(import_jobs)
                .where(import_jobs.c.id == job_id, import_jobs.c.finished_at.is_(None))
                .values(finished_at=to_db(now), updated_at=to_db(now))
            )
            totals = conn.execute(
                sa.select(import_jobs.c.accepted, import_jobs.c.refused).where(import_jobs.c.id == job_id)
            ).one()
            uow.record(
                Event.IMPORT_FINISHED,
                ok=True,
                resource=f"import:{job_id}",
                detail=f"lines={report.lines} accepted={totals.accepted} refused={totals.refused}",
            )
            uow.commit()
        except BaseException:
            uow.rollback()
            raise

    def _failed(self, job_id: int | None, reason: str) -> None:
        """The failure's own audit record (alerted), in a transaction of its own."""
        uow = self.svc.unit(self.origin)
        try:
            uow.record(Event.IMPORT_FAILED, ok=False, resource=f"import:{job_id or '-'}", detail=reason[:200])
            uow.commit()
        finally:
            uow.close()

    def refused_file(self, reason: str, *, alert: bool, digest: str = "-") -> None:
        uow = self.svc.unit(self.origin)
        try:
            uow.record(
                Event.IMPORT_REFUSED if alert else Event.IMPORT_FAILED,
                ok=False,
                resource="import:-",
                detail=f"sha256={digest[:16]} {reason}"[:200],
            )
            uow.commit()
        finally:
            uow.close()

    # -- one batch ------------------------------------------------------------------------------

    def _seal(self, batch: _Batch, now: datetime) -> _Sealed:
        """Encrypt every field of the batch through keyd (before any transaction), as add_card does."""
        ids = [new_id() for _ in batch.rows]
        items: list[tuple[Context, bytes]] = []
        for card_id, row in zip(ids, batch.rows, strict=True):
            items.append((Context(card_id, "pan"), row.card.pan.digits.encode("ascii")))
            items.append((Context(card_id, "cardholder"), row.card.cardholder.encode("utf-8")))
            items.append((Context(card_id, "expiry"), row.card.expiry.encode("ascii")))
        out: list[bytes] = []
        for start in range(0, len(items), _KEYD_MAX_ITEMS):
            results = self.svc.vault.encrypt_batch(
                items[start : start + _KEYD_MAX_ITEMS], actor=self.keyd_actor, purpose=PURPOSE
            )
            for result in results:
                if isinstance(result, KeydError):
                    raise result
                out.append(result)
        created = to_db(now)
        card_rows = [
            {
                "id": card_id,
                "record_id": row.crm_ref,  # replaced by the record's id in the transaction
                "brand": row.card.pan.brand,
                "last4": row.card.pan.last4,
                "pan_ct": out[3 * i],
                "name_ct": out[3 * i + 1],
                "expiry_ct": out[3 * i + 2],
                "created_at": created,
                "created_by": self.actor,
            }
            for i, (card_id, row) in enumerate(zip(ids, batch.rows, strict=True))
        ]
        return _Sealed(batch, card_rows)

    def _record_ids(self, conn: sa.Connection, refs: set[str], now: datetime) -> tuple[dict[str, int], int]:
        """The customer record of each CRM reference (its oldest open one), created when there is none."""
        fold = self._fold
        wanted = sorted(refs)
        found: dict[str, int] = {}

        def look(names: list[str]) -> None:
            for start in range(0, len(names), 1000):
                for rid, ref in conn.execute(_OPEN_RECORDS, {"refs": names[start : start + 1000]}):
                    found.setdefault(fold(ref), int(rid))

        look(wanted)
        missing = sorted({fold(r): r for r in wanted if fold(r) not in found}.values())
        if missing:
            created = to_db(now)
            conn.execute(
                _INSERT_RECORD,
                [{"crm_ref": r, "created_at": created, "created_by": self.actor} for r in missing],
            )
            look(missing)
        return {r: found[fold(r)] for r in wanted}, len(missing)

    def _write(self, uow: UnitOfWork, job_id: int | None, expected_last: int, sealed: _Sealed) -> int:
        """The batch's writes and audit records in `uow` (not committed): the checkpoint move first
        (its row lock keeps a second run of the file out), the records, the cards. Returns how many
        records it created."""
        batch = sealed.batch
        now = self.svc.clock.now()
        alerts = sum(1 for r in batch.refusals if r.alert)
        conn = uow.conn
        write_phase(conn)
        if job_id is not None:
            moved = conn.execute(
                sa.update(import_jobs)
                .where(import_jobs.c.id == job_id, import_jobs.c.last_line == expected_last)
                .values(
                    last_line=batch.last_line,
                    accepted=import_jobs.c.accepted + len(batch.rows),
                    refused=import_jobs.c.refused + len(batch.refusals),
                    updated_at=to_db(now),
                )
            ).rowcount
            if moved != 1:
                raise ImportFailed("another run of this import moved its checkpoint: let that run finish")
        created = 0
        if sealed.card_rows:
            ids, created = self._record_ids(conn, {r.crm_ref for r in batch.rows}, now)
            for card_row in sealed.card_rows:
                card_row["record_id"] = ids[card_row["record_id"]]
            conn.execute(_INSERT_CARD, sealed.card_rows)
        lines = f"lines={batch.first_line}-{batch.last_line}"
        detail = (
            f"{lines} accepted={len(batch.rows)} refused={len(batch.refusals)} records_created={created}"
            + (f" alerts={alerts}" if alerts else "")
        )
        resource = f"import:{job_id or '-'}"
        uow.record(Event.IMPORT_BATCH, ok=True, resource=resource, detail=detail)
        if alerts:  # a card number outside the pan column, a security code: alerted once per batch
            uow.record(
                Event.IMPORT_REFUSED,
                ok=False,
                resource=resource,
                detail=f"{lines} alerts={alerts} (a card number outside the pan field, or a security code)",
            )
        return created

    def _count(self, report: Report, sealed: _Sealed, created: int) -> None:
        batch = sealed.batch
        with self._lock:
            report.batches += 1
            report.accepted += len(batch.rows)
            report.refused += len(batch.refusals)
            report.alerts += sum(1 for r in batch.refusals if r.alert)
            report.records_created += created

    def _commit(self, job_id: int | None, expected_last: int, sealed: _Sealed, report: Report) -> None:
        """One batch, one transaction of its own: committed, or rolled back with the checkpoint kept."""
        uow = self.svc.unit(self.origin)
        try:
            created = self._write(uow, job_id, expected_last, sealed)
            uow.commit()
        except BaseException:
            uow.rollback()
            raise
        self._count(report, sealed, created)
        for refusal in sealed.batch.refusals:
            self.on_refused(refusal)
        self.progress(len(sealed.batch.rows) + len(sealed.batch.refusals))

    # -- the whole run --------------------------------------------------------------------------

    def _batches(self, lines: Sequence[bytes], fmt: str, start: int) -> Iterator[_Batch]:
        rules = Rules(self.crm_pattern, self.svc.clock.now())
        batch = _Batch(last_line=start)
        for item in parse(lines, fmt, rules, start=start):
            batch.first_line = batch.first_line or item.line
            if isinstance(item, Row):
                batch.rows.append(item)
                batch.last_line = item.line
            else:
                batch.refusals.append(item)
                batch.last_line = item.line
            if len(batch.rows) + len(batch.refusals) >= self.batch_size:
                yield batch
                batch = _Batch(last_line=batch.last_line)
        if batch.rows or batch.refusals:
            yield batch

    def check_file(self, data: bytes, fmt: str) -> None:
        """The whole-file rules (size, format, header), audited when broken: FileRefused."""
        digest = hashlib.sha256(data).hexdigest()
        lines = split_lines(data)
        try:
            if len(data) > MAX_FILE_BYTES:
                raise FileRefused(f"the file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB: split it")
            if fmt not in FORMATS:
                raise FileRefused(f"unknown format: use one of {', '.join(FORMATS)}")
            if not lines:
                raise FileRefused("the file is empty")
            if fmt == "csv":
                csv_columns(lines[0])
                if len(lines) < 2:
                    raise FileRefused("no rows after the header")
        except FileRefused as exc:
            self.refused_file(exc.reason, alert=exc.alert, digest=digest)
            raise

    def run_file(self, data: bytes, fmt: str) -> Report:
        """Import a whole file's bytes (resuming after its checkpoint). Refusals go to on_refused."""
        self.check_file(data, fmt)
        digest = hashlib.sha256(data).hexdigest()
        lines = split_lines(data)
        report = Report(lines=len(lines))
        job_id = self._open_job(digest, fmt, report)
        if report.already_finished:
            return report
        self.progress(max(0, report.resumed_after - (fmt == "csv")))  # the header is no card
        self._pipeline(job_id, lines, fmt, report)
        self._finish_job(job_id, report)
        return report

    def _pipeline(self, job_id: int | None, lines: Sequence[bytes], fmt: str, report: Report) -> None:
        """Parse and encrypt batch k+1 while batch k is written: keyd and the database work at once.
        Batches commit in order, one at a time (one writer thread), each moving the checkpoint."""
        pending: Future[None] | None = None
        expected = report.resumed_after
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="import-writer") as writer:
                for batch in self._batches(lines, fmt, report.resumed_after):
                    sealed = self._seal(batch, self.svc.clock.now())
                    if pending is not None:
                        pending.result()
                    pending = writer.submit(self._commit, job_id, expected, sealed, report)
                    expected = batch.last_line
                if pending is not None:
                    pending.result()
        except KeydError as exc:
            reason = f"keyd: {exc.reason or exc.code.value}"
            self._failed(job_id, reason)
            raise ImportFailed(reason) from None
        except sa.exc.SQLAlchemyError as exc:
            reason = f"database error ({type(exc).__name__})"
            self._failed(job_id, reason)
            raise ImportFailed(reason) from None
        except ImportFailed as exc:
            self._failed(job_id, exc.reason)
            raise

    def run_rows(self, rows: Sequence[object], uow: UnitOfWork) -> Report:
        """The bulk API call: at most API_MAX_ROWS row objects (line N = the N-th row), one batch,
        written in the caller's unit of work (the request's: its Idempotency-Key record commits with
        the cards, so a retried call never stores them twice). No job row: the key is the job."""
        if not rows:
            raise FileRefused("no rows")
        if len(rows) > API_MAX_ROWS:
            raise FileRefused(f"at most {API_MAX_ROWS} rows per call")
        # The shape is the contract's (openapi.json): a row of another shape, or a field over its
        # length, refuses the whole call; a value breaking a card rule refuses its row alone.
        shaped: list[dict[str, str]] = []
        for number, obj in enumerate(rows, start=1):
            values = _json_object(obj, number)
            if isinstance(values, LineRefusal):
                raise FileRefused(f"row {number}: {values.rule}", alert=values.alert)
            for name in COLUMNS:
                if len(values[name]) > FIELD_MAX[name]:
                    if name != "pan" and contains_pan(values[name]):
                        raise FileRefused(f"row {number}: {name}: {PAN_REFUSAL}", alert=True)
                    raise FileRefused(f"row {number}: {name}: at most {FIELD_MAX[name]} characters")
            shaped.append(values)
        rules = Rules(self.crm_pattern, self.svc.clock.now())
        report = Report(lines=len(rows))
        batch = _Batch(first_line=1, last_line=len(rows))
        for number, values in enumerate(shaped, start=1):
            item = rules.row(number, values)
            (batch.rows if isinstance(item, Row) else batch.refusals).append(item)  # type: ignore[arg-type]
        sealed = self._seal(batch, self.svc.clock.now())  # KeydError: the caller's 503
        created = self._write(uow, None, 0, sealed)
        self._count(report, sealed, created)
        report.cards = [
            (row.line, card["id"], card["brand"], card["last4"])
            for row, card in zip(batch.rows, sealed.card_rows, strict=True)
        ]
        report.refusals = list(batch.refusals)
        return report
