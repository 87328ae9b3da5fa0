"""After everything else (tests/system runs its modules in name order): no card number, password or
key material anywhere on the server, in any spelling.

Where: every mail in every mailbox, every log under /var/log, the whole journal, a `mariadb-dump
--all-databases` made inside, and every regular file on the container's disk outside
/opt/strongroom/.venv and /usr (files above 50 MB are listed and only searched for the exact secrets
below, in overlapping chunks). What:

- everywhere, binary files too: each of the three custodians' keyd shares (its text and its value),
  the master they combine to and the data keys keyd derives from it (rebuilt on the test's host with
  keyd.shares and the key state), the employees' passwords and every
  card a scenario stored (`stored_pans`), each in every byte form (tests/system/secrets_scan.py;
  the cards also grouped by four with a space, a dash or a dot); the journal with every field
  (`journalctl -o export`: command lines, environment-derived fields);
- in mails, logs and the journal's messages (`journalctl -o cat`), line by line: any card number in
  any spelling, by the one detector (`webapp.redact.find_pans`, hex tokens of 32+ characters skipped;
  numbers a log's format puts side by side are blanked first: FORMAT_NUMBERS).
  Not in the database dump or binary files: random bytes and columns of numbers joined by commas are
  digit runs by the million, some Luhn-valid; the stored cards are looked for there instead.

The CA's passphrases never leave the admin's machine (the test's host), so they are not looked for
here. So that the scan has a card to miss even when this module runs alone, it stores and reveals
one made-up card of its own first, through the web app, like an employee.
"""

from __future__ import annotations

import json
import re

from tests.system.container import Container
from tests.system.operator import Browser, Person
from tests.system.secrets_scan import Walk, find_in_big_file, find_secrets, needles, regular_files
from tests.system.server import REPO, Server
from tests.system.test_reboot import (
    CARD_LINK,
    add_record_with_cards,
    derived_keys,
    made_up_pan,
    reveal,
    revealed_digits,
    share_secrets,
)
from webapp.redact import MAX_TEXT, find_pans

EXCLUDE = ("/opt/strongroom/.venv", "/usr")
ARTIFACTS = REPO / "test-artifacts" / "system"
CHUNK = MAX_TEXT - 1024
OVERLAP = 512  # longer than any spelling of a 19-digit number with separators between its digits


# Numbers that a log's own format puts side by side, only separators between them: the detector
# would join them into one long number (a Luhn check passes one time in ten). Blanked before it runs;
# nothing a person typed can stand in these places.
FORMAT_NUMBERS = {
    # Apache's error log: "[pid 12:tid 140234567890123]" (the thread id alone is 15 digits).
    "apache error log ids": re.compile(r"\[pid \d+:tid \d+\]"),
    # The Strongroom access log: '... HTTP/1.1" 200 1234 56789 TLSv1.3' (status, bytes, microseconds).
    "apache access log counters": re.compile(r'HTTP/[\d.]+" \d{3} (?:\d+|-) (?:\d+|-)'),
    # ModSecurity's audit log, section A: "[time] unique-id client-ip client-port server-ip server-port".
    "modsecurity audit log peers": re.compile(r"^\[[^\]]+\] \S+ [0-9a-fA-F.:]+ \d+ [0-9a-fA-F.:]+ \d+$"),
    # ModSecurity's audit log, section H: "Stopwatch: 1733443200123456 4321 ..." (start in microseconds).
    "modsecurity stopwatch": re.compile(r"^Stopwatch2?: \d+ \d+"),
    # postfix's Message-Id and its log of it: "<20261206001502.4C12D3BA5FF@host>" (time.queue-id).
    "postfix message ids": re.compile(r"<\d{14}\.[0-9A-F]+@"),
    # postfix's log lines: "postfix/smtpd[129]: 66907439150: client=..." (pid, then the queue id: hex,
    # all decimal digits about one time in 200; joined to the pid, a Luhn check passes one time in ten).
    "postfix pid and queue id": re.compile(r"postfix/[\w/-]+\[\d+\]: [0-9A-F]+:"),
}


def without_format_numbers(line: str) -> str:
    for pattern in FORMAT_NUMBERS.values():
        line = pattern.sub(" format ", line)
    return line


def pans_in(text: str) -> set[str]:
    """The card numbers in `text` of any length (find_pans scans MAX_TEXT at a time)."""
    found: set[str] = set()
    for start in range(0, max(1, len(text)), CHUNK - OVERLAP):
        found |= {f.digits for f in find_pans(text[start : start + CHUNK], skip_hex_tokens=True)}
    return found


def is_text(data: bytes) -> bool:
    return b"\0" not in data[:8192]


class Scan:
    """Hits: a secret or a stored card in any spelling; candidates: what the detector finds in text."""

    def __init__(self, secrets: dict[str, str | bytes], pans: list[str]) -> None:
        self.wanted = needles(secrets)
        # Each stored card as digits and grouped by four (space, dash, dot), each in every byte form.
        self.pans: list[tuple[str, bytes]] = []
        for pan in pans:
            groups = [pan[i : i + 4] for i in range(0, len(pan), 4)]
            forms = {f"sep={sep!r}": sep.join(groups) for sep in ("", " ", "-", ".")}
            self.pans += [(f"stored card ...{pan[-4:]} {label}", needle) for label, needle in needles(forms)]
        self.hits: list[str] = []
        self.candidates: dict[str, list[str]] = {}
        self.sources: dict[str, int] = {}

    def check(self, where: str, data: bytes, *, detect: bool = False) -> None:
        source = where.split(":", 1)[0]
        self.sources[source] = self.sources.get(source, 0) + len(data)
        found = find_secrets(data, self.wanted) + find_secrets(data, self.pans)
        if found:
            self.hits.append(f"{where}: {', '.join(sorted(set(found)))}")
        if detect and is_text(data):
            # Line by line: a log line or a mail header is one record, and a newline would otherwise
            # join the last numbers of one line (status, bytes) to the first of the next (an address).
            for line in data.decode("utf-8", "replace").splitlines():
                if pans_in(without_format_numbers(line)):
                    # The line's shape only (every digit a '#'): what a reader needs to judge it.
                    self.candidates.setdefault(where, []).append(re.sub(r"\d", "#", line)[:400])


def captured(c: Container, command: str) -> bytes:
    """A command's output as bytes (journal export fields may be binary), through root's home, then
    removed before the disk walk."""
    c.run(f"umask 077; {command} > /root/scan-capture", timeout=300)
    try:
        return c.disk_path("/root/scan-capture").read_bytes()
    finally:
        c.run(["rm", "-f", "/root/scan-capture"])


def test_no_card_number_password_or_key_anywhere(
    unsealed: Server, people: dict[str, Person], custodian_shares: list[str], stored_pans: list[str]
) -> None:
    c = unsealed.container
    dave = people["dave"]
    pan = made_up_pan("4", 16)
    browser = Browser(unsealed, dave)
    assert browser.login().status == 302
    record = add_record_with_cards(browser, [pan])
    ((record_id, card_id),) = set(CARD_LINK.findall(browser.get(record).body))
    shown = reveal(browser, f"/records/{record_id}/reveal/card/{card_id}/pan", dave.password)
    assert revealed_digits(shown.body) == pan
    c.run(["journalctl", "--sync"], check=False)
    c.run(["postqueue", "-f"], check=False)

    secrets: dict[str, str | bytes] = {
        **share_secrets(custodian_shares),
        **derived_keys(c, custodian_shares),
        **{f"{p.username}'s password": p.password for p in people.values()},
    }
    stored_pans.append(pan)
    scan = Scan(secrets, stored_pans)

    # The mailboxes and logs are on the disk and in the walk below too; read here explicitly so that
    # the record says they were, even if the walk's exclusions ever change.
    for box in sorted(c.disk_path("/var/mail").glob("*")):
        if box.is_file():
            scan.check(f"mail:/var/mail/{box.name}", box.read_bytes(), detect=True)
    journal = captured(c, "journalctl --no-pager -o export")
    scan.check("journal:journalctl -o export", journal)
    scan.check("journal:journalctl -o cat", captured(c, "journalctl --no-pager -o cat"), detect=True)
    database = captured(c, "mariadb-dump --all-databases --single-transaction --hex-blob --skip-dump-date")
    scan.check("database:mariadb-dump --all-databases", database)
    walk = Walk()
    for path, data in regular_files(c.disk_path("/"), exclude=EXCLUDE, walk=walk):
        where = ("log:" if path.startswith("/var/log/") else "disk:") + path
        scan.check(where, data, detect=where.startswith("log:"))
    # Too big to read at once (InnoDB's redo log): the secrets and stored cards, in overlapping chunks.
    for path, _size in walk.skipped:
        found = find_in_big_file(c.disk_path(path), scan.wanted + scan.pans)
        if found:
            scan.hits.append(f"disk:{path}: {', '.join(found)}")

    record_scan = {
        "files": walk.files, "bytes": walk.bytes, "over_50MB_needles_only": walk.skipped,
        "bytes_by_source": scan.sources, "excluded": EXCLUDE, "stored_cards_looked_for": len(stored_pans),
        "hits": scan.hits, "detector_candidates": scan.candidates,
    }  # fmt: skip
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "secrets-scan.json").write_text(json.dumps(record_scan, indent=2))
    print(f"secrets scan: {walk.files} files, {walk.bytes / 1e6:.1f} MB on disk, journal "
          f"{len(journal) / 1e6:.1f} MB, searched in chunks {walk.skipped}, "
          f"card numbers found by the detector: {scan.candidates}")  # fmt: skip
    assert walk.files > 1000
    assert not scan.hits, "\n".join(scan.hits)
    assert not scan.candidates, scan.candidates
