"""Bulk import (webapp/records/bulk.py, `flask --app webapp records import`): hostile lines refused by
line number and rule with nothing echoed, whole-file refusals, exactly-once re-runs, one audit record
per batch, the audit write failing the batch, the bulk API function; with the real keyd: every
imported card decrypts like a browser-added one."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import Result
from flask import Flask

from keyd.client import Context, KeydClient
from tests.webapp.fakes import FakeVault
from tests.webapp.helpers import audit_rows, events, refuse_audit_inserts
from tests.webapp.records.support import keyd_running  # noqa: F401 - the module's real keyd
from webapp.audit import service as audit
from webapp.records import bulk, service
from webapp.records.tables import cards, customer_records, import_jobs
from webapp.services import services
from webapp.unit import Origin

HEADER = b"crm_ref,cardholder,pan,expiry"
GOOD_EXPIRY = "12/2030"


def luhn(prefix: str, length: int = 16) -> str:
    """A Luhn-valid number of `length` digits starting with `prefix`."""
    body = prefix.ljust(length - 1, "7")
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return body + str((10 - total % 10) % 10)


PAN = luhn("4539")
OTHER_PAN = luhn("5204", 16)
BAD_LUHN = PAN[:-1] + str((int(PAN[-1]) + 1) % 10)


def good(i: int, *, crm: str = "C1000001") -> bytes:
    return f"{crm},Jane Doe,{luhn('4539' + str(i).zfill(4))},{GOOD_EXPIRY}".encode()


def write(tmp_path: Path, lines: list[bytes], name: str = "cards.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def run(app: Flask, path: Path, *extra: str) -> Result:
    return app.test_cli_runner().invoke(args=["records", "import", str(path), *extra])


def count(app: Flask, table: sa.Table) -> int:
    with services(app).engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


# (bad line, field, rule fragment, alerted). Each goes between two good lines: it is line 3.
BAD_CSV_LINES = [
    pytest.param(f"C1000001,Jane Doe,{BAD_LUHN},{GOOD_EXPIRY}".encode(), "pan", "Luhn", False, id="bad-luhn"),
    pytest.param(b"C1000001,Jane Doe,4539123,12/2030", "pan", "13 to 19 digits", False, id="short-pan"),
    pytest.param(f"C1000001,Jane Doe,{PAN},01/2020".encode(), "expiry", "expired", False, id="expired"),
    pytest.param(f"C1000001,Jane Doe,{PAN},12/30".encode(), "expiry", "MM/YYYY", False, id="expiry-format"),
    pytest.param(f"C1000001,Jane Doe,{PAN},13/2030".encode(), "expiry", "MM/YYYY", False, id="month-13"),
    pytest.param(
        f"X-1,Jane Doe,{PAN},{GOOD_EXPIRY}".encode(), "crm_ref", "wrong format", False, id="bad-crm"
    ),
    pytest.param(
        f"{OTHER_PAN},Jane Doe,{PAN},{GOOD_EXPIRY}".encode(), "crm_ref", "card number", True, id="pan-crm"
    ),
    pytest.param(
        f"C1000001,{OTHER_PAN},{PAN},{GOOD_EXPIRY}".encode(), "cardholder", "card number", True, id="pan-name"
    ),
    pytest.param(
        f"C1000001,{OTHER_PAN[:8]} {OTHER_PAN[8:]},{PAN},{GOOD_EXPIRY}".encode(),
        "cardholder",
        "card number",
        True,
        id="spaced-pan-name",
    ),
    pytest.param(
        f"C1000001,Jane Doe,{PAN},{OTHER_PAN}".encode(), "expiry", "card number", True, id="pan-expiry"
    ),
    pytest.param(
        f"C1000001,Jane D0e,{PAN},{GOOD_EXPIRY}".encode(), "cardholder", "letters", False, id="digit-name"
    ),
    pytest.param(
        f"C1000001,{'A' * 70},{PAN},{GOOD_EXPIRY}".encode(), "cardholder", "too long", False, id="long-name"
    ),
    pytest.param(
        f"C1000001,Jane Doe,{PAN},{GOOD_EXPIRY},123".encode(), "line", "4 columns", False, id="5-columns"
    ),
    pytest.param(f"C1000001,Jane Doe,{PAN}".encode(), "line", "4 columns", False, id="3-columns"),
    pytest.param(
        b"C1000001,Jane " + b"x" * 600 + PAN.encode() + b",12/2030", "line", "too long", False, id="overlong"
    ),
    pytest.param(
        f"C1000001,J\xff,{PAN},{GOOD_EXPIRY}".encode("latin-1"), "line", "UTF-8", False, id="bad-utf8"
    ),
    pytest.param(b"   ", "line", "empty line", False, id="blank"),
    pytest.param(f'C1000001,"Jane {PAN},{GOOD_EXPIRY}'.encode(), "line", "quoting", False, id="open-quote"),
    pytest.param(
        f"C1000001,Jane\x00Doe,{PAN},{GOOD_EXPIRY}".encode(), "cardholder", "control", False, id="nul"
    ),
]


@pytest.mark.parametrize(("bad", "field", "rule", "alerted"), BAD_CSV_LINES)
def test_a_bad_line_is_reported_by_number_and_rule_and_never_echoed(
    app: Flask, tmp_path: Path, bad: bytes, field: str, rule: str, alerted: bool
) -> None:
    path = write(tmp_path, [HEADER, good(1), bad, good(2)])
    result = run(app, path)
    assert result.exit_code == bulk_exit_refused(), result.output
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("line ")]
    number, where, why = line.split("\t")
    assert (number, where) == ("line 3", field)
    assert rule in why
    for secret in (PAN, OTHER_PAN, BAD_LUHN, OTHER_PAN[:8], "Jane", "xxxx"):
        assert secret not in result.output
    assert "accepted=2 refused=1" in result.stdout
    assert count(app, cards) == 2
    (batch,) = audit_rows(app, "records.import_batch")
    assert "accepted=2 refused=1" in batch.detail
    for row in audit_rows(app):
        assert PAN not in row.detail
        assert OTHER_PAN not in row.detail
    assert ("records.import_refused" in events(app)) is alerted


def bulk_exit_refused() -> int:
    from webapp.records.commands import EXIT_REFUSED_LINES

    return EXIT_REFUSED_LINES


# Whole-file refusals: nothing stored, exit 1, the reason in one line, no value echoed.
BAD_FILES = [
    pytest.param(b"", "empty", False, id="empty"),
    pytest.param(f"C1000001,Jane Doe,{PAN},{GOOD_EXPIRY}\n".encode(), "header", False, id="no-header"),
    pytest.param(
        b"crm_ref,cardholder,pan,expiry,cvv\n" + good(1) + b",123\n", "security-code", True, id="cvv"
    ),
    pytest.param(b"crm_ref,cardholder,pan,CVC2\n", "security-code", True, id="cvc2-upper"),
    pytest.param(b"crm_ref,cardholder,pan\n", "header", False, id="column-missing"),
    pytest.param(
        b"crm_ref,cardholder,pan,expiry,notes\n" + good(1) + b",x\n", "header", False, id="extra-column"
    ),
    pytest.param(b"crm_ref,crm_ref,pan,expiry\n" + good(1) + b"\n", "header", False, id="duplicate-column"),
    pytest.param(HEADER + b"\n", "no rows", False, id="header-only"),
    pytest.param(b"\xff\xfecrm_ref\n", "UTF-8", False, id="utf16-bom"),
]


@pytest.mark.parametrize(("content", "reason", "alerted"), BAD_FILES)
def test_a_bad_file_is_refused_whole(
    app: Flask, tmp_path: Path, content: bytes, reason: str, alerted: bool
) -> None:
    path = tmp_path / "cards.csv"
    path.write_bytes(content)
    result = run(app, path)
    assert result.exit_code == 1, result.output
    assert reason in result.stderr
    assert "nothing was imported" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert PAN not in result.output
    assert "Jane" not in result.output
    assert count(app, cards) == 0
    assert count(app, import_jobs) == 0
    assert ("records.import_refused" in events(app)) is alerted
    assert audit_rows(app, "records.import_refused" if alerted else "records.import_failed")


BAD_JSON_LINES = [
    pytest.param(
        {"crm_ref": "C1000001", "cardholder": "Jane Doe", "pan": PAN, "expiry": GOOD_EXPIRY, "cvv": "123"},
        "security codes",
        True,
        id="cvv-key",
    ),
    pytest.param(
        {"crm_ref": "C1000001", "cardholder": "Jane Doe", "pan": PAN, "expiry": GOOD_EXPIRY, "x": "1"},
        "unknown field",
        False,
        id="unknown-key",
    ),
    pytest.param(
        {"crm_ref": "C1000001", "cardholder": "Jane Doe", "pan": PAN}, "required", False, id="missing"
    ),
    pytest.param(
        {"crm_ref": "C1000001", "cardholder": "Jane Doe", "pan": int(PAN), "expiry": GOOD_EXPIRY},
        "string",
        False,
        id="number-pan",
    ),
    pytest.param([PAN], "object", False, id="array"),
    pytest.param("not json " + PAN, "valid JSON", False, id="garbage"),
]


def _jsonl(obj: object) -> bytes:
    return obj.encode() if isinstance(obj, str) else json.dumps(obj).encode()


def _good_json(i: int) -> bytes:
    crm, name, pan, exp = good(i).decode().split(",")
    return json.dumps({"crm_ref": crm, "cardholder": name, "pan": pan, "expiry": exp}).encode()


@pytest.mark.parametrize(("obj", "rule", "alerted"), BAD_JSON_LINES)
def test_a_bad_json_line_is_reported_and_never_echoed(
    app: Flask, tmp_path: Path, obj: object, rule: str, alerted: bool
) -> None:
    path = write(tmp_path, [_good_json(1), _jsonl(obj), _good_json(2)], "cards.jsonl")
    result = run(app, path)
    assert result.exit_code == bulk_exit_refused(), result.output
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("line ")]
    assert line.startswith("line 2\tline\t")
    assert rule in line
    assert PAN not in result.output
    assert count(app, cards) == 2
    assert ("records.import_refused" in events(app)) is alerted


def test_a_second_run_of_a_finished_file_stores_nothing_twice(app: Flask, tmp_path: Path) -> None:
    path = write(tmp_path, [HEADER, *(good(i, crm=f"C10000{i % 3:02d}") for i in range(7))])
    first = run(app, path, "--batch-size", "3")
    assert first.exit_code == 0, first.output
    assert "accepted=7 refused=0 records_created=3 batches=3" in first.stdout
    again = run(app, path)
    assert again.exit_code == 0, again.output
    assert "already imported" in again.stdout
    assert count(app, cards) == 7
    assert count(app, customer_records) == 3
    batches = audit_rows(app, "records.import_batch")
    assert [b.detail for b in batches] == [
        "lines=2-4 accepted=3 refused=0 records_created=3",
        "lines=5-7 accepted=3 refused=0 records_created=0",
        "lines=8-8 accepted=1 refused=0 records_created=0",
    ]
    assert all(b.actor.startswith("cli:") for b in batches)
    (done,) = audit_rows(app, "records.import_finished")
    assert "accepted=7 refused=0" in done.detail
    with services(app).engine.connect() as conn:
        assert audit.verify(conn).ok


def test_an_existing_record_is_found_by_its_crm_reference(app: Flask, tmp_path: Path) -> None:
    with services(app).engine.begin() as conn:
        conn.execute(
            sa.insert(customer_records).values(crm_ref="C1000001", created_at=sa.func.now(), created_by="x")
        )
    result = run(app, write(tmp_path, [HEADER, good(1), good(2)]))
    assert result.exit_code == 0, result.output
    assert count(app, customer_records) == 1
    with services(app).engine.connect() as conn:
        assert set(conn.execute(sa.select(cards.c.record_id)).scalars()) == {1}


def test_when_the_audit_write_fails_the_batch_is_not_stored(
    app: Flask, tmp_path: Path, owner_engine: sa.Engine
) -> None:
    path = write(tmp_path, [HEADER, good(1), good(2)])
    refuse_audit_inserts(owner_engine)
    result = run(app, path)
    assert result.exit_code == 1
    assert count(app, cards) == 0
    assert count(app, customer_records) == 0


def test_the_format_must_be_known(app: Flask, tmp_path: Path) -> None:
    path = write(tmp_path, [HEADER, good(1)], "cards.txt")
    result = run(app, path)
    assert result.exit_code == 1
    assert "--format" in result.stderr
    assert run(app, path, "--format", "csv").exit_code == 0


def test_the_report_can_go_to_a_file(app: Flask, tmp_path: Path) -> None:
    path = write(tmp_path, [HEADER, good(1), f"C1000001,Jane Doe,{BAD_LUHN},{GOOD_EXPIRY}".encode()])
    report = tmp_path / "refused.tsv"
    result = run(app, path, "--report", str(report))
    assert result.exit_code == bulk_exit_refused()
    assert report.read_text() == "line 3\tpan\tcard number: check digit is wrong (Luhn)\n"
    assert BAD_LUHN not in report.read_text()


def test_the_api_function_writes_in_the_callers_unit_of_work(app: Flask) -> None:
    rows = [json.loads(_good_json(1)), {"crm_ref": "C1000001", "cardholder": "Jane Doe", "pan": BAD_LUHN,
            "expiry": GOOD_EXPIRY}, json.loads(_good_json(2))]  # fmt: skip
    svc = services(app)
    with app.app_context():
        importer = bulk.Importer(svc, origin=Origin(actor="crm"), crm_pattern=r"^C[0-9]{6,10}$")
        uow = svc.unit(Origin(actor="crm"))
        report = importer.run_rows(rows, uow)
        assert count(app, cards) == 0  # nothing committed: the caller commits (with its Idempotency-Key)
        uow.commit()
        assert report.accepted == 2
        assert [c[0] for c in report.cards] == [1, 3]
        assert [(r.line, r.field) for r in report.refusals] == [(2, "pan")]
        with pytest.raises(bulk.FileRefused):
            importer.run_rows([rows[0]] * (bulk.API_MAX_ROWS + 1), svc.unit(Origin(actor="crm")))
    assert count(app, cards) == 2
    (batch,) = audit_rows(app, "records.import_batch")
    assert batch.actor == "crm"
    assert "accepted=2 refused=1" in batch.detail


# --- the real keyd ------------------------------------------------------------------------------


@pytest.fixture
def keyd_vault(keyd_running: tuple[object, bytes]) -> Iterator[KeydClient]:  # noqa: F811
    client = KeydClient(keyd_running[0].socket, timeout=10.0)  # type: ignore[attr-defined]
    yield client
    client.close()


def test_imported_cards_decrypt_like_browser_added_ones(
    make_app: Callable[..., Flask], keyd_vault: KeydClient, tmp_path: Path
) -> None:
    app = make_app()
    services(app).vault = keyd_vault
    lines = [HEADER, *(good(i, crm=f"C2{i % 5:06d}") for i in range(700))]
    result = run(app, write(tmp_path, lines), "--batch-size", "400")
    assert result.exit_code == 0, result.output
    with services(app).engine.connect() as conn:
        stored = conn.execute(sa.select(cards, customer_records.c.crm_ref).join(customer_records)).all()
    assert len(stored) == 700
    expected = sorted(line.decode().split(",") for line in lines[1:])
    got: list[list[str]] = []
    got_by_id: dict[str, list[str]] = {}
    for row in stored:
        fields = {}
        for name, blob in (("pan", row.pan_ct), ("cardholder", row.name_ct), ("expiry", row.expiry_ct)):
            fields[name] = keyd_vault.decrypt(
                bytes(blob), context=Context(row.id, name), actor="check", purpose="check"
            ).decode()
        assert row.last4 == fields["pan"][-4:]
        assert row.brand == "visa"
        got.append([row.crm_ref, fields["cardholder"], fields["pan"], fields["expiry"]])
        got_by_id[row.id] = got[-1]
    assert sorted(got) == expected
    # The reveal's own read path (service.unchecked_decrypt: the row's id as the context) opens them too.
    with services(app).engine.connect() as conn:
        for name in ("pan", "cardholder", "expiry"):
            plain = service.unchecked_decrypt(
                conn, keyd_vault, stored[0].id, name, actor="check", purpose="reveal"
            ).decode()
            want = {"pan": got_by_id[stored[0].id][2], "cardholder": "Jane Doe", "expiry": GOOD_EXPIRY}
            assert plain == want[name]


def test_a_second_run_moving_the_checkpoint_first_stops_this_one(
    app: Flask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs of one file at once: the checkpoint moves only from the value a run last saw, so the
    one that finds it moved rolls its batch back and stops; no card is stored twice."""
    path = write(tmp_path, [HEADER, *(good(i) for i in range(6))])
    seal = bulk.Importer._seal

    def other_run_first(self: bulk.Importer, batch: Any, now: Any) -> Any:
        with services(app).engine.begin() as conn:
            conn.execute(sa.update(import_jobs).values(last_line=import_jobs.c.last_line + 3))
        return seal(self, batch, now)

    monkeypatch.setattr(bulk.Importer, "_seal", other_run_first)
    result = run(app, path, "--batch-size", "3")
    assert result.exit_code == 1
    assert "another run of this import" in result.stderr
    assert "run the same command again" in result.stderr
    assert count(app, cards) == 0
    assert audit_rows(app, "records.import_failed")


def test_keyd_sealed_midway_keeps_the_committed_batches_and_a_rerun_resumes(
    app: Flask, vault: FakeVault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, [HEADER, *(good(i) for i in range(7))])
    seal, sealed = bulk.Importer._seal, []

    def seal_after_first(self: bulk.Importer, batch: Any, now: Any) -> Any:
        sealed.append(batch)
        vault.sealed = len(sealed) > 1
        return seal(self, batch, now)

    monkeypatch.setattr(bulk.Importer, "_seal", seal_after_first)
    first = run(app, path, "--batch-size", "3")
    assert first.exit_code == 1
    assert "keyd" in first.stderr
    assert "run the same command again to resume" in first.stderr
    assert count(app, cards) == 3
    (failed,) = audit_rows(app, "records.import_failed")
    assert "sealed" in failed.detail
    assert "records.import_failed" in events(app)
    monkeypatch.setattr(bulk.Importer, "_seal", seal)
    vault.sealed = False
    again = run(app, path, "--batch-size", "3")
    assert again.exit_code == 0, again.output
    assert "resumed after line 4" in again.stdout
    assert count(app, cards) == 7
