"""Helpers of the audit page tests: write records as a given actor, read links off a page."""

from __future__ import annotations

import html
import re
from datetime import datetime

from flask import Flask

from webapp.clock import FakeClock
from webapp.events import Event
from webapp.unit import Origin


def write_records(
    app: Flask,
    actor: str,
    n: int,
    *,
    event: Event = Event.PAGE_VIEW,
    ok: bool = True,
    detail: str = "-",
    resource: str | None = None,
    clock: FakeClock | None = None,
    at: datetime | None = None,
) -> None:
    """n committed records by `actor`, resources /w0 ... /w{n-1} unless `resource` is given; at `at`
    (the clock is put back afterwards) if given."""
    svc = app.extensions["strongroom"]
    before = clock.now() if clock else None
    if clock and at:
        clock.set(at)
    try:
        for i in range(n):
            uow = svc.unit(Origin(actor=actor, ip="10.0.0.9"))
            uow.record(event, ok=ok, resource=resource if resource is not None else f"/w{i}", detail=detail)
            uow.commit()
    finally:
        if clock and before:
            clock.set(before)


def link(page: str, text: str) -> str | None:
    """The href of the link whose text is `text`, unescaped, or None."""
    m = re.search(r'<a href="([^"]+)"[^>]*>' + re.escape(text) + "</a>", page)
    return html.unescape(m.group(1)) if m else None


def tbody(page: str, caption: str) -> str:
    """The body of the table with this caption."""
    start = page.index("<tbody>", page.index(f"<caption>{caption}</caption>"))
    return page[start : page.index("</tbody>", start)]


def resources(page: str, caption: str) -> list[str]:
    """The Resource column (8th cell) of the table with this caption, in page order."""
    rows = re.findall(r"<tr class=\"(?:success|failure)\">(.*?)</tr>", tbody(page, caption), re.S)
    return [html.unescape(re.findall(r"<td>(.*?)</td>", r, re.S)[7]) for r in rows]


def typed_value(page: str, field_id: str) -> str | None:
    """The value attribute of the input with this id, unescaped."""
    tag = re.search(r'<input[^>]*\bid="' + re.escape(field_id) + r'"[^>]*>', page)
    value = re.search(r'\bvalue="([^"]*)"', tag.group(0)) if tag else None
    return html.unescape(value.group(1)) if value else None
