"""Re-keying with the real daemon: a new operator secret (file to file, file to a SoftHSM2 token), the
window in which a boot needs both secrets in order, and the old secret's retirement after which it no
longer unseals. Every secret goes through the real drop path (`keyd rekey --stdin`, `keyd unseal --stdin`).
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Callable

import pytest

from keyd.client import Context, KeydAdminClient, KeydClient, key_version
from keyd.errors import IntegrityFailure, KeydError
from tests.keyd.conftest import GENEROUS, SO_PIN, USER_PIN, Keyd, raw_key
from tests.support import need_binary

UNSEALED, FAILED, USAGE, SEALED = 0, 1, 2, 3
CTX = Context("rec-1", "pan")


def _keyd(k: Keyd, command: str, secret: bytes | None, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m keyd COMMAND --stdin` with the secret on a pipe, as a script would run it."""
    return k.cli(command, *args, input=(secret or b"").decode(), timeout=120, check=False)


def _unseal(k: Keyd, secret: bytes) -> subprocess.CompletedProcess[str]:
    return _keyd(k, "unseal", secret, "--stdin")


def _status(k: Keyd) -> object:
    with KeydClient(k.socket, timeout=30.0) as c:
        return c.status()


def _encrypt(k: Keyd, plain: bytes) -> bytes:
    with KeydClient(k.socket, timeout=10.0) as c:
        return c.encrypt(plain, context=CTX, actor="tester", purpose="test")


def _decrypt(k: Keyd, blob: bytes) -> bytes:
    with KeydClient(k.socket, timeout=10.0) as c:
        return c.decrypt(blob, context=CTX, actor="tester", purpose="test")


def _rewrap(k: Keyd, blob: bytes) -> bytes:
    with KeydClient(k.socket, timeout=10.0) as c:
        return c.rewrap(blob, context=CTX, actor="tester", purpose="test")


def _restart(k: Keyd) -> None:
    k.kill()  # SIGKILL: no orderly shutdown, the state is whatever was last saved
    k.start()


def _state(k: Keyd) -> dict[str, object]:
    return json.loads((k.state_dir / "state.json").read_text())


def test_file_to_file_rekey_window_and_retirement(keyd_factory: Callable[..., Keyd]) -> None:
    old, new = raw_key(), raw_key()
    k = keyd_factory(extra=GENEROUS)
    k.init(old, "--key-kind", "raw")
    k.start()
    k.unseal(old)
    under_old = _encrypt(k, b"4111111111111111")

    # Refused before anything changes: the same secret again, a malformed one, no --stdin flag kinds.
    for bad, why in ((old, "is the current one"), (b"not-hex\n", "malformed")):
        refused = _keyd(k, "rekey", bad, "--to", "raw", "--stdin")
        assert refused.returncode == FAILED, refused.stderr
        assert "refused it; nothing changed" in refused.stderr
        assert _status(k).generation == 1  # type: ignore[attr-defined]
        assert why in k.events()[-1]["reason"]  # type: ignore[operator]
    assert _state(k).get("retained_generations") == {}
    usage = _keyd(k, "rekey", new, "--to", "raw", "--stdin", "--new-token-label", "x")
    assert usage.returncode == USAGE

    done = _keyd(k, "rekey", new, "--to", "raw", "--stdin")
    assert done.returncode == 0, done.stderr
    assert "secret generation 2 made" in done.stderr
    status = _status(k)
    assert (status.generation, status.key_version, status.sealed) == (2, 2, False)  # type: ignore[attr-defined]
    under_new = _encrypt(k, b"5500000000000004")
    assert key_version(under_new) == 2
    assert _decrypt(k, under_old) == b"4111111111111111"  # the old version still decrypts meanwhile
    rekeyed = [e for e in k.events() if e["event"] == "rekeyed"]
    assert len(rekeyed) == 1
    assert {k: rekeyed[0][k] for k in ("uid", "generation", "mode", "key_version")} == {
        "uid": 0,  # the drop file's owner: who delivered the new secret
        "generation": 2,
        "mode": "file",
        "key_version": 2,
    }
    assert "actor" in rekeyed[0]
    # A second re-key waits until this one is finished: a boot never needs three secrets.
    again = _keyd(k, "rekey", raw_key(), "--to", "raw", "--stdin")
    assert again.returncode == FAILED
    assert "not finished" in again.stderr

    # A restart in the window: both secrets, oldest first; status says which one keyd waits for.
    _restart(k)
    sealed = k.cli("status", check=False)
    assert sealed.returncode == SEALED
    assert "waiting_for_secret: 1" in sealed.stdout
    assert _unseal(k, new).returncode == SEALED  # the new one first is the wrong one
    assert "wrong_key" in k.event_names()
    first = _unseal(k, old)
    assert first.returncode == SEALED, first.stderr
    assert "accepted; keyd waits for generation 2" in first.stderr
    assert "waiting_for_secret: 2" in k.cli("status", check=False).stdout
    second = _unseal(k, new)
    assert second.returncode == UNSEALED, second.stderr
    assert _decrypt(k, under_old) == b"4111111111111111"
    assert _decrypt(k, under_new) == b"5500000000000004"

    # The old secret cannot go while one of its versions may still be decrypted.
    with KeydAdminClient(k.socket, timeout=10.0) as admin:
        with pytest.raises(KeydError) as live:
            admin.retire_secret(actor="tester")
        assert live.value.reason == "old_versions_live"
        moved = _rewrap(k, under_old)
        assert key_version(moved) == 2
        admin.retire(2, actor="tester")
        after = admin.retire_secret(actor="tester")
        assert [g.number for g in after.generations] == [2]
        with pytest.raises(KeydError) as gone:
            admin.retire_secret(actor="tester")
        assert gone.value.reason == "no_old_secret"
        with pytest.raises(KeydError):  # a retired secret's versions cannot come back
            admin.retire(1, actor="tester")
    assert "secret_retired" in k.event_names()
    state = _state(k)
    assert state["retained_generations"] == {}
    assert sorted(state["versions"]) == ["2"]  # type: ignore[arg-type]
    with pytest.raises(IntegrityFailure):
        _decrypt(k, under_old)

    # From now on only the new secret unseals.
    _restart(k)
    assert _unseal(k, old).returncode == SEALED
    assert _status(k).sealed is True  # type: ignore[attr-defined]
    assert _unseal(k, new).returncode == UNSEALED
    assert _decrypt(k, moved) == b"4111111111111111"
    assert _decrypt(k, under_new) == b"5500000000000004"
    spool = (k.state_dir / "events.jsonl").read_text()
    for secret in (old, new):
        assert secret.strip().decode() not in spool


def test_file_to_pkcs11_rekey(keyd_factory: Callable[..., Keyd], softhsm: dict[str, str]) -> None:
    util = need_binary("softhsm2-util")
    label = "rekey-" + secrets.token_hex(4)
    subprocess.run(
        [util, "--init-token", "--free", "--label", label, "--so-pin", SO_PIN, "--pin", USER_PIN],
        env=softhsm,
        check=True,
        capture_output=True,
    )
    passphrase = b"the old passphrase of this keyd, long enough\n"
    k = keyd_factory(env=softhsm, extra=GENEROUS)
    k.init(passphrase, "--scrypt-n", "16384")
    k.start()
    k.unseal(passphrase)
    under_old = _encrypt(k, b"4111111111111111")

    args = ("--to", "pkcs11", "--new-token-label", label, "--stdin")
    wrong = _keyd(k, "rekey", b"not-the-pin-0000\n", *args)
    assert wrong.returncode == FAILED
    assert _status(k).generation == 1  # type: ignore[attr-defined]
    missing = _keyd(
        k, "rekey", USER_PIN.encode(), "--to", "pkcs11", "--new-token-label", "no-such-token", "--stdin"
    )
    assert missing.returncode == FAILED
    done = _keyd(k, "rekey", USER_PIN.encode() + b"\n", *args)
    assert done.returncode == 0, done.stderr
    status = _status(k)
    assert (status.generation, status.mode) == (2, "pkcs11")  # type: ignore[attr-defined]
    under_new = _encrypt(k, b"5500000000000004")
    assert key_version(under_new) == 2
    assert _state(k)["versions"]["2"]["token_label"].startswith("strongroom-keyd-v2-g2-")  # type: ignore[index]

    # Mid-window restart, keyd still configured for file mode: the passphrase, then the PIN.
    _restart(k)
    assert _unseal(k, passphrase).returncode == SEALED
    assert _unseal(k, USER_PIN.encode() + b"\n").returncode == UNSEALED
    assert _decrypt(k, under_old) == b"4111111111111111"
    moved = _rewrap(k, under_old)
    with KeydAdminClient(k.socket, timeout=10.0) as admin:
        admin.retire(2, actor="tester")
        admin.retire_secret(actor="tester")

    # Only the token now: keyd is configured for PKCS#11 mode, and the passphrase opens nothing.
    k.kill()
    k.mode = "pkcs11"
    k.extra = [*GENEROUS, "--token-label", label]
    k.start()
    assert _unseal(k, passphrase).returncode == SEALED
    assert _unseal(k, USER_PIN.encode() + b"\n").returncode == UNSEALED
    assert _decrypt(k, moved) == b"4111111111111111"
    assert _decrypt(k, under_new) == b"5500000000000004"


def test_a_key_split_into_shares_is_refused_cleanly_by_rekey(keyd_factory: Callable[..., Keyd]) -> None:
    """Re-keying a split key is not offered (docs/key-rotation.md): refused before anything changes,
    with its reason in the event; the shares keep unsealing and every value still decrypts."""
    from tests.keyd.test_shares_daemon import init_shares, unseal_stdin

    k = keyd_factory(extra=GENEROUS)
    shares = init_shares(k)
    k.start()
    assert unseal_stdin(k, shares[1]).returncode == 0
    assert unseal_stdin(k, shares[3]).returncode == 0
    blob = _encrypt(k, b"4111111111111111")
    before = _state(k)
    passphrase = b"a new passphrase for one holder " + secrets.token_hex(8).encode() + b"\n"
    for to in ("passphrase", "raw"):
        secret = passphrase if to == "passphrase" else raw_key()
        refused = _keyd(k, "rekey", secret, "--to", to, "--stdin", "--scrypt-n", "16384")
        assert refused.returncode == FAILED, refused.stderr
        assert "refused it; nothing changed" in refused.stderr
        assert "custodian shares" in str(k.events()[-1]["reason"])
    assert _state(k) == before
    _restart(k)
    assert unseal_stdin(k, shares[2]).returncode == 0
    assert unseal_stdin(k, shares[1]).returncode == 0
    assert _decrypt(k, blob) == b"4111111111111111"
    spool = (k.state_dir / "events.jsonl").read_text()
    assert passphrase.strip().decode() not in spool
