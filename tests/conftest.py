"""Suite-wide rules. Fixtures for each part live in the conftest.py of its own folder."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import IN_CI, install_for_others


@pytest.fixture(scope="session")
def python_for_others() -> Iterator[Path]:
    """A python every user can run, with the project and its libraries: for code a test runs as
    another uid (see tests.support.install_for_others). Built once per session outside pytest's
    0700 tmp dirs."""
    base = Path(tempfile.mkdtemp(prefix="strongroom-installed-"))
    try:
        yield install_for_others(base)  # made 0755 there
    finally:
        shutil.rmtree(base, ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Belt and braces for CI: a skip that slipped past tests.support still fails the run.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if IN_CI and reporter is not None and reporter.stats.get("skipped"):
        reporter.write_line("CI=true: skipped tests count as failures", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
