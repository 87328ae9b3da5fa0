"""Listening ports: every listening socket (TCP LISTEN, bound UDP) and the program that owns it, against
the approved baseline. New ones and vanished ones both alert: a vanished listener may be a replaced one.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import psutil

from ops.alerts import Alert, Finding
from ops.checks import CheckFailed, Context, Result

NAME = "ports"


def _listening() -> set[str]:
    if os.geteuid() != 0:
        # Unprivileged, psutil sees other users' sockets without their owners: a half view.
        raise CheckFailed("listing sockets and their owners needs root")
    out = set()
    try:
        conns = psutil.net_connections(kind="inet")
    except psutil.AccessDenied:
        raise CheckFailed("listing sockets needs root") from None
    for c in conns:
        if c.type == socket.SOCK_STREAM and c.status != psutil.CONN_LISTEN:
            continue
        if c.type == socket.SOCK_DGRAM and c.raddr:  # a connected UDP socket is a client, not a listener
            continue
        if not isinstance(c.laddr, tuple) or len(c.laddr) != 2:
            continue  # an unbound socket listens nowhere
        ip, port = c.laddr
        program = "?"
        if c.pid is not None:
            try:
                program = psutil.Process(c.pid).name()
            except psutil.NoSuchProcess:
                continue
            except psutil.AccessDenied:
                raise CheckFailed("cannot name the owner of a socket") from None
        proto = "tcp" if c.type == socket.SOCK_STREAM else "udp"
        out.add(f"{proto} {ip}:{port} {program}")
    return out


def snapshot(ctx: Context) -> dict[str, Any]:
    return {"listening": sorted(_listening())}


def run(ctx: Context) -> Result:
    now = _listening()  # first: a check that cannot look says so even without a baseline
    if ctx.baseline is None:
        return Result([Finding(Alert.BASELINE_MISSING, resource=NAME, key="baseline")])
    approved = set(ctx.baseline["listening"])
    findings = [Finding(Alert.PORT_NEW, resource=s, key=f"new|{s}") for s in sorted(now - approved)]
    findings += [Finding(Alert.PORT_GONE, resource=s, key=f"gone|{s}") for s in sorted(approved - now)]
    return Result(findings)
