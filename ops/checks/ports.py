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


def _is_listener(c: Any) -> bool:
    if c.type == socket.SOCK_STREAM and c.status != psutil.CONN_LISTEN:
        return False
    if c.type == socket.SOCK_DGRAM and c.raddr:  # a connected UDP socket is a client
        return False
    return isinstance(c.laddr, tuple) and len(c.laddr) == 2  # an unbound socket listens nowhere


def _where(c: Any) -> str:
    proto = "tcp" if c.type == socket.SOCK_STREAM else "udp"
    return f"{proto} {c.laddr[0]}:{c.laddr[1]}"


def _holders() -> tuple[dict[str, tuple[str, list[psutil.Process]]], bool]:
    """Every listening socket a readable process holds, by inode, with its holders; and whether some
    process's descriptors could not be read (then a socket may have holders not listed here)."""
    sockets: dict[str, tuple[str, list[psutil.Process]]] = {}
    denied = False
    for proc in psutil.process_iter():
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        except psutil.AccessDenied:
            # Even root is refused some processes (an LSM, another user namespace's init): what
            # they hold is settled below, against the kernel's own table of listeners.
            denied = True
            continue
        for c in conns:
            if not _is_listener(c):
                continue
            try:
                inode = os.readlink(f"/proc/{proc.pid}/fd/{c.fd}")
            except (FileNotFoundError, ProcessLookupError):
                continue  # closed or gone meanwhile
            except PermissionError:
                denied = True
                continue
            sockets.setdefault(inode, (_where(c), []))[1].append(proc)
    return sockets, denied


def _opener(holders: list[psutil.Process]) -> str | None:
    """The name of the holder whose parent does not hold the socket too; None when all are gone."""
    alive = []
    for p in holders:
        try:
            alive.append((p, p.ppid()))
        except psutil.NoSuchProcess:
            continue  # exited meanwhile: the others still hold the socket
    pids = {p.pid for p, _ in alive}
    # Every holder's parent holding it too cannot be (the tree has a root): then the lowest pid.
    ranked = sorted(alive, key=lambda pp: (pp[1] in pids, pp[0].pid))
    for p, _ in ranked:
        try:
            return str(p.name())
        except psutil.NoSuchProcess:
            continue
    return None


def _listening() -> set[str]:
    """`proto ip:port program` per listening socket of this network namespace, named by the process
    that opened it.

    A listening socket is often held by several processes (postfix's master and the smtpd it hands
    it to, Apache's parent and children): which holder the kernel's tables name is arbitrary, so a
    socket is named by the holder whose parent does not hold it too (the opener). A process whose
    descriptors cannot be read fails the check only when a listener of this namespace is left
    without a readable holder: then its owner truly cannot be told.
    """
    if os.geteuid() != 0:
        # Unprivileged, psutil sees other users' sockets without their owners: a half view.
        raise CheckFailed("listing sockets and their owners needs root")
    sockets, denied = _holders()
    named: dict[str, str] = {}
    for where, holders in sockets.values():
        program = _opener(holders)
        if program is not None:
            named.setdefault(where, program)
    # The kernel's table: every listener of this network namespace, held by anyone. (A process in
    # another namespace lists its own namespace's sockets above: they are not this host's ports.)
    try:
        table = psutil.net_connections(kind="inet")
    except psutil.AccessDenied:
        raise CheckFailed("listing sockets needs root") from None
    here = {_where(c): c.pid for c in table if _is_listener(c)}
    out = set()
    for where, pid in here.items():
        if where in named:
            out.add(f"{where} {named[where]}")
            continue
        if pid is not None:
            # Opened after the scan above: named by the one holder the kernel's table gives.
            try:
                out.add(f"{where} {psutil.Process(pid).name()}")
                continue
            except psutil.NoSuchProcess:
                continue
            except psutil.AccessDenied:
                denied = True
        if denied:
            raise CheckFailed("cannot name the owner of a socket")
        # No process holds it (closed meanwhile, or the kernel's own): still a port, still news.
        out.add(f"{where} ?")
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
