"""`keyd init --key-kind shares`: each custodian share shown once, acknowledged, then wiped from the screen.

PCI DSS 3.7.8: a custodian acknowledges taking on the role. Here each custodian, in turn, makes sure
they alone see the screen, is shown their share, writes it down, and confirms by typing their name and
the share's check value (its last group; keyd/shares.py). Only then is the screen (and the terminal's
scroll-back) cleared and the next custodian called. A wrong name or check value is asked again at a
terminal, and ends the handout (nothing saved) when read from a pipe.

From a pipe (tests, scripted installs) the shares go to stdout, one line each, and the
acknowledgements are read from stdin, one line "NAME CHECK" per share, in order.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence

from keyd.shares import check_value, format_share

CUSTODIAN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
TRIES = 3
# Clear the screen and the scroll-back (xterm's ED 3): the next custodian must not scroll up to it.
CLEAR = "\x1b[H\x1b[2J\x1b[3J"


class HandoutAborted(Exception):
    """The handout stopped; nothing was saved. The message never holds a share."""


def check_custodians(names: Sequence[str], count: int) -> None:
    if len(names) != count:
        raise HandoutAborted(f"give one --custodian per share: {count} shares, {len(names)} custodians")
    for name in names:
        if CUSTODIAN_RE.fullmatch(name) is None:
            raise HandoutAborted(
                "a custodian name is 1-64 letters, digits and . _ @ + - (starting with a letter or digit)"
            )
    if len(set(names)) != len(names):
        raise HandoutAborted("each custodian holds one share: the names must differ")


def _acknowledged(line: str, name: str, check: str) -> bool:
    parts = line.split()
    return len(parts) == 2 and parts[0] == name and parts[1].upper() == check


def hand_out(
    shares: Sequence[tuple[int, bytearray]],
    custodians: Sequence[str],
    *,
    threshold: int,
    acknowledged: Callable[[int, str], None],
) -> None:
    """Show each share to its custodian and wait for the acknowledgement; `acknowledged(index, name)`
    records each one. Raises HandoutAborted."""
    check_custodians(custodians, len(shares))
    if sys.stdin.isatty():
        _at_terminal(shares, custodians, threshold=threshold, acknowledged=acknowledged)
    else:
        _from_pipe(shares, custodians, threshold=threshold, acknowledged=acknowledged)


def _from_pipe(
    shares: Sequence[tuple[int, bytearray]],
    custodians: Sequence[str],
    *,
    threshold: int,
    acknowledged: Callable[[int, str], None],
) -> None:
    n = len(shares)
    for (index, value), name in zip(shares, custodians, strict=True):
        print(
            f"share {index} of {n} (any {threshold} unseal) for {name}: {format_share(index, value)}",
            flush=True,
        )
        print(f"keyd init: {name}, confirm with: NAME CHECK-VALUE", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not _acknowledged(line, name, check_value(index, value)):
            raise HandoutAborted(f"share {index} was not acknowledged by {name} (name and check value)")
        acknowledged(index, name)


def _at_terminal(
    shares: Sequence[tuple[int, bytearray]],
    custodians: Sequence[str],
    *,
    threshold: int,
    acknowledged: Callable[[int, str], None],
) -> None:
    tty = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    # A terminal is not seekable, so no "r+" file: read lines through one, write straight to the fd.
    with os.fdopen(tty, "r", encoding="utf-8", errors="replace") as term:

        def say(text: str) -> None:
            os.write(tty, text.encode("utf-8"))

        n = len(shares)
        try:
            for (index, value), name in zip(shares, custodians, strict=True):
                say(CLEAR)
                say(f"Share {index} of {n} is for {name}. Everyone else: look away.\n")
                say(f"{name}, press Enter when you alone can see this screen. ")
                term.readline()
                say(
                    f"\nShare {index} of {n} (any {threshold} of the {n} unseal keyd), for {name}:\n\n"
                    f"    {format_share(index, value)}\n\n"
                    "Write it down exactly; it is shown once and never stored on this server.\n"
                )
                check = check_value(index, value)
                for _ in range(TRIES):
                    say(f"{name}, to confirm, type your name and the share's last group: ")
                    if _acknowledged(term.readline(), name, check):
                        break
                    say("That is not your name and this share's check value.\n")
                else:
                    raise HandoutAborted(f"share {index} was not acknowledged by {name}")
                say(CLEAR)
                acknowledged(index, name)
        except BaseException:
            say(CLEAR)  # never leave a share on the screen, whatever stopped the handout
            raise
