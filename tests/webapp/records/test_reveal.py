# ruff: noqa: F811 - the shared fixtures are imported by name and then requested as arguments
"""Reveal: matrix, one-time step-up (fresh password, token consumed atomically), reason into audit
and keyd, no-store, replay refused, wrong password audited and counted toward the lockout, keyd's
decrypt budget refusing at exactly the threshold. Real keyd, SQLite and MariaDB."""

from __future__ import annotations

import pytest
from flask import Flask

from tests.support import without_hex_ids
from tests.webapp.conftest import Person, csrf_token, get, post
from tests.webapp.helpers import audit_rows, events, user_row
from tests.webapp.records.support import (  # noqa: F401 - fixtures
    IBAN,
    REASON,
    SUPERVISOR_PASSWORD,
    add_card,
    add_item,
    add_record,
    keyd_running,
    logged_in,
    reveal,
    reveal_form,
    staff,
    vault,
)
from webapp.records import stepup


def _setup(app: Flask, staff: dict[str, Person]) -> tuple[int, str]:
    clerk = logged_in(app, staff["clerk"])
    record_id = add_record(clerk)
    return record_id, add_card(clerk, record_id)


def test_supervisor_reveals_a_pan_with_password_and_reason(app: Flask, staff: dict[str, Person]) -> None:
    record_id, card_id = _setup(app, staff)
    sup = logged_in(app, staff["supervisor"])
    page = sup.get(f"/records/{record_id}", base_url="https://vault.example")
    url = f"/records/{record_id}/reveal/card/{card_id}/pan"
    assert url in page.text  # the UI offers it to a supervisor
    r = reveal(sup, url, SUPERVISOR_PASSWORD)
    assert r.status_code == 200, r.text
    assert "4111 1111 1111 1111" in r.text
    assert r.headers["Cache-Control"] == "no-store"
    assert 'data-hide-after="30"' in r.text
    assert "reveal.js" in r.text
    (done,) = audit_rows(app, "reveal.done")
    assert done.actor == "sam"
    assert done.resource == f"card:{card_id}:pan"
    assert REASON in done.detail
    assert f"tag={stepup.reason_tag(REASON)}" in done.detail
    assert "4111111111111111" not in done.detail
    assert audit_rows(app, "stepup.success")
    assert len(audit_rows(app, "auth.login_success")) == 2  # alice's and sam's logins: a reveal is not one


def test_the_reason_reaches_keyd_as_purpose() -> None:
    p = stepup.purpose("Kundin ruft an: Rückbuchung prüfen")
    assert p.startswith(f"reveal:{stepup.reason_tag('Kundin ruft an: Rückbuchung prüfen')}:kundin-ruft-an")
    assert len(p) <= 64
    from keyd.protocol import PURPOSE_RE

    assert PURPOSE_RE.fullmatch(p.encode())
    assert PURPOSE_RE.fullmatch(stepup.purpose("x" * 140).encode())
    assert PURPOSE_RE.fullmatch(stepup.purpose("€€€€€€€€€€€€").encode())


def test_a_replayed_step_up_token_is_refused(app: Flask, staff: dict[str, Person]) -> None:
    record_id, card_id = _setup(app, staff)
    sup = logged_in(app, staff["supervisor"])
    url = f"/records/{record_id}/reveal/card/{card_id}/pan"
    tokens = reveal_form(sup, url)
    assert reveal(sup, url, SUPERVISOR_PASSWORD, tokens=tokens).status_code == 200
    again = reveal(sup, url, SUPERVISOR_PASSWORD, tokens=tokens)
    assert again.status_code == 400
    assert "already used" in again.text
    assert "4111" not in without_hex_ids(again.text)
    assert len(audit_rows(app, "reveal.done")) == 1
    (refused,) = audit_rows(app, "reveal.refused")
    assert "step-up token" in refused.detail
    assert "reveal.refused" in events(app)


def test_a_token_is_bound_to_its_field(app: Flask, staff: dict[str, Person]) -> None:
    record_id, card_id = _setup(app, staff)
    sup = logged_in(app, staff["supervisor"])
    name_url = f"/records/{record_id}/reveal/card/{card_id}/cardholder"
    tokens = reveal_form(sup, name_url)
    r = reveal(sup, f"/records/{record_id}/reveal/card/{card_id}/pan", SUPERVISOR_PASSWORD, tokens=tokens)
    assert r.status_code == 400
    assert "not issued for this field" in r.text
    assert reveal(sup, name_url, SUPERVISOR_PASSWORD, tokens=tokens).status_code == 200


def test_a_wrong_password_is_audited_spends_the_token_and_counts_toward_lockout(
    make_app: object, staff: dict[str, Person], app: Flask
) -> None:
    record_id, card_id = _setup(app, staff)
    sup = logged_in(app, staff["supervisor"])
    url = f"/records/{record_id}/reveal/card/{card_id}/pan"
    tokens = reveal_form(sup, url)
    r = reveal(sup, url, "not-the-password-at-all", tokens=tokens)
    assert r.status_code == 403
    assert "4111" not in without_hex_ids(r.text)
    (fail,) = audit_rows(app, "stepup.failure")
    assert fail.detail == "wrong_password"
    assert user_row(app, "sam").failed_logins == 1
    assert "stepup.failure" in events(app)
    # The token went with the failed attempt: the right password on it now is a replay.
    assert reveal(sup, url, SUPERVISOR_PASSWORD, tokens=tokens).status_code == 400
    assert not audit_rows(app, "reveal.done")


def test_step_up_failures_lock_the_account_and_end_the_session(
    make_app: object, staff: dict[str, Person], app: Flask
) -> None:
    record_id, card_id = _setup(app, staff)
    sup = logged_in(app, staff["supervisor"])
    url = f"/records/{record_id}/reveal/card/{card_id}/pan"
    for _ in range(app.config["LOCKOUT_THRESHOLD"]):
        assert reveal(sup, url, "wrong-wrong-wrong-wrong").status_code == 403
    assert audit_rows(app, "auth.account_locked")
    assert user_row(app, "sam").locked_until is not None
    assert sup.get(url, base_url="https://vault.example").status_code == 302  # logged out


@pytest.mark.parametrize(
    ("reason", "refusal"),
    [
        ("", "at least 10 characters"),
        ("too short", "at least 10 characters"),
        ("x" * 141, "at most 140 characters"),
        ("customer\u200bcalled about it", "control or invisible"),
        ("card 4111 1111 1111 1111 check", "looks like a card number"),
        ("account 12345678 asked", "long digit runs"),
    ],
)
def test_a_bad_reason_is_refused_before_anything(
    app: Flask, staff: dict[str, Person], reason: str, refusal: str
) -> None:
    record_id, card_id = _setup(app, staff)
    sup = logged_in(app, staff["supervisor"])
    url = f"/records/{record_id}/reveal/card/{card_id}/pan"
    tokens = reveal_form(sup, url)
    r = reveal(sup, url, SUPERVISOR_PASSWORD, reason=reason, tokens=tokens)
    assert r.status_code == 400
    assert refusal in r.text
    (refused,) = audit_rows(app, "reveal.refused")
    assert refusal in refused.detail
    assert "4111" not in refused.detail
    assert not audit_rows(app, "stepup.success")
    # Nothing was spent: the same form with a good reason still works.
    assert reveal(sup, url, SUPERVISOR_PASSWORD, tokens=tokens).status_code == 200


def test_a_clerk_calling_the_reveal_url_directly_gets_403_audited(
    app: Flask, staff: dict[str, Person]
) -> None:
    record_id, card_id = _setup(app, staff)
    clerk = logged_in(app, staff["clerk"])
    url = f"/records/{record_id}/reveal/card/{card_id}/pan"
    page = clerk.get(f"/records/{record_id}", base_url="https://vault.example")
    assert "/reveal/" not in page.text  # the UI does not offer it
    assert clerk.get(url, base_url="https://vault.example").status_code == 403
    r = post(clerk, url, data={"csrf_token": "x", "stepup": "y" * 43, "reason": REASON, "stepup_typed": "p"})
    assert r.status_code in (400, 403)  # CSRF first (400) or the matrix (403): both refuse and audit
    denied = audit_rows(app, "request.access_denied")
    assert denied
    assert denied[0].detail == "matrix:card.pan:reveal"
    assert not audit_rows(app, "reveal.form")


def test_items_are_revealed_too(app: Flask, staff: dict[str, Person]) -> None:
    clerk = logged_in(app, staff["clerk"])
    record_id = add_record(clerk)
    item_id = add_item(clerk, record_id, "bank", IBAN)
    sup = logged_in(app, staff["supervisor"])
    r = reveal(sup, f"/records/{record_id}/reveal/bank/{item_id}/value", SUPERVISOR_PASSWORD)
    assert r.status_code == 200
    assert "DE89370400440532013000" in r.text
    # A (kind, field) pair that is no secret field, or a kind that does not match the item: 404.
    assert (
        sup.get(
            f"/records/{record_id}/reveal/bank/{item_id}/pan", base_url="https://vault.example"
        ).status_code
        == 404
    )
    assert (
        sup.get(
            f"/records/{record_id}/reveal/note/{item_id}/value", base_url="https://vault.example"
        ).status_code
        == 404
    )


def test_the_hide_delay_is_configurable(make_app: object, staff: dict[str, Person]) -> None:
    from webapp.config import ConfigError

    with pytest.raises(ConfigError):
        make_app(REVEAL_HIDE_SECONDS=0)  # type: ignore[operator]
    with pytest.raises(ConfigError):
        make_app(STEPUP_TTL="long")  # type: ignore[operator]
    app = make_app(REVEAL_HIDE_SECONDS=7)  # type: ignore[operator]
    record_id, card_id = _setup(app, staff)
    r = reveal(
        logged_in(app, staff["supervisor"]),
        f"/records/{record_id}/reveal/card/{card_id}/pan",
        SUPERVISOR_PASSWORD,
    )
    assert 'data-hide-after="7"' in r.text


def test_an_expired_step_up_token_is_refused(app: Flask, staff: dict[str, Person], clock: object) -> None:
    from datetime import timedelta

    record_id, card_id = _setup(app, staff)
    sup = logged_in(app, staff["supervisor"])
    url = f"/records/{record_id}/reveal/card/{card_id}/pan"
    tokens = reveal_form(sup, url)
    clock.advance(timedelta(seconds=app.config["STEPUP_TTL"] + 1))  # type: ignore[attr-defined]
    r = reveal(sup, url, SUPERVISOR_PASSWORD, tokens=tokens)
    assert r.status_code == 400
    assert "expired" in r.text


def test_one_token_raced_by_two_requests_reveals_once(app: Flask, staff: dict[str, Person]) -> None:
    """The token is spent by one conditional UPDATE in the database: two requests racing with the
    same token (as two gunicorn workers would) cannot both win, on SQLite or MariaDB."""
    import threading

    record_id, card_id = _setup(app, staff)
    url = f"/records/{record_id}/reveal/card/{card_id}/pan"
    first = logged_in(app, staff["supervisor"])
    tokens = reveal_form(first, url)
    second = app.test_client()  # the same session cookie, another client object (another "worker")
    second.environ_base.update(first.environ_base)
    cookie = first.get_cookie("__Host-strongroom", domain="vault.example")
    assert cookie is not None
    second.set_cookie("__Host-strongroom", cookie.value, domain="vault.example", secure=True)
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def go(client: object) -> None:
        barrier.wait()
        statuses.append(reveal(client, url, SUPERVISOR_PASSWORD, tokens=tokens).status_code)  # type: ignore[arg-type]

    threads = [threading.Thread(target=go, args=(c,)) for c in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(statuses) == [200, 400]
    assert len(audit_rows(app, "reveal.done")) == 1
    assert len(audit_rows(app, "reveal.refused")) == 1


@pytest.mark.parametrize(
    "path",
    [
        "/records/{r}/reveal/card/4111111111111111/pan",
        "/records/{r}/cards/4111111111111111",
        "/records/{r}/note/4111111111111111",
        "/records/4111111111111111",
        "/records/4111111111111111/cards/00000000000000000000000000000000",
    ],
)
def test_a_card_number_typed_as_an_id_reaches_no_view(
    app: Flask, staff: dict[str, Person], path: str
) -> None:
    record_id, _card_id = _setup(app, staff)
    clerk = logged_in(app, staff["clerk"])
    assert clerk.get(path.format(r=record_id), base_url="https://vault.example").status_code == 404
    # Only the app's generic not-found record names the path (see the no-PAN scan's known leak);
    # no records event, refusal or matrix denial carries it.
    for row in audit_rows(app):
        if row.event != "request.not_found":
            assert "4111111111111111" not in row.resource + row.detail


def test_a_card_number_as_record_id_in_a_post_reaches_no_view(app: Flask, staff: dict[str, Person]) -> None:
    clerk = logged_in(app, staff["clerk"])
    token = csrf_token(get(clerk, "/").text)
    r = post(clerk, "/records/4111111111111111/cards", data={"csrf_token": token, "cvv": "123"})
    assert r.status_code == 404
    for row in audit_rows(app):
        if row.event != "request.not_found":
            assert "4111111111111111" not in row.resource + row.detail


def _inputs(html: str) -> list[dict[str, str | None]]:
    from html.parser import HTMLParser

    found: list[dict[str, str | None]] = []

    class Inputs(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag in ("input", "form"):
                found.append({"tag": tag, **dict(attrs)})

    Inputs().feed(html)
    return found


def test_the_step_up_password_must_be_typed_not_filled_in(app: Flask, staff: dict[str, Person]) -> None:
    """A password manager must not fill the re-authentication in at an unattended browser."""
    record_id, card_id = _setup(app, staff)
    sup = logged_in(app, staff["supervisor"])
    page = get(sup, f"/records/{record_id}/reveal/card/{card_id}/pan")
    assert page.status_code == 200
    assert "current-password" not in page.text
    tags = _inputs(page.text)
    (form,) = [t for t in tags if t["tag"] == "form" and "/reveal/" in (t.get("action") or "")]
    assert form["autocomplete"] == "off"
    (secret,) = [t for t in tags if t.get("type") == "password"]
    assert secret["autocomplete"] == "off"
    # A name no password manager knows as a password field, and the common managers' opt-outs.
    assert "pass" not in (secret["name"] or "").lower()
    assert secret["name"] == "stepup_typed"
    for attr, value in (
        ("data-lpignore", "true"),  # LastPass
        ("data-1p-ignore", "true"),  # 1Password
        ("data-bwignore", "true"),  # Bitwarden
        ("data-form-type", "other"),  # Dashlane
    ):
        assert secret[attr] == value, attr
    # No other field on the page invites a saved password either (the reason is free text).
    assert not [t for t in tags if (t.get("autocomplete") or "").endswith("password")]
