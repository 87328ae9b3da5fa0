"""Suite-wide rules. Fixtures for each part live in the conftest.py of its own folder."""

from __future__ import annotations

import pytest

from tests.support import IN_CI


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Belt and braces for CI: a skip that slipped past tests.support still fails the run.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if IN_CI and reporter is not None and reporter.stats.get("skipped"):
        reporter.write_line("CI=true: skipped tests count as failures", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
