#!/usr/bin/python3 -I
"""Runs INSIDE the whole-server container, as a unit's ExecStart (a drop-in swaps the command), so it
has exactly that unit's user, seccomp filter, namespaces, address families and IP allow-list.

It tries what a compromised service would try and prints one JSON line to stdout (the journal):
    {"probe": "...", "read_keyd_state": "denied", "write_etc": "denied", "tcp_loopback": "ok", ...}
Each outcome is "ok" (it worked) or the errno name that stopped it. Standard library only.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys

# Targets are passed on the command line so the test decides which address stands for "the outside"
# (one of its own namespaces, never a real network).
OUTSIDE = sys.argv[1] if len(sys.argv) > 1 else "192.0.2.1"
SMTP_PORT = 25


def _outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__


def _try(action) -> str:  # type: ignore[no-untyped-def]
    try:
        action()
    except (OSError, ValueError) as exc:
        return _outcome(exc)
    return "ok"


def _read(path: str) -> None:
    with open(path, "rb") as fh:
        fh.read(1)


def _listdir(path: str) -> None:
    os.listdir(path)


def _write(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    os.unlink(path)


def _tcp(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(3)
        s.connect((host, port))


def _tcp_socket() -> None:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()


def main() -> None:
    result = {
        "probe": os.environ.get("PROBE_NAME", "?"),
        "run": os.environ.get("PROBE_RUN", ""),  # which start of the unit printed this line
        "uid": os.getuid(),
        "read_keyd_state": _try(lambda: _listdir("/var/lib/strongroom-keyd")),
        "read_keyd_events": _try(lambda: _read("/var/lib/strongroom-keyd/events.jsonl")),
        "read_web_env": _try(lambda: _read("/etc/strongroom/webapp.env")),
        "write_etc": _try(lambda: _write("/etc/strongroom-probe")),
        "write_opt": _try(lambda: _write("/opt/strongroom/probe")),
        "read_root_home": _try(lambda: _listdir("/root")),
        "tcp_socket": _try(_tcp_socket),
        "tcp_loopback_smtp": _try(lambda: _tcp("127.0.0.1", SMTP_PORT)),
        "tcp_outside": _try(lambda: _tcp(OUTSIDE, 443)),
    }
    print("SANDBOX-PROBE " + json.dumps(result, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
