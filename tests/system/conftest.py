"""The whole server, booted: fixtures of tests/system.

`system` is the booted Debian 12 container (real systemd, on the test's network namespaces) before
anything of Strongroom is installed; `server` is the same container after the install command has
run once, as docs/deploy.md shows it. Both are session-scoped: the suite boots one server and every
scenario runs against it. The image and the wheelhouse are cached (tests/system/images.py), so a
warm start costs the boot and the install, not the build.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import component_missing
from tests.system import images, operator
from tests.system.container import Container, reap_stale_runs
from tests.system.loghost import REMOTE_COPY_PUBLIC_KEY, LogHost
from tests.system.network import Network
from tests.system.server import INSTALL, REPO, SRC, WHEELS, Server, TestCa, export_checkout, make_admins

HERE = Path(__file__).resolve().parent
# Setting up the session's server (cold image build, boot, install) is timed as part of the first
# test that needs it: every test here gets this much unless it sets its own timeout.
SYSTEM_TIMEOUT = 1500


# One server serves the whole session: these modules see it first, as a new admin does (the install,
# the first boot, a watchdog that must be quiet before any scenario rings it). The rest keep their
# order; test_zz_* (the scan of everything the run left) sorts last by name.
FIRST = ("test_first_boot.py", "test_boot.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [i for i, item in enumerate(items) if HERE in Path(str(item.path)).parents]
    for i in ours:
        items[i].add_marker(pytest.mark.slow)
        if items[i].get_closest_marker("timeout") is None:
            items[i].add_marker(pytest.mark.timeout(SYSTEM_TIMEOUT))

    def rank(item: pytest.Item) -> int:
        name = Path(str(item.path)).name
        return FIRST.index(name) if name in FIRST else len(FIRST)

    for i, item in zip(ours, sorted((items[i] for i in ours), key=rank), strict=True):
        items[i] = item


def need_components() -> None:
    """Root and the tools the harness drives (scripts/debian-packages.txt installs them)."""
    if os.geteuid() != 0:
        component_missing("the whole-server test needs root (network namespaces, mounts, systemd-nspawn)")
    for tool in ("systemd-nspawn", "mmdebstrap", "nsenter", "ip", "ssh-keygen"):
        if shutil.which(tool) is None:
            component_missing(f"{tool} is not installed (scripts/debian-packages.txt lists it)")


@pytest.fixture(scope="session")
def system_image() -> Path:
    need_components()
    reap_stale_runs()
    image, _built = images.ensure_image()
    return image


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    need_components()
    path, _downloaded = images.ensure_wheelhouse()
    return path


@pytest.fixture(scope="session")
def system(
    system_image: Path, wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The booted container, nothing installed yet (a bare Debian 12 with the server's packages)."""
    net = Network()
    try:
        net.create()
        work = tmp_path_factory.mktemp("system")
        release = export_checkout(work / "release")
        container = Container(system_image, net, binds={SRC: release, WHEELS: wheelhouse})
        with container:
            server = Server(container, net, TestCa(work / "ca"), make_admins(work / "ssh"))
            container.prepare()
            server.put_setup_files()
            container.start()
            yield server
    finally:
        net.teardown()


@pytest.fixture(scope="session")
def server(system: Server) -> Server:
    """The container after one run of the install command with the test's settings."""
    if not (REPO / INSTALL).exists():
        component_missing(f"{INSTALL} does not exist yet")
    if not system.installs and not system.install_error:
        try:
            system.install()
        except AssertionError as exc:
            system.install_error = str(exc)
    if system.install_error:
        pytest.fail(f"the install command failed in the container:\n{system.install_error}")
    return system


class Shares(list[str]):
    """A list whose repr withholds its items: pytest prints a failing test's arguments, and the shares
    must not reach a CI log any more than the server's."""

    def __repr__(self) -> str:
        return f"<{len(self)} custodian shares, withheld>"


@pytest.fixture(scope="session")
def custodian_shares() -> list[str]:
    """The three custodians' shares (index I is [I-1]; any two unseal) as the first-boot ceremony
    printed them: filled once, by test_first_boot or else by `unsealed`. In the test's memory only,
    never on the server's disk: the secrets scans look for each."""
    return Shares()


@pytest.fixture(scope="session")
def unsealed(server: Server, custodian_shares: list[str]) -> Server:
    """The installed server after the first-boot key ceremony and an unseal (docs/runbook.md)."""
    c = server.container
    if not custodian_shares:
        if c.run(["test", "-e", "/var/lib/strongroom-keyd/state.json"], check=False).returncode == 0:
            pytest.fail(
                "keyd has a key state whose shares this session never saw (made outside the ceremony)"
            )
        custodian_shares[:] = operator.key_ceremony(c)
    if operator.is_sealed(c) is not False:
        operator.unseal(c, custodian_shares[:2])
    return server


@pytest.fixture(scope="session")
def people(unsealed: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, operator.Person]:
    """Web app users with certificates from the test CA, bound by the admin (docs/admin-guide.md)."""
    work = tmp_path_factory.mktemp("people")
    work.chmod(0o700)
    return {
        name: operator.add_person(unsealed, work, name, role)
        for name, role in (("carol", "clerk"), ("dave", "supervisor"))
    }


@pytest.fixture(scope="session")
def alerting(people: dict[str, operator.Person], unsealed: Server, loghost: LogHost) -> Server:
    """The server as its admins run it: the log host receiving (and serving the remote copy), the
    admins' baseline approved, the remote copy fetched once, and the mailer passing every 2 s
    (drop-in). The first watchdog pass is done: it reads keyd's spool from its start, so what keyd
    reported since its first start (here: hardening_degraded, see test_first_boot) is mailed then."""
    c = unsealed.container
    operator.mail_every(c, 2)
    operator.approve_baseline(c)
    operator.approve_aide(c)  # the ceremony's state files and the mailer's drop-in, as the runbook says
    fetched = operator.watch_pass(c, "strongroom-remote-copy.service")
    assert fetched.returncode == 0, c.journal("strongroom-remote-copy.service")[-3000:]
    first = operator.watch_pass(c)
    assert first.returncode == 0, c.journal("strongroom-watch.service")[-3000:]
    # This container cannot give keyd the memlock limit its unit asks for (nspawn keeps no
    # CAP_SYS_RESOURCE, and this host's own hard limit is 8 MiB): keyd reports hardening_degraded at
    # every start and the first pass mails it. That alarm is right here; wait until it is delivered.
    for admin in unsealed.admins.values():
        c.wait_for_mail(admin.login, after=0, match=operator.subject_is("ops.keyd_hardening_degraded"))
    return unsealed


@pytest.fixture(scope="session")
def loghost(server: Server) -> Iterator[LogHost]:
    """The log host (tests/system/loghost.py): rsyslog receiving the server's forwarding over RELP/TLS and
    the read-only SFTP account the server's remote copy pulls from, its key authorised after the install.

    Its SSH host key was made before the install (the settings pin it); its daemons start here, so the
    server's disk queue holds what it forwarded until then and delivers it now.
    """
    assert server.loghost_ssh_key is not None, "the settings were written without the log host's key"
    host = LogHost(server.network, server.ca, server.loghost_ssh_key).setup()
    try:
        pub = server.container.run(["cat", REMOTE_COPY_PUBLIC_KEY], check=False)
        if pub.returncode == 0:
            host.authorize(pub.stdout)
        yield host
    finally:
        host.close()


@pytest.fixture(scope="session")
def stored_pans() -> list[str]:
    """Every made-up card number a scenario stored on the server: the last module's secrets scan
    (test_zz_secrets_scan.py) looks for each, in every spelling, everywhere on the server."""
    return []
