"""Card and item ids are random, and never spell a card number: a 32-hex id with a run of 13+ digits
(about one in 25 drawn) could pass Luhn and be taken for one by any scan (the API's answers, pages,
logs), or be masked out of an audit record."""

from __future__ import annotations

import re

from webapp.records.service import new_id
from webapp.redact import contains_pan


def test_ids_are_32_lowercase_hex_with_no_digit_run_a_card_number_could_hide_in() -> None:
    ids = [new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert not any(re.search(r"[0-9]{13}", i) for i in ids)
    assert not any(contains_pan(i) for i in ids)
