"""Counting ciphertexts per key version, rewrapping them under the newest version, and the retire guard.

Every encrypted column is found through `webapp.records.tables.ENCRYPTED_COLUMNS`; the keyd context of
each ciphertext is (row id as text, field name), exactly as the code that wrote it used.

Rewrap never loses a concurrent edit: a field is updated only if it still holds the very ciphertext
that was rewrapped (compare-and-swap in the UPDATE's WHERE). An edit that landed in between wrote a
ciphertext under the newest version already, so skipping the field is correct. Rows are handled in
batches; each batch's updates and the checkpoint commit together, so a job killed at any point
resumes after the last committed batch and redoes at most one batch (which is harmless: fields
already under the target version are skipped).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from keyd.client import HEADER_LEN, Context, header_key_version, key_version
from keyd.errors import KeydError, Sealed, Unavailable
from webapp.clock import to_db
from webapp.db.engine import READ_ONLY
from webapp.keys.tables import key_rewrap_checkpoints
from webapp.records.tables import ENCRYPTED_COLUMNS

# keyd refuses a batch of more than 1000 items (docs/keyd.md, bad_count).
MAX_BATCH = 1000
# keyd calls per database transaction (see Rewrapper._rows).
COMMIT_BATCHES = 4
# Rows per MariaDB compare-and-swap statement: its CASE is scanned per row, so small chunks win (bench).
_CAS_CHUNK = 50
PURPOSE = "key.rewrap"


class Rewrapping(Protocol):
    """What the job needs from keyd (keyd.client.KeydClient is the real one)."""

    def rewrap_batch(
        self, items: Sequence[tuple[Context, bytes]], *, actor: str, purpose: str
    ) -> list[bytes | KeydError]: ...


class KeysRefused(Exception):
    """A key operation refused for a stated reason (never a secret in the message)."""


# --- key versions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionCount:
    table: str
    field: str
    version: int | None  # None: the column holds something that is not a keyd ciphertext
    count: int


def _header_version(head: bytes | None) -> int | None:
    # Only the header is fetched (SUBSTR in SQL), so only the header is checked: a value cut short
    # after it is counted under its version here, and keyd refuses it when it is opened.
    if head is None:
        return None
    try:
        return header_key_version(bytes(head))
    except ValueError:
        return None


def count_versions(conn: sa.Connection) -> list[VersionCount]:
    """Ciphertexts per table, field and key version, counted in SQL (one GROUP BY per column)."""
    out: list[VersionCount] = []
    for table, columns in ENCRYPTED_COLUMNS.items():
        for name, column in columns.items():
            head = sa.func.substr(column, 1, HEADER_LEN)
            rows = conn.execute(
                sa.select(head, sa.func.count()).where(column.is_not(None)).group_by(head)
            ).all()
            per: Counter[int | None] = Counter()
            for h, n in rows:
                per[_header_version(h)] += int(n)
            out += [VersionCount(table.name, name, v, n) for v, n in per.items()]
    return sorted(out, key=lambda c: (c.table, c.field, c.version or 0))


def totals(counts: Sequence[VersionCount]) -> dict[int | None, int]:
    per: Counter[int | None] = Counter()
    for c in counts:
        per[c.version] += c.count
    return dict(per)


def check_retire(conn: sa.Connection, min_version: int) -> None:
    """Refuse to retire while any stored field still needs a version below `min_version`."""
    if min_version < 1:
        raise KeysRefused("the minimum version must be at least 1")
    counts = count_versions(conn)
    bad = [c for c in counts if c.version is None]
    if bad:
        raise KeysRefused(
            f"{sum(c.count for c in bad)} field(s) do not hold a keyd ciphertext; fix them first"
        )
    old = [c for c in counts if c.version is not None and c.version < min_version]
    if old:
        where = ", ".join(f"{c.table}.{c.field} v{c.version}: {c.count}" for c in old)
        raise KeysRefused(
            f"{sum(c.count for c in old)} field(s) still use versions below {min_version} ({where}); "
            "run rewrap first"
        )


# --- rewrap ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    table: str
    row_id: str
    field: str
    reason: str  # keyd's stable reason code


@dataclass
class RewrapReport:
    target_version: int
    rewrapped: int = 0
    already_current: int = 0
    changed_concurrently: int = 0
    failures: list[Failure] = field(default_factory=list)
    resumed: dict[str, str | None] = field(default_factory=dict)  # table -> last id it resumed after
    restarted: list[str] = field(default_factory=list)  # checkpoints dropped: made for another version

    @property
    def ok(self) -> bool:
        return not self.failures


def _pk(table: sa.Table) -> sa.Column[Any]:
    pk = list(table.primary_key.columns)
    if len(pk) != 1:
        raise KeysRefused(f"{table.name}: rewrap needs a single-column primary key")
    return pk[0]


def _id_value(column: sa.Column[Any], text: str) -> Any:
    return int(text) if column.type.python_type is int else text


class Rewrapper:
    """Rewraps every stored ciphertext below `target_version` through keyd, batch by batch.

    `progress(n)` is told after each committed batch how many fields it looked at; `between(table, ids)`
    (tests only) runs after a batch was read and before its updates, to stage a concurrent edit.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        keyd: Rewrapping,
        actor: str,
        now: Callable[[], datetime],
        batch_size: int = MAX_BATCH,
        progress: Callable[[int], None] | None = None,
        between: Callable[[sa.Table, list[Any]], None] | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch size must be 1..{MAX_BATCH}")
        self._engine = engine
        self._keyd = keyd
        self._actor = actor
        self._now = now
        self._batch = batch_size
        self._progress = progress or (lambda _n: None)
        self._between = between

    def forget_checkpoint(self) -> None:
        with self._engine.begin() as conn:
            conn.execute(sa.delete(key_rewrap_checkpoints))

    def run(self, target_version: int) -> RewrapReport:
        if target_version < 1:
            raise ValueError("target version must be at least 1")
        report = RewrapReport(target_version)
        with self._engine.connect().execution_options(**{READ_ONLY: True}) as conn:
            saved = {r.table_name: r for r in conn.execute(sa.select(key_rewrap_checkpoints))}
        for table, columns in ENCRYPTED_COLUMNS.items():
            mark = saved.get(table.name)
            if mark is not None and mark.target_version != target_version:
                # keyd was rotated again since the interrupted pass: the rows before its checkpoint
                # are under the previous target, so this pass must start from the first row.
                report.restarted.append(table.name)
                mark = None
            if mark is not None and mark.done:
                report.resumed[table.name] = "done"
                continue
            last = mark.last_id if mark is not None else None
            if mark is not None:
                report.resumed[table.name] = last
            self._table(table, columns, last, report)
        # The pass ran to its end (fields keyd refused are in the report, not in the checkpoint): a
        # later run starts from the first row again, re-examines everything and reports them again.
        self.forget_checkpoint()
        return report

    def _rows(
        self, table: sa.Table, columns: dict[str, sa.Column[bytes]], last: str | None
    ) -> Iterator[list[sa.Row]]:
        pk = _pk(table)
        # Rows per transaction: a few keyd calls' worth, so one durable commit covers thousands of
        # fields; the write lock is held only for the UPDATEs (reads and keyd calls happen outside).
        per_tx = max(1, (self._batch * COMMIT_BATCHES) // len(columns)) if self._batch > 1 else 1
        cursor = _id_value(pk, last) if last is not None else None
        while True:
            q = sa.select(pk, *columns.values()).order_by(pk).limit(per_tx)
            if cursor is not None:
                q = q.where(pk > cursor)
            with self._engine.connect().execution_options(**{READ_ONLY: True}) as conn:
                rows = list(conn.execute(q).all())
            if not rows:
                return
            yield rows
            cursor = rows[-1][0]

    def _classify(
        self, table: sa.Table, names: list[str], rows: list[sa.Row], report: RewrapReport
    ) -> list[tuple[Any, str, bytes]]:
        """The fields of `rows` below the target version; the others are counted or reported."""
        target = report.target_version
        todo: list[tuple[Any, str, bytes]] = []
        for row in rows:
            for i, name in enumerate(names, start=1):
                blob = row[i]
                if blob is None:
                    continue
                blob = bytes(blob)
                try:
                    version = key_version(blob)
                except ValueError:
                    report.failures.append(Failure(table.name, str(row[0]), name, "not_a_ciphertext"))
                    continue
                if version >= target:
                    report.already_current += 1
                else:
                    todo.append((row[0], name, blob))
        return todo

    def _rewrap(self, todo: list[tuple[Any, str, bytes]]) -> list[bytes | KeydError]:
        results: list[bytes | KeydError] = []
        for start in range(0, len(todo), self._batch):
            chunk = todo[start : start + self._batch]
            results += self._keyd.rewrap_batch(
                [(Context(str(rid), name), blob) for rid, name, blob in chunk],
                actor=self._actor,
                purpose=PURPOSE,
            )
        return results

    def _table(
        self, table: sa.Table, columns: dict[str, sa.Column[bytes]], last: str | None, report: RewrapReport
    ) -> None:
        names = list(columns)
        # A pipeline of two: keyd rewraps batch N+1 (in its own process) while this one writes batch N.
        # Batches still commit strictly in order, so the checkpoint is always a committed prefix.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewrap") as pool:
            pending: tuple[list[sa.Row], list[tuple[Any, str, bytes]], Future[list[bytes | KeydError]]] | None
            pending = None
            for rows in self._rows(table, columns, last):
                todo = self._classify(table, names, rows, report)
                future = pool.submit(self._rewrap, todo)
                if pending is not None:
                    self._apply(table, columns, *pending, report)
                pending = (rows, todo, future)
            if pending is not None:
                self._apply(table, columns, *pending, report)
        with self._engine.begin() as conn:
            self._checkpoint(conn, table, None, report.target_version, done=True)

    def _apply(
        self,
        table: sa.Table,
        columns: dict[str, sa.Column[bytes]],
        rows: list[sa.Row],
        todo: list[tuple[Any, str, bytes]],
        future: Future[list[bytes | KeydError]],
        report: RewrapReport,
    ) -> None:
        pk = _pk(table)
        results = future.result()  # a keyd failure (Sealed, Unavailable) is raised here
        updates: dict[str, list[tuple[Any, bytes, bytes]]] = {name: [] for name in columns}
        for (rid, name, blob), result in zip(todo, results, strict=True):
            if isinstance(result, (Sealed, Unavailable)):
                raise result  # keyd went away mid-job: stop; the checkpoint holds
            if isinstance(result, KeydError):
                report.failures.append(
                    Failure(table.name, str(rid), name, result.reason or result.code.value)
                )
            else:
                updates[name].append((result, rid, blob))
        if self._between is not None:
            self._between(table, [r[0] for r in rows])
        with self._engine.begin() as conn:
            for name, params in updates.items():
                if params:
                    changed = self._swap(conn, table, pk, columns[name], params)
                    report.rewrapped += changed
                    report.changed_concurrently += len(params) - changed
            self._checkpoint(conn, table, str(rows[-1][0]), report.target_version, done=False)
        self._progress(sum(1 for row in rows for v in row[1:] if v is not None))

    @staticmethod
    def _swap(
        conn: sa.Connection,
        table: sa.Table,
        pk: sa.Column[Any],
        column: sa.Column[bytes],
        params: list[tuple[Any, bytes, bytes]],
    ) -> int:
        """Compare-and-swap each field: only where it still holds the ciphertext that was rewrapped.

        One statement, executemany'd through the driver: SQLAlchemy's per-row parameter processing
        cost more than the database itself (bench/bench_rewrap.py).
        """
        quote = conn.dialect.identifier_preparer.quote
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        if conn.dialect.paramstyle not in ("qmark", "format", "pyformat"):
            raise KeysRefused(f"unsupported driver parameter style {conn.dialect.paramstyle}")
        col = quote(column.name)
        # Identifiers come from the schema registry and are quoted by the dialect; values are bound.
        key = quote(pk.name)
        name = quote(table.name)
        if conn.dialect.name in ("mysql", "mariadb"):
            # PyMySQL runs an UPDATE executemany as one round trip per row: instead, one UPDATE per
            # chunk. The WHERE holds every (id, old ciphertext) pair, so with the engine's
            # CLIENT_FOUND_ROWS the rowcount is exactly the fields that were swapped. (No derived
            # table: with BLOBs in it MariaDB would build an on-disk temporary table per statement.)
            changed = 0
            for start in range(0, len(params), _CAS_CHUNK):
                chunk = params[start : start + _CAS_CHUNK]
                cases = " ".join(["WHEN %s THEN %s"] * len(chunk))
                match = " OR ".join([f"({key} = %s AND {col} = %s)"] * len(chunk))
                sql = f"UPDATE {name} SET {col} = CASE {key} {cases} END WHERE {match}"  # noqa: S608
                flat = tuple(x for new, rid, _old in chunk for x in (rid, new))
                flat += tuple(x for _new, rid, old in chunk for x in (rid, old))
                changed += int(conn.exec_driver_sql(sql, flat).rowcount)
            return changed
        sql = f"UPDATE {name} SET {col} = {mark} WHERE {key} = {mark} AND {col} = {mark}"  # noqa: S608
        if conn.dialect.supports_sane_multi_rowcount:
            return int(conn.exec_driver_sql(sql, params).rowcount)
        return sum(int(conn.exec_driver_sql(sql, p).rowcount) for p in params)

    def _checkpoint(
        self, conn: sa.Connection, table: sa.Table, last: str | None, target: int, *, done: bool
    ) -> None:
        values = {"last_id": last, "done": done, "target_version": target, "updated_at": to_db(self._now())}
        updated = conn.execute(
            sa.update(key_rewrap_checkpoints)
            .where(key_rewrap_checkpoints.c.table_name == table.name)
            .values(**({k: v for k, v in values.items() if k != "last_id" or not done}))
        ).rowcount
        if not updated:
            conn.execute(sa.insert(key_rewrap_checkpoints).values(table_name=table.name, **values))
