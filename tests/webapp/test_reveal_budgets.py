"""Reveal budgets are global: two web nodes, one employee, exactly the budget.

Two app instances on the same database (SQLite and the private MariaDB), each with ITS OWN real keyd
unsealed from the same key state (copied, as a second web node gets it), stand in for two web nodes.
An employee alternating between them is refused at exactly their budget, not twice it; a new app
instance (a restart) still refuses; concurrent reveals from both never pass the limit; and each
keyd's own budget still refuses when it is lower than the web app's (the last line, per node). A
refusal by the web app never reaches keyd: every keyd client here counts the decrypts it is asked.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from keyd import config as keyd_config
from keyd.client import Context, KeydClient
from tests.fixtures.pki import TestCA
from tests.keyd.conftest import GENEROUS, Keyd, copy_state, make_keyd, raw_key, traversable_tmp
from tests.support import need_root
from tests.webapp.conftest import CHEAP_ARGON2, PASSWORDS, SECRET, Person, csrf_token, get, post
from tests.webapp.helpers import audit_rows, events, user_row
from tests.webapp.records.support import (
    ADMIN_PASSWORD,
    REASON,
    SUPERVISOR_PASSWORD,
    VISA,
    add_card,
    add_person,
    add_record,
    logged_in,
    reveal,
    reveal_form,
)
from webapp import budgets, create_app
from webapp.budgets import REVEAL, parse_reveal_limits, request_counters
from webapp.clock import FakeClock
from webapp.config import DEFAULTS, ConfigError

LIMIT = 3
WIDE = 1_000_000  # a window left out of the way


def reveal_budgets(**tight: int) -> dict[str, dict[str, int]]:
    """Every window out of the way but the ones given, as `employee_minute=3`, `global_day=5`."""
    found = {scope: dict.fromkeys(("minute", "hour", "day"), WIDE) for scope in ("employee", "global")}
    for name, limit in tight.items():
        scope, window = name.split("_")
        found[scope][window] = limit
    return found


def keyd_budget(scope: str, window: str, limit: int) -> list[str]:
    kept = [flag for flag in GENEROUS if f"={scope}.{window}=" not in flag]
    return [*kept, f"--budget={scope}.{window}={limit}"]


class CountingKeyd(KeydClient):
    """The real keyd client, counting the decrypts it is asked for (a refusal must ask for none)."""

    def __init__(self, socket_path: Path) -> None:
        super().__init__(socket_path, timeout=5.0)
        self.decrypts = 0
        self._counting = threading.Lock()

    def decrypt(self, ciphertext: bytes, *, context: Context, actor: str, purpose: str) -> bytes:
        with self._counting:
            self.decrypts += 1
        return super().decrypt(ciphertext, context=context, actor=actor, purpose=purpose)


@dataclass
class Node:
    app: Flask
    vault: CountingKeyd
    keyd: Keyd


@dataclass
class Cluster:
    """Two web nodes (app + own keyd) on one database; the people every test needs."""

    db_url: str
    clock: FakeClock
    base: Path
    settings: dict[str, Any]
    keyds: list[Keyd]
    key: bytes
    nodes: list[Node] = field(default_factory=list)
    people: dict[str, Person] = field(default_factory=dict)
    url: str = ""

    def start(self, i: int) -> Node:
        cfg = {
            "SECRET_KEY": SECRET,
            "DATABASE_URL": self.db_url,
            "INSTANCE_PATH": str(self.base / f"web{i + 1}"),
            "MODE": "production",
            **CHEAP_ARGON2,
            **self.settings,
        }
        vault = CountingKeyd(self.keyds[i].socket)
        node = Node(create_app(cfg, clock=self.clock, vault=vault), vault, self.keyds[i])
        if i < len(self.nodes):
            self.nodes[i] = node
        else:
            self.nodes.append(node)
        return node

    def stop(self, i: int) -> None:
        node = self.nodes[i]
        node.app.extensions["strongroom"].engine.dispose()
        node.vault.close()

    def restart(self, i: int) -> Node:
        """The node's process ends and a new one starts: nothing of the old app is kept."""
        self.stop(i)
        return self.start(i)

    @property
    def first(self) -> Flask:
        return self.nodes[0].app

    def decrypts(self) -> list[int]:
        return [n.vault.decrypts for n in self.nodes]

    def login(self, name: str, i: int) -> FlaskClient:
        return logged_in(self.nodes[i].app, self.people[name])

    def counters(self) -> dict[tuple[str, int], int]:
        with self.first.extensions["strongroom"].engine.connect() as conn:
            rows = conn.execute(sa.select(request_counters)).all()
        return {(str(r.scope), int(r.window_seconds)): int(r.n) for r in rows}


@contextlib.contextmanager
def running_keyds(base: Path, extras: list[list[str]], key: bytes) -> Iterator[list[Keyd]]:
    """One keyd per node, one key state: initialised once, copied, each unsealed by the same key."""
    made: list[Keyd] = []
    try:
        for i, extra in enumerate(extras):
            k = make_keyd(base / f"keyd{i + 1}", extra=extra)
            if made:
                copy_state(made[0], k)  # never a second `keyd init`: it would make another key
            else:
                k.init(key, "--key-kind", "raw")
            made.append(k)
        for k in made:
            k.start()
            k.unseal(key)
        yield made
    finally:
        for k in made:
            if k.proc is not None:
                k.kill()


@pytest.fixture
def cluster_of(db_url: str, clock: FakeClock, tmp_path: Path, ca: TestCA) -> Iterator[Callable[..., Cluster]]:
    """cluster_of(reveals, keyds=[extra flags of node 1's keyd, of node 2's]): two running nodes,
    users sam and tom (supervisors, who may reveal), adam (admin), alice (clerk), and one card."""
    need_root()
    stack = contextlib.ExitStack()
    built: list[Cluster] = []

    def build(reveals: dict[str, Any], keyds: list[list[str]] | None = None) -> Cluster:
        base = stack.enter_context(traversable_tmp())
        key = raw_key()
        running = stack.enter_context(running_keyds(base, keyds or [GENEROUS, GENEROUS], key))
        c = Cluster(db_url, clock, tmp_path, {"REVEAL_BUDGETS": reveals}, running, key)
        built.append(c)
        c.start(0)
        c.start(1)
        for name, role, password in (
            ("sam", "supervisor", SUPERVISOR_PASSWORD),
            ("tom", "supervisor", "Juniper-Compass-Lattice-3186"),
            ("adam", "admin", ADMIN_PASSWORD),
            ("alice", "clerk", PASSWORDS["alice"]),
        ):
            c.people[name] = add_person(c.first, ca, tmp_path, name, role, password)
        clerk = c.login("alice", 0)
        record_id = add_record(clerk)
        c.url = f"/records/{record_id}/reveal/card/{add_card(clerk, record_id)}/pan"
        return c

    yield build
    for c in built:
        for i in range(len(c.nodes)):
            c.stop(i)
    stack.close()


def statuses(responses: list[TestResponse]) -> list[int]:
    return [r.status_code for r in responses]


def test_an_employee_alternating_between_nodes_is_refused_at_exactly_the_limit_and_after_restarts(
    cluster_of: Callable[..., Cluster], clock: FakeClock
) -> None:
    c = cluster_of(reveal_budgets(employee_minute=LIMIT))
    sam = [c.login("sam", 0), c.login("sam", 1)]
    answers = [reveal(sam[i % 2], c.url, SUPERVISOR_PASSWORD) for i in range(LIMIT + 2)]
    assert statuses(answers) == [200] * LIMIT + [429, 429]  # not 2 * LIMIT
    assert c.decrypts() == [2, 1]  # the refused reveals never reached either keyd
    refused = answers[LIMIT]
    assert "Reveal limit reached" in refused.text
    assert "4111" not in refused.text
    assert refused.headers["Retry-After"] == "60"  # the minute renews at 10:01
    assert refused.headers["Cache-Control"] == "no-store"
    done = audit_rows(c.first, "reveal.done")
    assert len(done) == LIMIT
    over = audit_rows(c.first, "reveal.budget_exceeded")
    assert [(r.actor, r.outcome, r.detail) for r in over] == [
        ("sam", "failure", f"web:employee_minute count={LIMIT + 1} limit={LIMIT}"),
        ("sam", "failure", f"web:employee_minute count={LIMIT + 2} limit={LIMIT}"),
    ]
    assert over[0].resource == done[0].resource  # the field, as for keyd's refusal
    assert "reveal.budget_exceeded" in events(c.first)
    sam_id = int(user_row(c.first, "sam").id)
    assert c.counters()[(f"reveal:user:{sam_id}", 60)] == LIMIT + 2
    assert c.counters()[("reveal:total", 60)] == LIMIT  # refused by their own limit: nobody else's

    # Both nodes restart (new processes, new keyd clients; node 1's keyd restarts too): still refused,
    # on either node, and still without asking keyd.
    c.restart(0)
    c.restart(1)
    c.keyds[0].stop()
    c.keyds[0].start()
    c.keyds[0].unseal(c.key)
    for i in (0, 1):
        assert reveal(c.login("sam", i), c.url, SUPERVISOR_PASSWORD).status_code == 429
    assert c.decrypts() == [0, 0]
    # The next minute renews the budget, on whichever node.
    clock.advance(timedelta(minutes=1))
    r = reveal(c.login("sam", 1), c.url, SUPERVISOR_PASSWORD)
    assert r.status_code == 200, r.text
    assert VISA in r.text
    assert c.decrypts() == [0, 1]


def test_the_total_is_global_too(cluster_of: Callable[..., Cluster]) -> None:
    c = cluster_of(reveal_budgets(global_minute=LIMIT))
    sam, tom = c.login("sam", 0), c.login("tom", 1)
    passwords = {"sam": SUPERVISOR_PASSWORD, "tom": c.people["tom"].password}
    order = [("sam", sam), ("tom", tom)] * 3
    answers = [reveal(client, c.url, passwords[name]) for name, client in order]
    assert statuses(answers) == [200] * LIMIT + [429] * (6 - LIMIT)
    assert sum(c.decrypts()) == LIMIT
    details = {r.detail.split(" ")[0] for r in audit_rows(c.first, "reveal.budget_exceeded")}
    assert details == {"web:global_minute"}


def test_concurrent_reveals_from_both_nodes_never_pass_the_limit(cluster_of: Callable[..., Cluster]) -> None:
    c = cluster_of(reveal_budgets(employee_minute=LIMIT))
    per_node = 4
    clients = [c.login("sam", i % 2) for i in range(2 * per_node)]
    forms = [reveal_form(client, c.url) for client in clients]
    start = threading.Barrier(len(clients))
    found: list[int] = [0] * len(clients)
    failed: list[BaseException] = []

    def one(i: int) -> None:
        try:
            start.wait(timeout=30)
            found[i] = reveal(clients[i], c.url, SUPERVISOR_PASSWORD, tokens=forms[i]).status_code
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failed.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failed, failed
    assert sorted(found) == [200] * LIMIT + [429] * (len(clients) - LIMIT)
    assert sum(c.decrypts()) == LIMIT
    assert len(audit_rows(c.first, "reveal.done")) == LIMIT
    assert len(audit_rows(c.first, "reveal.budget_exceeded")) == len(clients) - LIMIT
    sam_id = int(user_row(c.first, "sam").id)
    assert c.counters()[(f"reveal:user:{sam_id}", 60)] == len(clients)  # every reveal counted once


def test_keyds_own_budget_still_refuses_below_the_web_apps(cluster_of: Callable[..., Cluster]) -> None:
    """The last line: node 1's keyd allows 2 a minute, the web app 10. keyd's count is its own, per
    node: node 2's keyd still serves, and the web app counts every decrypt it asked for."""
    c = cluster_of(reveal_budgets(employee_minute=10), keyds=[keyd_budget("employee", "minute", 2), GENEROUS])
    on_one = c.login("sam", 0)
    assert statuses([reveal(on_one, c.url, SUPERVISOR_PASSWORD) for _ in range(3)]) == [200, 200, 429]
    (refused,) = audit_rows(c.first, "reveal.budget_exceeded")
    assert refused.detail == "keyd:employee_minute"
    assert "budget_exceeded" in c.keyds[0].event_names()
    assert reveal(c.login("sam", 1), c.url, SUPERVISOR_PASSWORD).status_code == 200
    assert c.decrypts() == [3, 1]
    sam_id = int(user_row(c.first, "sam").id)
    assert c.counters()[(f"reveal:user:{sam_id}", 60)] == 4  # keyd's refusal was asked for: counted


def test_an_admin_lift_resets_the_reveal_budget_on_every_node(cluster_of: Callable[..., Cluster]) -> None:
    c = cluster_of(reveal_budgets(employee_minute=LIMIT))
    sam = c.login("sam", 0)
    assert statuses([reveal(sam, c.url, SUPERVISOR_PASSWORD) for _ in range(LIMIT + 1)])[-1] == 429
    admin = c.login("adam", 1)
    sam_id = int(user_row(c.first, "sam").id)
    form = get(admin, f"/admin/budgets/{sam_id}/lift")
    assert form.status_code == 200
    data = {"csrf_token": csrf_token(form.text), "reason": REASON, "confirm_typed": ADMIN_PASSWORD}
    assert post(admin, f"/admin/budgets/{sam_id}/lift", data=data).status_code == 302
    (lifted,) = audit_rows(c.first, "admin.budget_lifted")
    assert f"reveal:employee/60s={LIMIT + 1}" in lifted.detail
    assert c.counters()[(f"reveal:user:{sam_id}", 60)] == 0
    assert reveal(c.login("sam", 1), c.url, SUPERVISOR_PASSWORD).status_code == 200
    # The console's request counts never mistake a reveal counter for a request counter.
    with c.first.extensions["strongroom"].engine.connect() as conn:
        app_rules = c.first.extensions["strongroom.budgets"]
        request_usage = budgets.usage(conn, app_rules, now=c.clock.now())
        reveal_usage = budgets.usage(
            conn, budgets.own(parse_reveal_limits(reveal_budgets())), now=c.clock.now()
        )
    assert not any(key.startswith("reveal:") for key in request_usage)
    assert [(x.rule.counts, x.n) for x in reveal_usage[f"reveal:user:{sam_id}"] if x.rule.window == 60] == [
        (REVEAL, 1)
    ]


# --- the setting -------------------------------------------------------------------------------------


def test_the_defaults_are_keyds_defaults() -> None:
    """The operator sets both to the same numbers; shipped, they already are."""
    rules = parse_reveal_limits(DEFAULTS["REVEAL_BUDGETS"])
    windows = {"minute": 60, "hour": 3600, "day": 86400}
    expected = {("employee", windows[w], n) for w, n in keyd_config.DEFAULT_EMPLOYEE_BUDGET.items()}
    expected |= {("total", windows[w], n) for w, n in keyd_config.DEFAULT_GLOBAL_BUDGET.items()}
    assert {(r.scope, r.window, r.limit) for r in rules} == expected
    assert all(r.counts == REVEAL and r.alert == r.limit for r in rules)


def _without(scope: str, window: str) -> dict[str, Any]:
    value: dict[str, Any] = reveal_budgets()
    del value[scope][window]
    return value


def _with(scope: str, window: str, limit: Any) -> dict[str, Any]:
    value: dict[str, Any] = reveal_budgets()
    value[scope][window] = limit
    return value


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (None, "exactly the scopes employee and global"),
        ([{"scope": "employee", "window": 3600, "limit": 3}], "exactly the scopes employee and global"),
        ({"employee": reveal_budgets()["employee"]}, "exactly the scopes employee and global"),
        ({**reveal_budgets(), "team": {"minute": 1}}, "exactly the scopes employee and global"),
        ({**reveal_budgets(), "total": {"minute": 1}}, "exactly the scopes employee and global"),
        (_without("employee", "day"), "employee must give exactly minute, hour and day"),
        (_without("global", "minute"), "global must give exactly minute, hour and day"),
        (
            {**reveal_budgets(), "global": {**reveal_budgets()["global"], "week": 5}},
            "global must give exactly",
        ),
        ({**reveal_budgets(), "employee": [30, 300, 1000]}, "employee must give exactly"),
        (_with("employee", "minute", 0), "employee.minute must be a whole number from 1 to 1000000000"),
        (_with("employee", "hour", -5), "employee.hour must be a whole number from 1"),
        (_with("global", "day", 10**9 + 1), "global.day must be a whole number from 1"),
        (_with("global", "minute", 2.5), "global.minute must be a whole number"),
        (_with("employee", "day", "1000"), "employee.day must be a whole number"),
        (_with("employee", "minute", True), "employee.minute must be a whole number"),
        (_with("employee", "minute", None), "employee.minute must be a whole number"),
    ],
)
def test_hostile_settings_stop_the_app_with_one_line(
    make_app: Callable[..., Flask], value: Any, rule: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        make_app(REVEAL_BUDGETS=value)
    message = str(refused.value)
    assert message.startswith("STRONGROOM_REVEAL_BUDGETS")
    assert rule in message
    assert "\n" not in message


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_environment_variable_is_keyds_shape_as_json(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRONGROOM_REVEAL_BUDGETS", json.dumps(reveal_budgets(employee_hour=40)))
    rules = make_app().extensions["strongroom.reveal_budgets"]
    assert {(r.scope, r.window): r.limit for r in rules}[("employee", 3600)] == 40
