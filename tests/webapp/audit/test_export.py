"""The auditor's CSV export: auditors only, bounded (refused over the bound, never cut short),
spreadsheet formulas neutralised, card numbers masked, and audited in the same unit of work (no
audit record, no file)."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.webapp.audit.support import link, write_records
from tests.webapp.conftest import get
from tests.webapp.helpers import audit_rows, events, refuse_audit_inserts
from webapp.audit import export
from webapp.db.tables import audit_log
from webapp.events import Event

AsRole = Callable[[str], FlaskClient]
PAN = "4111111111111111"


def _rows(r: TestResponse) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(r.data.decode("utf-8-sig"), newline="")))


def test_the_auditor_exports_the_filtered_log(app: Flask, as_role: AsRole) -> None:
    write_records(app, "walker", 3)
    write_records(app, "other", 2)
    auditor = as_role("auditor")
    page = get(auditor, "/audit/?actor=walker&outcome=success").text
    url = link(page, "Export these records as CSV")
    assert url == "/audit/export.csv?actor=walker&outcome=success"
    r = get(auditor, url)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert re.fullmatch(
        r'attachment; filename="strongroom-audit-20261125T100000Z\.csv"', r.headers["Content-Disposition"]
    )
    assert r.headers["Cache-Control"] == "no-store"
    assert r.data.startswith("\ufeff".encode())  # UTF-8, marked for spreadsheets
    rows = _rows(r)
    assert [row["resource"] for row in rows] == ["/w0", "/w1", "/w2"]  # oldest first
    assert list(rows[0]) == list(export.COLUMNS)
    assert {row["actor"] for row in rows} == {"walker"}
    assert rows[0]["at"].endswith("Z")
    exported = audit_rows(app, Event.AUDIT_EXPORTED)[-1]
    assert exported.outcome == "success"
    assert exported.resource == "/audit/export"
    assert exported.detail == "rows=3 actor=walker outcome=success"
    assert Event.AUDIT_EXPORTED not in events(app)  # recorded, not mailed


@pytest.mark.parametrize("role", ["supervisor", "clerk", "admin"])
def test_only_the_auditor_exports(app: Flask, as_role: AsRole, role: str) -> None:
    client = as_role(role)
    r = get(client, "/audit/export.csv")
    assert r.status_code == 403
    assert not r.headers["Content-Type"].startswith("text/csv")
    assert "Content-Disposition" not in r.headers
    denied = audit_rows(app, Event.ACCESS_DENIED)[-1]
    assert (denied.resource, denied.detail) == ("audit.export", "role:auditor")
    assert not audit_rows(app, Event.AUDIT_EXPORTED)
    if role == "supervisor":  # reads the log, is not offered the export
        assert "Export these records" not in get(client, "/audit/").text


def test_more_rows_than_the_bound_are_refused_not_cut(app: Flask, as_role: AsRole) -> None:
    app.config["AUDIT_EXPORT_MAX_ROWS"] = 4
    write_records(app, "walker", 4)
    write_records(app, "walker", 1, ok=False, resource="/refused")
    auditor = as_role("auditor")
    r = get(auditor, "/audit/export.csv?actor=walker")
    assert r.status_code == 400
    assert r.headers["Content-Type"].startswith("text/html")
    assert "Content-Disposition" not in r.headers
    assert "more than 4 records match" in r.text
    assert "Narrow the filter" in r.text
    assert link(r.text, "Back to these records") == "/audit/?actor=walker"
    refused = audit_rows(app, Event.AUDIT_EXPORTED)[-1]
    assert (refused.outcome, refused.detail) == ("failure", "too_many>4 actor=walker")
    # Narrowed to exactly the bound: exported, all of it.
    r = get(auditor, "/audit/export.csv?actor=walker&outcome=success")
    assert r.status_code == 200
    assert [row["resource"] for row in _rows(r)] == ["/w0", "/w1", "/w2", "/w3"]
    assert audit_rows(app, Event.AUDIT_EXPORTED)[-1].detail == "rows=4 actor=walker outcome=success"


def test_the_bound_is_a_setting_with_a_range(make_app: Callable[..., Flask]) -> None:
    from webapp.config import ConfigError

    for bad in (0, 100_001, "many", True):
        with pytest.raises(ConfigError, match="AUDIT_EXPORT_MAX_ROWS"):
            make_app(AUDIT_EXPORT_MAX_ROWS=bad)
    assert make_app().config["AUDIT_EXPORT_MAX_ROWS"] == 10_000


@pytest.mark.parametrize(
    ("cell", "exported"),
    [
        ('=HYPERLINK("http://evil.example","x")', '\'=HYPERLINK("http://evil.example","x")'),
        ("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0"),
        ("-2+3", "'-2+3"),
        ("-", "'-"),
        ("@SUM(A1:A2)", "'@SUM(A1:A2)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("plain text", "plain text"),
        ("a=b", "a=b"),
        (" =1", " =1"),
        ("'quoted", "'quoted"),
        ("", ""),
        ('héllo, "wörld"\nnext', 'héllo, "wörld"\nnext'),
    ],
)
def test_formula_cells_are_neutralised(cell: str, exported: str) -> None:
    assert export.neutralise(cell) == exported
    text = export.to_csv([_Row(detail=cell)])
    [row] = list(csv.DictReader(io.StringIO(text.removeprefix("\ufeff"), newline="")))
    assert row["detail"] == exported


class _Row:
    def __init__(self, **fields: str) -> None:
        for name in export.COLUMNS:
            setattr(self, name, fields.get(name, "x"))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("resource", "=1+1"),
        ("detail", "@cmd"),
        ("detail", "+SUM(1)"),
        ("resource", "-1"),
        ("detail", "\t=1"),
    ],
)
def test_exported_records_are_neutralised_end_to_end(
    app: Flask, as_role: AsRole, field: str, value: str
) -> None:
    kw = {field: value}
    write_records(app, "walker", 1, **kw)  # type: ignore[arg-type]
    r = get(as_role("auditor"), "/audit/export.csv?actor=walker")
    [row] = _rows(r)
    assert row[field] == "'" + value
    assert row["ip"] == "10.0.0.9"


def test_card_numbers_never_leave_in_an_export(app: Flask, as_role: AsRole, owner_engine: sa.Engine) -> None:
    auditor = as_role("auditor")
    write_records(app, "walker", 1, detail=f"typed {PAN} here")  # masked when written
    last = audit_rows(app)[-1]
    forged = {c: getattr(last, c) for c in last._fields} | {
        "seq": last.seq + 10_000,  # clear of the records the app appends meanwhile
        "detail": f"slipped {PAN} in",  # a row that reached the table some other way
    }
    with owner_engine.begin() as conn:
        conn.execute(sa.insert(audit_log).values(**forged))
    r = get(auditor, "/audit/export.csv?actor=walker")
    assert r.status_code == 200
    assert len(_rows(r)) == 2
    assert PAN.encode() not in r.data
    assert b"************1111" in r.data


def test_no_audit_record_no_export(app: Flask, as_role: AsRole, owner_engine: sa.Engine) -> None:
    write_records(app, "walker", 2)
    auditor = as_role("auditor")
    exports_before = len(audit_rows(app, Event.AUDIT_EXPORTED))
    refuse_audit_inserts(owner_engine)
    r = get(auditor, "/audit/export.csv?actor=walker")
    assert r.status_code in (500, 503)
    assert not r.headers["Content-Type"].startswith("text/csv")
    assert "Content-Disposition" not in r.headers
    assert b"/w0" not in r.data
    assert b"seq,at,actor" not in r.data
    with owner_engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER audit_refuses")
    assert len(audit_rows(app, Event.AUDIT_EXPORTED)) == exports_before


@pytest.mark.parametrize(
    ("query", "field"),
    [("?since=soon", "since"), ("?actor=%27%3B--", "actor"), ("?since=2026-11-25&until=2026-11-01", "until")],
)
def test_a_typo_in_the_export_filter_is_shown_at_its_field(
    app: Flask, as_role: AsRole, query: str, field: str
) -> None:
    r = get(as_role("auditor"), "/audit/export.csv" + query)
    assert r.status_code == 400
    assert r.headers["Content-Type"].startswith("text/html")
    assert f'id="{field}-error"' in r.text
    assert audit_rows(app, Event.FORM_INVALID)[-1].resource == "/audit/export"
    assert not audit_rows(app, Event.AUDIT_EXPORTED)


@pytest.mark.parametrize(
    ("query", "refusal"),
    [
        ("?before=5", "unknown parameter 'before'"),
        ("?outcome=all", "parameter 'outcome' not a valid choice"),
        ("?actor=a%0Ab", "contains control or invalid characters"),
    ],
)
def test_tampered_export_parameters_are_refused(
    app: Flask, as_role: AsRole, query: str, refusal: str
) -> None:
    r = get(as_role("auditor"), "/audit/export.csv" + query)
    assert r.status_code == 400
    assert refusal in r.text.replace("&#39;", "'")
    assert Event.INPUT_REFUSED in events(app)
    assert not audit_rows(app, Event.AUDIT_EXPORTED)
