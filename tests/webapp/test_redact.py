"""PAN masking for stored text (webapp/redact.py)."""

from __future__ import annotations

import pytest

from webapp.audit.service import SUCCESS, AuditEntry
from webapp.events import Event
from webapp.redact import mask_pans


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("/records/4111111111111111", "/records/************1111"),
        ("pan 4111 1111 1111 1111.", "pan ************1111."),
        ("4111-1111-1111-1111", "************1111"),
        ("amex 378282246310005", "amex ***********0005"),
        ("two 5555555555554444 and 4111111111111111", "two ************4444 and ************1111"),
        ("4111 1111 1111 1112", "4111 1111 1111 1112"),  # not Luhn-valid: not a PAN
        ("2026-11-28T10:00:00.000000Z", "2026-11-28T10:00:00.000000Z"),
        ("count=300 window=3600", "count=300 window=3600"),
        ("", ""),
        ("hash=" + "a" * 20 + "30218282104860" + "f" * 30, "hash=" + "a" * 20 + "30218282104860" + "f" * 30),
        ("card4111111111111111", "card************1111"),
        ("no digits at all", "no digits at all"),
    ],
)
def test_pans_keep_only_their_last_four_digits(text: str, masked: str) -> None:
    assert mask_pans(text) == masked


@pytest.mark.parametrize("field", ["actor", "ip", "cert_serial", "resource", "detail"])
def test_every_audit_record_field_is_masked_whoever_builds_it(field: str) -> None:
    # backup/ and ops/ build AuditEntry themselves, without the web app's UnitOfWork.
    entry = AuditEntry(event=Event.PAGE_VIEW, outcome=SUCCESS, **{field: "4111 1111 1111 1111"})
    assert getattr(entry, field) == "************1111"
