"""A reboot of the whole server (docs/runbook.md): keyd comes back sealed, no key is left on the disk,
and after the runbook's unseal by two of the three custodians every stored card decrypts and the
audit chain still verifies.

The cards are made-up numbers (random, Luhn-valid), stored the way an employee stores them: through
the web app behind Apache, from the employees' network, with a client certificate.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Sequence
from itertools import combinations

from keyd.cipher import derive_version_key
from keyd.shares import combine, parse_share
from keyd.state import State
from tests.support import made_up_pan
from tests.system import operator
from tests.system.alarms import record_timing
from tests.system.container import Container
from tests.system.operator import Browser, Person
from tests.system.secrets_scan import Walk, find_in_big_file, find_secrets, needles, regular_files
from tests.system.server import Server

REASON = "reboot check: the stored card decrypts after the unseal"
CARD_LINK = re.compile(r"/records/(\d+)/reveal/card/([0-9a-f]{32})/pan")


def derived_keys(c: Container, shares: Sequence[str]) -> dict[str, bytes]:
    """keyd's master key and each data key, rebuilt on the test's host from the custodians' shares and
    the key state on the server's disk, as keyd rebuilds them (docs/keyd.md): what a stolen disk must
    not hold. Every pair of shares must give the same master (any 2 of 3 unseal)."""
    state = State.from_json(json.loads(c.disk_path("/var/lib/strongroom-keyd/state.json").read_bytes()))
    assert state.mode == "file", state.mode
    assert state.key_kind == "shares", state.key_kind
    points = [parse_share(share.encode()) for share in shares]
    masters = {bytes(combine(pair)) for pair in combinations(points, operator.THRESHOLD)}
    assert len(masters) == 1, "two pairs of shares rebuild different masters"
    (master,) = masters
    keys = {"master key": master}
    for version in state.versions:
        keys[f"data key v{version}"] = bytes(
            derive_version_key(master, salt=state.hkdf_salt, version=version)
        )
    return keys


def share_secrets(shares: Sequence[str]) -> dict[str, str | bytes]:
    """Each custodian's share as they hold it (its text) and its 32-byte value, for the scans."""
    found: dict[str, str | bytes] = {}
    for share in shares:
        index, value = parse_share(share.encode())
        found[f"custodian share {index}"] = share
        found[f"custodian share {index} value"] = bytes(value)
    return found


def hidden(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" type="hidden" value="([^"]+)"', page) or re.search(
        rf'type="hidden" name="{name}" value="([^"]+)"', page
    ) or re.search(rf'name="{name}"[^>]*value="([^"]+)"', page)  # fmt: skip
    if found is None:
        raise AssertionError(f"no {name} field in: {page[:500]}")
    return found.group(1)


def add_record_with_cards(browser: Browser, pans: list[str]) -> str:
    """The records page's 'Add record' form, then the record page's 'Add card' form per card."""
    token = browser.csrf("/records/")
    crm_ref = "C" + "".join(secrets.choice("0123456789") for _ in range(8))
    added = browser.request("POST", "/records/", form={"csrf_token": token, "crm_ref": crm_ref})
    assert added.status == 302, (added.status, added.body[:500])
    location = added.header("Location") or ""
    path = "/" + location.split("://", 1)[-1].split("/", 1)[-1] if "://" in location else location
    assert re.fullmatch(r"/records/\d+", path), location
    for i, pan in enumerate(pans):
        grouped = " ".join(pan[j : j + 4] for j in range(0, len(pan), 4))  # as read off a card
        holder = f"Ada Lovelace {'I' * (i + 1)}"
        form = {"csrf_token": browser.csrf(path), "pan": grouped, "cardholder": holder,
                "exp_month": "12", "exp_year": "2031"}  # fmt: skip
        card = browser.request("POST", f"{path}/cards", form=form)
        assert card.status == 302, (card.status, card.body[:500])
    return path


def reveal(browser: Browser, link: str, password: str) -> operator.Response:
    form_page = browser.get(link)
    assert form_page.status == 200, (form_page.status, form_page.body[:500])
    # The password field is whichever input of type password the form has (its name is the form's).
    typed = re.search(r'<input[^>]*type="password"[^>]*>', form_page.body)
    name = re.search(r'name="([^"]+)"', typed.group(0)) if typed else None
    assert name is not None, form_page.body[:800]
    form = {"csrf_token": hidden(form_page.body, "csrf_token"), "stepup": hidden(form_page.body, "stepup"),
            "reason": REASON, name.group(1): password}  # fmt: skip
    return browser.request("POST", link, form=form)


def revealed_digits(page: str) -> str:
    found = re.search(r'<output id="revealed-value"[^>]*>([^<]*)</output>', page)
    assert found is not None, page[:800]
    return re.sub(r"\D", "", found.group(1))


def test_a_reboot_seals_keyd_leaves_no_key_and_every_card_decrypts_after_unseal(
    unsealed: Server, people: dict[str, Person], custodian_shares: list[str], stored_pans: list[str]
) -> None:
    c = unsealed.container
    dave = people["dave"]  # a supervisor: may add cards and reveal them
    pans = [made_up_pan("4", 16), made_up_pan("52", 16)]
    stored_pans += pans
    browser = Browser(unsealed, dave)
    assert browser.login().status == 302
    record = add_record_with_cards(browser, pans)
    page = browser.get(record).body
    links = sorted(set(CARD_LINK.findall(page)))
    assert len(links) == len(pans), links
    expected = {card_id: pan_of(page, card_id, pans) for _record_id, card_id in links}

    started = time.monotonic()
    c.stop()
    c.start()
    record_timing("reboot: poweroff to booted", time.monotonic() - started)
    print(f"failed units after the reboot: {c.failed_units}")
    for unit in ("apache2", "mariadb", "strongroom-web", "strongroom-firewall"):
        assert c.unit_state(unit) == "active", f"{unit}: {c.journal(unit)[-2000:]}"

    # keyd is back on its own, sealed; the employee sees the sealed page, not an error.
    operator.start_keyd(c)  # a no-op once booted; waits for its socket
    assert operator.is_sealed(c) is True
    employee = Browser(unsealed, dave)
    assert employee.login().status == 302
    first = f"/records/{links[0][0]}/reveal/card/{links[0][1]}/pan"
    sealed = reveal(employee, first, dave.password)
    assert sealed.status == 503, (sealed.status, sealed.body[:500])
    assert "The vault is sealed" in sealed.body

    # No key anywhere: nothing in /dev/shm, and no share nor key in any spelling on the whole disk.
    shm = c.run(["find", "/dev/shm", "-mindepth", "1"]).stdout.split()
    assert shm == [], shm
    walk = Walk()
    root = c.disk_path("/")
    wanted = needles({**share_secrets(custodian_shares), **derived_keys(c, custodian_shares)})
    hits = [f"{path}: {', '.join(found)}" for path, data in regular_files(root, walk=walk)
            if (found := find_secrets(data, wanted))]  # fmt: skip
    # Files too big to read at once (InnoDB's redo log) are searched in overlapping chunks.
    hits += [f"{path}: {', '.join(found)}" for path, _size in walk.skipped
             if (found := find_in_big_file(root / path.lstrip("/"), wanted))]  # fmt: skip
    print(f"disk scan: {walk.files} files, {walk.bytes / 1e6:.0f} MB, in chunks: {walk.skipped}")
    assert walk.files > 1000
    assert not hits, hits

    # The runbook's unseal by two custodians (the second and the third: any two will do), then every
    # card decrypts.
    seconds = operator.unseal(c, [custodian_shares[1], custodian_shares[2]])
    record_timing("reboot: first custodian's unseal to unsealed", seconds)
    for record_id, card_id in links:
        shown = reveal(employee, f"/records/{record_id}/reveal/card/{card_id}/pan", dave.password)
        assert shown.status == 200, (shown.status, shown.body[:500])
        assert revealed_digits(shown.body) == expected[card_id]

    verified = operator.flask(c, "audit", "verify", check=False)
    assert verified.returncode == 0, verified.stdout[-2000:] + verified.stderr[-2000:]


def pan_of(page: str, card_id: str, pans: list[str]) -> str:
    """The PAN of a card on the record page, matched by the last four digits its label shows."""
    at = page.index(card_id)
    item = page[at : page.index("</li>", at)]
    shown = re.search(r"•••• (\d{4})", item)
    assert shown is not None, item
    matching = [p for p in pans if p.endswith(shown.group(1))]
    assert len(matching) == 1, (shown.group(1), len(matching))
    return matching[0]
