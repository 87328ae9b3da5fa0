"""Custodian shares against the real daemon: `keyd init --key-kind shares`, then shares delivered by
separate `keyd unseal --stdin` processes, by hand through the drop file, and at a pseudo-terminal."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable

import pytest

from keyd.client import Context
from keyd.shares import check_value, format_share, parse_share
from tests.keyd.conftest import ROOT, Keyd, wait_for
from tests.keyd.test_unseal import PROMPT, _at_terminal

UNSEALED, FAILED, USAGE, SEALED = 0, 1, 2, 3
CUSTODIANS = ("alice", "bob", "carol")


def init_shares(k: Keyd, n: int = 3, m: int = 2, names: tuple[str, ...] = CUSTODIANS) -> dict[int, str]:
    """`keyd init --key-kind shares` driven as a script would: read each share, acknowledge it."""
    args = ["--key-kind", "shares", "--shares", str(n), "--threshold", str(m)]
    for name in names:
        args += ["--custodian", name]
    proc = subprocess.Popen(
        [sys.executable, "-m", "keyd", "init", *args, *k.flags()],
        cwd=ROOT,
        env=k.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    got: dict[int, str] = {}
    for name in names:
        line = proc.stdout.readline()
        assert line.startswith("share "), line
        assert f" for {name}: " in line, line
        text = line.rsplit(": ", 1)[1].strip()
        index, value = parse_share(text.encode())
        got[index] = text
        proc.stdin.write(f"{name} {check_value(index, value).lower()}\n")
        proc.stdin.flush()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return got


def unseal_stdin(k: Keyd, share: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keyd", "unseal", "--stdin", *k.flags()],
        cwd=ROOT,
        env=dict(k.env, SUDO_USER="custodian1"),
        input=share + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def progress(k: Keyd) -> tuple[bool, int, tuple[int, ...]]:
    with k.client() as c:
        s = c.status()
    assert s.shares is not None
    return s.sealed, s.shares.received, s.shares.indices


def drop_and_wait(k: Keyd, content: bytes, event: str, *, taken: bool = True) -> dict[str, object]:
    """Drop by hand (what a custodian does with cat and mv); the event keyd wrote about it."""
    before = len(k.events())
    k.drop(content)
    if taken:
        wait_for(lambda: not k.drop_path.exists(), what="keyd to take the drop")
    wait_for(lambda: any(e["event"] == event for e in k.events()[before:]), what=event)
    return next(e for e in k.events()[before:] if e["event"] == event)


def _roundtrip(k: Keyd, blob: bytes | None = None) -> bytes:
    ctx = Context("cust-1", "pan")
    with k.client() as c:
        if blob is None:
            blob = c.encrypt(b"4111111111111111", context=ctx, actor="alice", purpose="test")
        assert c.decrypt(blob, context=ctx, actor="alice", purpose="test") == b"4111111111111111"
    return blob


def test_two_of_three_from_separate_custodians_then_reseal_and_again(
    keyd_factory: Callable[..., Keyd],
) -> None:
    k = keyd_factory()
    texts = init_shares(k)
    assert sorted(texts) == [1, 2, 3]
    state = (k.state_dir / "state.json").read_text()
    for text in texts.values():
        assert text not in state
        assert text.split("-")[3] not in state
    assert '"custodian": "bob"' in state
    k.start()
    sealed = k.cli("status", check=False)
    assert sealed.returncode == SEALED
    assert sealed.stdout.splitlines()[0] == "sealed: true"
    assert "shares: 0 of 2 received" in sealed.stdout.splitlines()

    first = unseal_stdin(k, texts[3])
    assert first.returncode == UNSEALED, first.stderr
    assert "share 3 accepted: 1 of 2 shares received" in first.stderr
    assert texts[3] not in first.stdout + first.stderr
    waiting = k.cli("status", check=False)
    assert waiting.returncode == SEALED
    assert "shares: 1 of 2 received" in waiting.stdout
    second = unseal_stdin(k, texts[1])
    assert second.returncode == UNSEALED, second.stderr
    assert second.stdout.splitlines()[0] == "sealed: false"
    blob = _roundtrip(k)

    assert k.cli("seal", check=False).returncode == 0
    assert progress(k) == (True, 0, ())
    # The other pair, by hand through the drop file, in the other order.
    drop_and_wait(k, texts[2].encode() + b"\n", "share_delivered")
    assert progress(k) == (True, 1, (2,))
    drop_and_wait(k, texts[1].encode(), "unsealed")
    _roundtrip(k, blob)

    events = k.events()
    names = [e["event"] for e in events]
    assert names[:4] == ["shares_split", "share_acknowledged", "share_acknowledged", "share_acknowledged"]
    assert events[0]["threshold"] == 2
    assert events[0]["count"] == 3
    assert events[0]["uid"] == 0
    assert [(e["index"], e["custodian"]) for e in events[1:4]] == [(1, "alice"), (2, "bob"), (3, "carol")]
    delivered = [e for e in events if e["event"] == "share_delivered"]
    assert [(e["index"], e["uid"], e.get("login")) for e in delivered] == [
        (3, 0, "custodian1"),
        (1, 0, "custodian1"),
        (2, 0, None),
        (1, 0, None),
    ]
    assert [e["indices"] for e in events if e["event"] == "shares_combined"] == ["1,3", "1,2"]
    assert names.count("unsealed") == 2
    spool = (k.state_dir / "events.jsonl").read_text()
    for text in texts.values():
        assert text.split("-")[4] not in spool
        assert text.split("-")[4] not in k.log_text()


def test_wrong_repeated_and_hostile_shares_change_nothing(keyd_factory: Callable[..., Keyd]) -> None:
    k = keyd_factory()
    texts = init_shares(k)
    other = keyd_factory("other")
    foreign = init_shares(other)
    k.start()
    assert unseal_stdin(k, texts[1]).returncode == UNSEALED
    again = unseal_stdin(k, texts[1])
    assert again.returncode == FAILED
    assert "already held share 1" in again.stderr
    assert k.event_names()[-1] == "share_duplicate"
    refused = unseal_stdin(k, foreign[2])  # a valid share, of another key
    assert refused.returncode == FAILED
    assert "keyd refused share 2" in refused.stderr
    assert k.events()[-1] == {**k.events()[-1], "event": "share_refused", "reason": "wrong_share", "index": 2}
    typo = texts[2][:-1] + ("A" if texts[2][-1] != "A" else "B")
    local = unseal_stdin(k, typo)  # caught before anything reaches keyd
    assert (local.returncode, k.event_names()[-1]) == (FAILED, "share_refused")
    assert "bad_checksum" in local.stderr
    assert "nothing was written" in local.stderr
    assert progress(k) == (True, 1, (1,))

    value = parse_share(texts[2].encode())[1]
    hostile = [
        ((typo + "\n").encode(), "bad_checksum", 2),
        (("SR1-0-" + format_share(1, value).split("-", 2)[2]).encode(), "bad_index", None),
        (
            f"SR1-9-{format_share(1, value).split('-', 2)[2][:-4]}{check_value(9, value)}".encode(),
            "wrong_share",
            9,
        ),
        (texts[2][:-10].encode(), "malformed", 2),
        (texts[2].replace("-", "é", 3).encode(), "malformed", None),
        (texts[2].encode() + b"\nlogin=mallory; rm -rf /\n", "malformed", None),
        (texts[2].encode() + b"A" * 500, "malformed", None),
        (foreign[3].encode(), "wrong_share", 3),
    ]
    for content, reason, index in hostile:
        event = drop_and_wait(k, content, "share_refused")
        assert (event["reason"], event.get("index")) == (reason, index), content
        assert progress(k) == (True, 1, (1,))
    oversize = drop_and_wait(k, texts[2].encode() * 100, "drop_file_refused", taken=False)
    assert oversize["reason"] == "oversized"  # refused unread, left for the operator to delete
    k.drop_path.unlink()
    assert progress(k) == (True, 1, (1,))
    drop_and_wait(k, texts[3].encode(), "unsealed")
    _roundtrip(k)


def test_a_single_share_never_unseals_and_a_waiting_share_times_out(
    keyd_factory: Callable[..., Keyd],
) -> None:
    k = keyd_factory()
    conf = k.base / "keyd.toml"
    conf.write_text("share_timeout = 1\n")
    k.extra += ["--config", str(conf)]
    texts = init_shares(k, n=3, m=3)
    k.start()
    drop_and_wait(k, texts[1].encode(), "share_delivered")
    timed_out = drop_and_wait(k, texts[2].encode(), "share_delivered")  # 2 of 3 held for a moment
    assert timed_out["received"] in (1, 2)
    wait_for(
        lambda: k.event_names().count("share_timed_out") == 2, timeout=10, what="both shares to time out"
    )
    assert progress(k) == (True, 0, ())
    assert sorted(e["index"] for e in k.events() if e["event"] == "share_timed_out") == [1, 2]
    # Any one share alone, however often it comes, never unseals.
    for i in (1, 2, 3):
        drop_and_wait(k, texts[i].encode(), "share_delivered")
        assert progress(k)[0] is True
        wait_for(lambda: progress(k)[1] == 0, timeout=10, what="the share to time out")
    assert "unsealed" not in k.event_names()


def test_unseal_with_a_share_at_a_terminal_never_shows_it(keyd_factory: Callable[..., Keyd]) -> None:
    k = keyd_factory()
    texts = init_shares(k)
    k.start()
    code, screen = _at_terminal(k, texts[2].encode() + b"\n")
    assert code == UNSEALED, screen
    assert PROMPT in screen
    assert b"custodian share" in screen
    assert texts[2].encode() not in screen
    assert texts[2].split("-")[5].encode() not in screen
    assert b"1 of 2 shares received" in screen
    code, screen = _at_terminal(k, texts[3].encode().lower() + b"\n")
    assert code == UNSEALED, screen
    assert b"sealed: false" in screen
    _roundtrip(k)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--shares", "3", "--threshold", "1", "--custodian", "a", "--custodian", "b", "--custodian", "c"],
            "threshold",
        ),
        (["--shares", "17", "--threshold", "2", *[f"--custodian=c{i}" for i in range(17)]], "threshold"),
        (["--shares", "2", "--threshold", "3", "--custodian", "a", "--custodian", "b"], "threshold"),
        (
            ["--shares", "3", "--threshold", "2", "--custodian", "a", "--custodian", "b"],
            "one --custodian per share",
        ),
        (["--shares", "2", "--threshold", "2", "--custodian", "a", "--custodian", "a"], "must differ"),
        (["--shares", "2", "--threshold", "2", "--custodian", "a", "--custodian", "b c"], "custodian name"),
        (["--threshold", "2"], "needs --shares"),
    ],
    ids=["m-1", "n-17", "m-above-n", "custodians-short", "same-name", "bad-name", "no-n"],
)
def test_init_refuses_bad_share_parameters(
    keyd_factory: Callable[..., Keyd], args: list[str], expected: str
) -> None:
    k = keyd_factory()
    done = k.cli("init", "--key-kind", "shares", *args, check=False)
    assert done.returncode == USAGE, done.stderr
    assert expected in done.stderr
    assert not (k.state_dir / "state.json").exists()


def test_init_without_acknowledgement_saves_nothing(keyd_factory: Callable[..., Keyd]) -> None:
    k = keyd_factory()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "keyd",
            "init",
            "--key-kind",
            "shares",
            "--shares",
            "2",
            "--threshold",
            "2",
            "--custodian",
            "alice",
            "--custodian",
            "bob",
            *k.flags(),
        ],
        cwd=ROOT,
        env=k.env,
        input="alice XXXX\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == FAILED
    assert "not acknowledged by alice" in done.stderr
    assert "nothing was saved" in done.stderr
    assert not (k.state_dir / "state.json").exists()


def test_init_at_a_terminal_shows_each_share_once_and_clears_it(keyd_factory: Callable[..., Keyd]) -> None:
    """The handout at a real pseudo-terminal: Enter, the share, a wrong then a right acknowledgement,
    and the screen cleared (with its scroll-back) before the next custodian is called."""
    import os
    import pty
    import re
    import select
    import time

    from keyd.handout import CLEAR

    k = keyd_factory()
    argv = [sys.executable, "-m", "keyd", "init", "--key-kind", "shares", "--shares", "2", "--threshold", "2"]
    argv += ["--custodian", "alice", "--custodian", "bob", *k.flags()]
    pid, master = pty.fork()
    if pid == 0:
        try:
            os.chdir(ROOT)
            os.execve(sys.executable, argv, k.env)  # noqa: S606 - a fixed argv, no shell
        finally:
            os._exit(127)
    screen = bytearray()
    seen = 0

    def until(marker: bytes) -> bytes:
        nonlocal seen
        deadline = time.monotonic() + 30
        while marker not in screen[seen:]:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"init hung; the terminal showed {bytes(screen)!r}"
            try:
                screen.extend(os.read(master, 4096))
            except OSError:  # EIO: init ended
                raise AssertionError(f"init ended early; the terminal showed {bytes(screen)!r}") from None
        start, seen = seen, screen.index(marker, seen) + len(marker)
        return bytes(screen[start:seen])

    shares = []
    try:
        for name in ("alice", "bob"):
            until(f"{name}, press Enter".encode())
            os.write(master, b"\n")
            shown = until(b"last group: ")
            text = re.search(rb"SR1-[0-9A-Z-]+", shown)
            assert text is not None
            shares.append(text.group().decode())
            os.write(master, f"{name} ZZZZ\n".encode())  # wrong: asked again
            until(b"That is not your name")
            until(b"last group: ")
            os.write(master, f"{name} {shares[-1].rsplit('-', 1)[1].lower()}\n".encode())
            until(CLEAR.encode())
        with contextlib.suppress(OSError):
            while True:
                chunk = os.read(master, 4096)
                if not chunk:
                    break
                screen.extend(chunk)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(master)
    assert os.waitstatus_to_exitcode(status) == 0, bytes(screen)
    # alice's share was cleared (with the scroll-back) before bob was called.
    first_clear_after_alice = screen.index(CLEAR.encode(), screen.index(shares[0].encode()))
    assert screen.index(b"bob, press Enter") > first_clear_after_alice
    assert screen.count(shares[0].encode()) == 1
    assert [e["custodian"] for e in k.events() if e["event"] == "share_acknowledged"] == ["alice", "bob"]
    k.start()
    drop_and_wait(k, shares[1].encode(), "share_delivered")
    drop_and_wait(k, shares[0].encode(), "unsealed")
