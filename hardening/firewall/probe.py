"""Try TCP connections and say which ports answer: the design's "test the firewall from an untrusted IP".

Run it on a machine that should NOT get in (and on one that should) after every firewall change; the
namespace tests run the very same code from each simulated host.
"""

from __future__ import annotations

import enum
import socket
from concurrent.futures import ThreadPoolExecutor


class Outcome(enum.StrEnum):
    OPEN = "open"  # the connection was accepted
    REFUSED = "refused"  # a RST came back: reachable, nothing listens (the firewall did not drop it)
    TIMEOUT = "timeout"  # nothing came back: dropped, as DROP policy does


def probe(host: str, port: int, *, timeout: float = 1.0) -> Outcome:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return Outcome.OPEN
    except ConnectionRefusedError:
        return Outcome.REFUSED
    except (TimeoutError, OSError):
        # EHOSTUNREACH after a neighbour-discovery timeout is also "nothing answered".
        return Outcome.TIMEOUT


def probe_many(targets: list[tuple[str, int]], *, timeout: float = 1.0) -> dict[tuple[str, int], Outcome]:
    """All targets at once, so a host's whole table costs one timeout, not one per port."""
    if not targets:
        return {}
    with ThreadPoolExecutor(max_workers=min(32, len(targets))) as pool:
        outcomes = pool.map(lambda target: probe(target[0], target[1], timeout=timeout), targets)
        return dict(zip(targets, outcomes, strict=True))
