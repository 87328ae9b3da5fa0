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
    """`proto ip:port program` per listening socket, named by the process that opened it.

    A listening socket is often held by several processes (postfix's master and the smtpd it hands
    it to, Apache's parent and children): which holder the kernel's tables name is arbitrary, so a
    socket is named by the holder whose parent does not hold it too (the opener).
    """
    if os.geteuid() != 0:
        # Unprivileged, psutil sees other users' sockets without their owners: a half view.
        raise CheckFailed("listing sockets and their owners needs root")
    sockets: dict[str, tuple[str, list[psutil.Process]]] = {}
    for proc in psutil.process_iter():
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        except psutil.AccessDenied:
            raise CheckFailed("cannot name the owner of a socket") from None
        for c in conns:
            if c.type == socket.SOCK_STREAM and c.status != psutil.CONN_LISTEN:
                continue
            if c.type == socket.SOCK_DGRAM and c.raddr:  # a connected UDP socket is a client
                continue
            if not isinstance(c.laddr, tuple) or len(c.laddr) != 2:
                continue  # an unbound socket listens nowhere
            try:
                inode = os.readlink(f"/proc/{proc.pid}/fd/{c.fd}")
            except FileNotFoundError:
                continue  # closed or gone meanwhile
            proto = "tcp" if c.type == socket.SOCK_STREAM else "udp"
            where = f"{proto} {c.laddr[0]}:{c.laddr[1]}"
            sockets.setdefault(inode, (where, []))[1].append(proc)
    out = set()
    for where, holders in sockets.values():
        pids = {p.pid for p in holders}
        try:
            openers = sorted((p for p in holders if p.ppid() not in pids), key=lambda p: p.pid)
            program = (openers or holders)[0].name()
        except psutil.NoSuchProcess:
            continue
        out.add(f"{where} {program}")
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
