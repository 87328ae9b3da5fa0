"""Helpers shared by the whole suite.

In CI (``CI=true``) a missing component is a failure, never a skip: `need_binary` and
`component_missing` fail there and only skip on a developer's machine.
"""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def component_missing(reason: str) -> None:
    """Stop the test because a real component is unavailable: fail in CI, skip elsewhere."""
    if IN_CI:
        pytest.fail(f"component missing in CI: {reason}")
    pytest.skip(reason)  # CI never gets here: see the fail above


def need_binary(name: str) -> str:
    """The full path of a system binary the test needs (see scripts/debian-packages.txt)."""
    for prefix in ("", "/usr/sbin/", "/sbin/"):
        path = shutil.which(prefix + name) if not prefix else (prefix + name)
        if path and os.access(path, os.X_OK):
            return path
    component_missing(f"{name} is not installed (make test installs it when run as root)")
    raise AssertionError("unreachable")


def need_root() -> None:
    if os.geteuid() != 0:
        component_missing("this test needs root (namespaces, setuid peers, private daemons)")
