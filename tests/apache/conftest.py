"""One stack (Apache + gunicorn + keyd) per test module: starting it takes ~2-3 s."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.apache.stack import Stack, running_stack, traversable_dir

# Users the site tests log in as (password policy: long, not guessable).
PASSWORDS = {"alice": "Quartz-Lantern-Mosaic-4817", "rita": "Velvet-Orchard-Granite-2963"}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with traversable_dir() as d, running_stack(d / "stack") as running:
        running.add_user("alice", "clerk", PASSWORDS["alice"])
        yield running
