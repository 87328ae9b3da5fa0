"""The design's "netstat -lnp shows no listening ports": what listens, and what listens without permission.

`listening()` lists the TCP sockets in LISTEN and the bound UDP sockets of this network namespace (what
`ss -lntup` shows), with the owning process where it is visible; the watchdog's baseline stores it and
compares. `unexpected(listeners, allowed)` keeps those no allow rule covers. On the production host the
only allowed ones are sshd (tcp 22), Apache (tcp 443) and whatever listens on loopback by design.

CLI: `python -m hardening.ports [--allow tcp:22 --allow tcp:443 --allow tcp:127.0.0.1:8000] [--json]`
exits 1 when anything unexpected listens.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import click
import psutil

MAX_ALLOW_RULES = 64


class AllowRuleError(ValueError):
    """An --allow rule is malformed."""


@dataclass(frozen=True, order=True)
class Listener:
    proto: str  # "tcp" or "udp"
    address: str  # "0.0.0.0", "::", "127.0.0.1", ...
    port: int
    pid: int | None  # None when the socket belongs to a process we may not see (or to the kernel)
    process: str | None


@dataclass(frozen=True)
class AllowRule:
    proto: str
    port: int
    address: str | None = None  # None: any address

    def covers(self, listener: Listener) -> bool:
        return (
            listener.proto == self.proto
            and listener.port == self.port
            and (self.address is None or listener.address == self.address)
        )


def _process_name(pid: int | None) -> str | None:
    if pid is None:
        return None
    try:
        return str(psutil.Process(pid).name())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None  # gone or hidden: the socket is still reported, only without a name


def listening(*, connections: Callable[..., Sequence[Any]] = psutil.net_connections) -> list[Listener]:
    """Every listening TCP socket and bound UDP socket in this network namespace, sorted."""
    found: set[Listener] = set()
    for conn in connections(kind="inet"):
        if conn.type == socket.SOCK_STREAM:
            if conn.status != psutil.CONN_LISTEN:
                continue
            proto = "tcp"
        elif conn.type == socket.SOCK_DGRAM:
            if conn.raddr:  # a connected UDP socket (e.g. a resolver query) receives from one peer only
                continue
            proto = "udp"
        else:
            continue
        if not conn.laddr:
            continue
        found.add(Listener(proto, conn.laddr.ip, conn.laddr.port, conn.pid, _process_name(conn.pid)))
    return sorted(found, key=lambda item: (item.proto, item.port, item.address, item.pid or 0))


def parse_allow(spec: str) -> AllowRule:
    """`tcp:22`, `udp:51820`, `tcp:127.0.0.1:8000` or `tcp:[::1]:8000`."""
    if len(spec) > 64:
        raise AllowRuleError(f"{spec[:64]!r}...: too long")
    proto, sep, rest = spec.partition(":")
    if not sep or proto not in ("tcp", "udp"):
        raise AllowRuleError(f"{spec!r}: must start with tcp: or udp:")
    address, sep, port_text = rest.rpartition(":")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise AllowRuleError(f"{spec!r}: the port must be a number from 1 to 65535")
    if not sep:
        return AllowRule(proto, int(port_text))
    bracketed = address.startswith("[") and address.endswith("]")
    if ":" in address and not bracketed:
        raise AllowRuleError(f"{spec!r}: write an IPv6 address in brackets, as in tcp:[::1]:8000")
    bare = address[1:-1] if bracketed else address
    try:
        parsed = ipaddress.ip_address(bare)
    except ValueError:
        raise AllowRuleError(f"{spec!r}: {address!r} is not an IP address") from None
    return AllowRule(proto, int(port_text), str(parsed))


def unexpected(listeners: Iterable[Listener], allowed: Iterable[AllowRule]) -> list[Listener]:
    rules = list(allowed)
    return [item for item in listeners if not any(rule.covers(item) for rule in rules)]


@click.command()
@click.option("--allow", "allow", multiple=True, help="tcp:PORT, udp:PORT or tcp:ADDRESS:PORT (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="every listener as JSON, with an 'allowed' flag")
def main(allow: tuple[str, ...], as_json: bool) -> None:
    """List listening sockets; exit 1 if one is not covered by an --allow rule."""
    if len(allow) > MAX_ALLOW_RULES:
        raise click.UsageError(f"at most {MAX_ALLOW_RULES} --allow rules")
    try:
        rules = [parse_allow(spec) for spec in allow]
    except AllowRuleError as exc:
        raise click.UsageError(str(exc)) from None
    listeners = listening()
    bad = unexpected(listeners, rules)
    if as_json:
        rows = [asdict(item) | {"allowed": item not in bad} for item in listeners]
        json.dump(rows, sys.stdout)
        sys.stdout.write("\n")
    else:
        for item in listeners:
            mark = "unexpected" if item in bad else "allowed"
            owner = f"{item.process or '?'}[{item.pid if item.pid is not None else '?'}]"
            click.echo(f"{mark:10} {item.proto} {item.address}:{item.port} {owner}")
        if not listeners:
            click.echo("no listening sockets")
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
