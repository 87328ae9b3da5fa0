"""Two web nodes on a three-node Galera cluster behind HAProxy, all real (tests/cluster/deployment.py):
what an employee sees when a machine fails, and what must hold across the cluster.

The tests share one deployment and run in file order; each leaves it whole again (every node up,
unsealed and in the balancer). Failover times are printed and kept in
test-artifacts/cluster/timings.json for docs/scaling.md.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest

from keyd.client import Context, KeydClient
from keyd.errors import QuotaExceeded
from tests.cluster.deployment import DBS, WEBS, Deployment, deployment, describe, wait_for
from tests.cluster.employees import Browser, Employees, Report
from tests.support import ROOT, made_up_pan, record_timing

pytestmark = pytest.mark.cluster

TIMINGS = ROOT / "test-artifacts" / "cluster" / "timings.json"
PASSWORD = "correct horse battery staple 2026"
CLERKS = ("clerk1", "clerk2", "clerk3", "clerk4")
REVEAL_LIMIT = 3  # per employee and hour, in the web app (global) and in each keyd (per node)
LOAD_SECONDS = 12
REASON = "customer called about a disputed charge"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Deployment]:
    limit = f"--budget=employee.hour={REVEAL_LIMIT}"
    generous = [f"--budget={s}.{w}=1000000" for s, w in (("employee", "minute"), ("employee", "day"))]
    generous += [f"--budget=global.{w}=1000000" for w in ("minute", "hour", "day")]
    # The same numbers in the web app (global, in the database) and in each keyd (per node).
    reveal_budgets = json.dumps({"employee": {"minute": 1000000, "hour": REVEAL_LIMIT, "day": 1000000},
                                 "global": {"minute": 1000000, "hour": 1000000, "day": 1000000}})  # fmt: skip
    with deployment(
        keyd_budgets=[limit, *generous], app_extra={"STRONGROOM_REVEAL_BUDGETS": reveal_budgets}
    ) as d:
        for name in CLERKS:
            d.add_person(name, "clerk", PASSWORD)
        d.add_person("dave", "supervisor", PASSWORD)
        yield d


@pytest.fixture(autouse=True)
def whole(cluster: Deployment) -> None:
    """Each test starts from a whole deployment, whatever the one before left behind."""
    cluster.heal()


@pytest.fixture(scope="module")
def office(cluster: Deployment) -> Iterator[Employees]:
    with Employees(cluster.lan, "client", cluster.lan.address("lb"), cluster.ca_file) as o:
        yield o


@pytest.fixture(scope="module")
def clerks(cluster: Deployment, office: Employees) -> list[Browser]:
    browsers = [office.browser(*cluster.certs_of(n), n, PASSWORD) for n in CLERKS]
    for b in browsers:
        b.login()
    return browsers


def chain_verifies(d: Deployment, node: str = "web1") -> None:
    out = d.flask(node, "audit", "verify")  # exits non-zero on any break
    assert out.startswith("audit chain intact"), out


def cards_committed(d: Deployment, report: Report) -> None:
    """Every card an employee was told was added (302) is in the database, and its audit record,
    on every Galera node."""
    for db in (db for db in DBS if d.galera.running(db)):
        for record, told in report.cards.items():
            record_id = int(record.rsplit("/", 1)[1])
            ((stored,),) = d.sql(db, "SELECT COUNT(*) FROM cards WHERE record_id = %s", (record_id,))
            ((audited,),) = d.sql(
                db, "SELECT COUNT(*) FROM audit_log WHERE event = 'card.added' AND detail LIKE %s",
                (f"record:{record_id} %",),
            )  # fmt: skip
            # A step retried after a broken connection may have been committed twice: never fewer.
            assert isinstance(stored, int)
            assert stored >= told, f"{db}: record {record_id}: {stored} cards stored, {told} confirmed"
            assert audited == stored, f"{db}: record {record_id}: {stored} cards, {audited} records of them"


def no_employee_error(report: Report) -> None:
    assert report.steps, "the load made no request"
    assert not report.failed, f"steps failed even after a retry: {report.failed[:5]}"


def test_employees_work_through_the_balancer_with_their_own_address(
    cluster: Deployment, office: Employees
) -> None:
    dave = office.browser(*cluster.certs_of("dave"), "dave", PASSWORD)
    dave.login()
    before = cluster.served()
    for _ in range(6):
        assert dave.request("GET", "/records/").status == 200
    after = cluster.served()
    assert all(after[n] > before[n] for n in WEBS), f"round robin should use both nodes: {before} -> {after}"
    # The PROXY protocol carried the employee's address through the balancer: the session (bound to
    # the client address) works on both nodes, and the audit trail names the client, not the balancer.
    (ip,) = cluster.sql("db1", "SELECT ip FROM audit_log WHERE actor = 'dave' ORDER BY seq DESC LIMIT 1")[0]
    assert ip == cluster.lan.address("client")


def test_a_web_node_is_reached_only_through_the_balancer(cluster: Deployment) -> None:
    # A PROXY header from anyone else would set any address they like: the node's firewall lets only
    # the balancer reach Apache and the health agent.
    for port in (443, 9707):
        probe = f"echo > /dev/tcp/{cluster.lan.address('web1')}/{port}"
        done = cluster.lan.run("client", ["timeout", "3", "bash", "-c", probe], check=False)
        assert done.returncode != 0, f"the client reached web1:{port} directly"


def test_both_nodes_append_to_one_audit_chain_under_load(cluster: Deployment, office: Employees,
                                                         clerks: list[Browser]) -> None:  # fmt: skip
    before, reruns = cluster.served(), cluster.rerun_requests()
    report = office.load(clerks, seconds=LOAD_SECONDS).result(timeout=LOAD_SECONDS + 120)
    after, reruns = cluster.served(), cluster.rerun_requests() - reruns
    no_employee_error(report)
    # Appends from both nodes serialize on the one writer: nobody needed a retry, and the apps
    # did not even have to run a request again.
    assert not report.retried, f"retries with every machine up: {report.retried[:5]}"
    assert reruns == 0, f"{reruns} requests were rolled back by the database and run again"
    assert all(after[n] - before[n] > 20 for n in WEBS), f"both nodes under load: {before} -> {after}"
    print(f"load: {len(report.steps)} steps, {report.per_second():.1f}/s, served {before} -> {after}")
    cards_committed(cluster, report)
    chain_verifies(cluster)


def test_a_web_node_killed_mid_load_costs_at_most_a_retry(cluster: Deployment, office: Employees,
                                                          clerks: list[Browser]) -> None:  # fmt: skip
    work = office.load(clerks, seconds=LOAD_SECONDS)
    time.sleep(LOAD_SECONDS / 3)
    killed = time.monotonic()
    cluster.kill_web("web1")
    cluster.wait_balanced({"web2"})
    record_timing(TIMINGS, "web node killed: balancer marks it down", time.monotonic() - killed)
    report = work.result(timeout=LOAD_SECONDS + 120)
    no_employee_error(report)
    cards_committed(cluster, report)
    print(f"web1 killed: {len(report.retried)} of {len(report.steps)} steps retried")

    started = time.monotonic()
    cluster.start_web("web1")
    cluster.unseal("web1")
    cluster.wait_balanced(set(WEBS))
    record_timing(
        TIMINGS, "web node restarted and unsealed: back in the balancer", time.monotonic() - started
    )
    chain_verifies(cluster, "web1")


def test_the_database_writer_killed_mid_load_costs_at_most_a_retry(
    cluster: Deployment, office: Employees, clerks: list[Browser]
) -> None:
    writer = cluster.database_writer()
    work = office.load(clerks, seconds=LOAD_SECONDS)
    time.sleep(LOAD_SECONDS / 3)
    killed = time.monotonic()
    cluster.galera.kill(writer)
    wait_for(lambda: cluster.server_states("mariadb")[writer].startswith("DOWN"), timeout=30,
             what=f"HAProxy marks {writer} down")  # fmt: skip
    record_timing(TIMINGS, "database writer killed: balancer marks it down", time.monotonic() - killed)
    report = work.result(timeout=LOAD_SECONDS + 120)
    no_employee_error(report)
    after_kill = [s for s in report.steps if s.started >= killed and s.what.startswith("add")]
    assert after_kill, "nothing was written after the kill"
    first_write = min(s.ended for s in after_kill if s.status in (200, 302)) - killed
    record_timing(TIMINGS, "database writer killed: first write committed elsewhere", first_write)
    new_writer = cluster.database_writer()
    assert new_writer != writer, describe(cluster)
    cards_committed(cluster, report)
    chain_verifies(cluster)

    started = time.monotonic()
    cluster.galera.start(writer)
    record_timing(TIMINGS, "database node restarted: rejoined and synced", time.monotonic() - started)
    # No fail-back: the writer stays where the fail-over put it while the old one catches up.
    assert cluster.database_writer() == new_writer
    cards_committed(cluster, report)  # the rejoined node has every card too


def _reveal(b: Browser, link: str) -> int:
    page = b.request("GET", link)
    if page.status != 200:
        return page.status
    typed = re.search(r'<input[^>]*type="password"[^>]*>', page.body)
    assert typed is not None, page.body[:500]
    field = re.search(r'name="([^"]+)"', typed.group(0))
    assert field is not None
    form = {"csrf_token": _hidden(page.body, "csrf_token"), "stepup": _hidden(page.body, "stepup"),
            "reason": REASON, field.group(1): b.password}  # fmt: skip
    return b.request("POST", link, form).status


def _hidden(page: str, name: str) -> str:
    found = re.search(rf'name="{name}"[^>]*value="([^"]+)"', page) or re.search(
        rf'value="([^"]+)"[^>]*name="{name}"', page
    )
    assert found is not None, f"no {name} in {page[:300]}"
    return found.group(1)


def _clear_of_the_hour_edge(margin: float = 90) -> None:
    """Budget windows are aligned to the epoch (an hour starts at :00): a scenario that straddled one
    would see the count start again. Wait out the last `margin` seconds of an hour."""
    left = 3600 - time.time() % 3600
    if left < margin:
        time.sleep(left + 1)


def test_reveal_budgets_are_global_across_nodes_and_restarts(cluster: Deployment, office: Employees) -> None:
    _clear_of_the_hour_edge()
    dave = office.browser(*cluster.certs_of("dave"), "dave", PASSWORD)
    dave.login()
    token = dave.csrf("/records/")
    record = dave.request("POST", "/records/", {"csrf_token": token, "crm_ref": "C77700001"}).location
    form = {"csrf_token": dave.csrf(record), "pan": made_up_pan(), "cardholder": "Grace Hopper",
            "exp_month": "11", "exp_year": "2030"}  # fmt: skip
    assert dave.request("POST", f"{record}/cards", form).status == 302
    link = re.search(r"/records/\d+/reveal/card/[0-9a-f]{32}/pan", dave.request("GET", record).body)
    assert link is not None
    # The employee alternates between the nodes (the other one drained for each reveal).
    answers = []
    for i in range(REVEAL_LIMIT + 2):
        with cluster.only(WEBS[i % 2]):
            answers.append(_reveal(dave, link.group(0)))
    assert answers == [200] * REVEAL_LIMIT + [429, 429], answers
    # Still refused after a node restarts (keyd's own counts are per node and start from its
    # reservation; the web app's are in the shared database).
    cluster.kill_web("web1")
    cluster.start_web("web1")
    cluster.unseal("web1")
    cluster.wait_balanced(set(WEBS))
    for node in WEBS:
        with cluster.only(node):
            assert _reveal(dave, link.group(0)) == 429, node

    # keyd's own ceiling is the last line, per node: a caller on web1 that skips the web app's
    # budget (an intruder in the web app) still gets no more than web1's keyd allows.
    card_id = link.group(0).split("/")[5]
    (blob,) = cluster.sql("db1", "SELECT pan_ct FROM cards WHERE id = %s", (card_id,))[0]
    assert isinstance(blob, bytes)
    keyd = cluster.nodes["web1"].keyd
    refused = 0
    for _ in range(REVEAL_LIMIT + 1):
        try:
            with KeydClient(keyd.socket) as c:
                c.decrypt(blob, context=Context(card_id, "pan"), actor="dave", purpose="test")
        except QuotaExceeded:
            refused += 1
    assert refused >= 1, "web1's keyd served more than its own ceiling"


def test_a_sealed_node_leaves_the_balancer_and_returns_after_unseal(
    cluster: Deployment, office: Employees, clerks: list[Browser]
) -> None:
    cluster.seal("web2")
    out = cluster.wait_balanced({"web1"})
    record_timing(TIMINGS, "web node sealed: balancer takes it out", out)
    for _ in range(6):  # every request lands on web1 meanwhile
        assert clerks[0].request("GET", "/records/").status == 200
    started = time.monotonic()
    cluster.unseal("web2")
    cluster.wait_balanced(set(WEBS))
    record_timing(TIMINGS, "web node unsealed: balancer takes it back", time.monotonic() - started)


def test_a_revocation_reaches_both_nodes_within_a_minute(cluster: Deployment, office: Employees) -> None:
    cluster.add_person("mallory", "clerk", PASSWORD)
    mallory = office.browser(*cluster.certs_of("mallory"), "mallory", PASSWORD)
    for node in WEBS:
        with cluster.only(node):
            assert mallory.request("GET", "/login").status == 200
    started = time.monotonic()
    cluster.revoke("mallory")  # the CA host publishes the CRL and pushes it to every web node

    def refused_everywhere() -> bool:
        for node in WEBS:
            with cluster.only(node):
                if mallory.request("GET", "/login").status != 0:
                    return False
        return True

    took = wait_for(
        refused_everywhere, timeout=60, what="both nodes refuse the revoked certificate", step=0.5
    )
    record_timing(TIMINGS, "revocation: CA push to both nodes refusing", time.monotonic() - started)
    assert took < 60


def test_every_galera_node_holds_the_same_verified_chain(cluster: Deployment) -> None:
    heads = {db: cluster.sql(db, "SELECT seq, hash FROM audit_head WHERE id = 1")[0] for db in DBS}
    assert len(set(heads.values())) == 1, heads
    chain_verifies(cluster, "web2")
