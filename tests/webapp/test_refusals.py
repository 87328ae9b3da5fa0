"""Every refusal page (webapp/refusals.py) says what happened in its one h1 and has a way back that is
one of our own pages, whatever the request or its Referer carried; a card number never comes back."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from webapp.refusals import back_link, page

PAN = "4111111111111111"
TEMPLATES = [
    ("error.html", 400, {"message": "Refused: x."}, "Request refused"),
    ("no_certificate.html", 403, {}, "A valid personal certificate is required"),
    ("quota_exceeded.html", 429, {}, "Reveal limit reached"),
    ("db_unavailable.html", 503, {}, "Temporarily unavailable"),
    ("db_write_refused.html", 503, {"reason": "disk full"}, "Temporarily unavailable"),
    ("vault_unavailable.html", 503, {"sealed": True}, "The vault is sealed"),
    ("safe_mode.html", 500, {}, "Something went wrong"),
]


@pytest.mark.parametrize(("template", "status", "context", "heading"), TEMPLATES)
def test_each_refusal_page_has_a_heading_and_a_way_back(
    app: Flask, template: str, status: int, context: dict[str, Any], heading: str
) -> None:
    with app.test_request_context("/records/7/cards", method="POST", base_url="https://vault.example"):
        body = page(template, status=status, **context).get_data(as_text=True)
    assert body.count("<h1>") == 1
    assert f"<h1>{heading}</h1>" in body
    assert '<p class="back"><a href="/records/7">Back to the previous page</a></p>' in body


DIGITS_ID = "a" * 10 + "800152524001" + "b" * 10  # a card id with the longest digit run new_id draws
# (method, path, Referer, expected way back)
BACKS = [
    ("POST", "/records/7/cards", None, "/records/7"),
    ("POST", "/records/7/cards/" + "a" * 32 + "/edit", None, "/records/7/cards/" + "a" * 32),
    ("POST", "/records/", None, "/records/"),
    ("GET", "/records/7/cards/" + "0" * 32, None, "/records/7"),
    ("GET", "/records/7", None, "/records/"),
    ("GET", f"/records/{PAN}", None, "/records/"),
    ("GET", "/nowhere/at/all", None, "/"),
    ("GET", "/nowhere", "https://vault.example/records/7", "/records/7"),
    ("GET", "/nowhere", "/records/7", "/records/7"),
    ("GET", "/nowhere", "https://evil.example/records/7", "/"),
    ("GET", "/nowhere", "http://vault.example/records/7", "/"),  # another scheme: another site
    ("GET", "/nowhere", "//evil.example/records/7", "/"),
    ("GET", "/nowhere", f"https://vault.example/records/?crm_ref={PAN}", "/records/"),
    ("GET", "/nowhere", f"https://vault.example/records/{PAN}", "/"),
    ("GET", "/nowhere", "https://vault.example/records/1234567890123", "/"),  # as long as a card number
    # A card's id may hold a run of up to 12 digits (records.service.new_id): still a page of ours.
    ("POST", f"/records/7/cards/{DIGITS_ID}/edit", None, f"/records/7/cards/{DIGITS_ID}"),
    ("GET", "/x", f"https://vault.example/records/7/cards/{DIGITS_ID}", f"/records/7/cards/{DIGITS_ID}"),
    ("GET", "/nowhere", "https://vault.example/records/\uff17", "/"),  # a fullwidth digit
    ("GET", "/nowhere", 'https://vault.example/records/"><script>', "/"),
    ("GET", "/nowhere", "javascript:alert(1)", "/"),
    ("GET", "/nowhere", "https://vault.example/logout", "/"),  # POST only: not a page
    ("GET", "/nowhere", "https://vault.example/static/strongroom.css", "/"),
    ("GET", "/records/7", "https://vault.example/records/7", "/records/"),  # never the refused GET itself
]


@pytest.mark.parametrize(("method", "path", "referer", "expected"), BACKS)
def test_the_way_back_is_always_one_of_our_pages(
    app: Flask, method: str, path: str, referer: str | None, expected: str
) -> None:
    headers = {"Referer": referer} if referer else {}
    with app.test_request_context(path, method=method, base_url="https://vault.example", headers=headers):
        back = back_link()
    assert back.url == expected
    assert back.label == ("Back to the home page" if expected == "/" else "Back to the previous page")
