"""PKCS#11 mode against a real SoftHSM2 token initialised in a temp dir."""

from __future__ import annotations

import shutil
import subprocess
import threading

import pytest

from keyd.client import Context
from keyd.errors import IntegrityFailure, KeydError, Sealed
from tests.keyd.conftest import GENEROUS, SO_PIN, SOFTHSM_MODULE, USER_PIN, Keyd, wait_for
from tests.support import need_binary

CTX = Context("cust-7", "pan")


def _token_keys(env: dict[str, str]) -> dict[str, dict[str, bool]]:
    """Look at the token from outside keyd (a separate process, so keyd's SoftHSM is untouched)."""
    import json
    import sys

    script = f"""
import json, pkcs11
from pkcs11 import Attribute, ObjectClass
lib = pkcs11.lib({SOFTHSM_MODULE!r})
with lib.get_token(token_label="keyd-test").open(user_pin={USER_PIN!r}) as s:
    out = {{}}
    for k in s.get_objects({{Attribute.CLASS: ObjectClass.SECRET_KEY}}):
        out[k.label] = {{
            "extractable": bool(k[Attribute.EXTRACTABLE]),
            "sensitive": bool(k[Attribute.SENSITIVE]),
        }}
        try:
            k[Attribute.VALUE]
            out[k.label]["value_readable"] = True
        except pkcs11.PKCS11Error:
            out[k.label]["value_readable"] = False
print(json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_pkcs11_mode_end_to_end(keyd_factory: object, softhsm: dict[str, str]) -> None:
    k: Keyd = keyd_factory(mode="pkcs11", env=softhsm, extra=GENEROUS)  # type: ignore[operator]
    k.init(USER_PIN.encode() + b"\n")
    keys = _token_keys(softhsm)
    assert keys == {"strongroom-keyd-v1": {"extractable": False, "sensitive": True, "value_readable": False}}
    k.start()
    # A wrong PIN: stays sealed, raises the event.
    k.drop(b"not-the-pin\n")
    wait_for(lambda: "wrong_key" in k.event_names(), what="wrong_key")
    with k.client() as c, pytest.raises(Sealed):
        c.encrypt(b"x", context=CTX, actor="a", purpose="t")
    k.unseal(USER_PIN.encode() + b"\n")
    with k.client() as c:
        assert c.status().mode == "pkcs11"
        blob = c.encrypt(b"4111111111111111", context=CTX, actor="a", purpose="t")
        assert c.decrypt(blob, context=CTX, actor="a", purpose="t") == b"4111111111111111"
        with pytest.raises(IntegrityFailure):
            c.decrypt(blob, context=Context("cust-8", "pan"), actor="a", purpose="t")
        with pytest.raises(IntegrityFailure):
            c.decrypt(blob[:-1] + bytes([blob[-1] ^ 1]), context=CTX, actor="a", purpose="t")
        items = [(Context(f"r{i}", "pan"), b"%d" % i) for i in range(100)]
        blobs = c.encrypt_batch(items, actor="a", purpose="t")
        back = c.decrypt_batch(
            [(ctx, b) for (ctx, _), b in zip(items, blobs, strict=True)],  # type: ignore[misc]
            actor="a",
            purpose="t",
        )
        assert back == [d for _, d in items]

        # Many threads at once: SoftHSM must not crash (every PKCS#11 call is serialised).
        errors: list[BaseException] = []

        def hammer(n: int) -> None:
            try:
                for i in range(100):
                    ctx = Context(f"t{n}-{i}", "pan")
                    out = c.encrypt(b"v", context=ctx, actor="a", purpose="t")
                    assert c.decrypt(out, context=ctx, actor="a", purpose="t") == b"v"
            except (KeydError, AssertionError) as exc:
                errors.append(exc)

        threads = [threading.Thread(target=hammer, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []

    # Rotation makes a second non-extractable key in the token; old ciphertexts still decrypt.
    assert "key_version: 2" in k.cli("rotate").stdout
    assert set(_token_keys(softhsm)) == {"strongroom-keyd-v1", "strongroom-keyd-v2"}
    with k.client() as c:
        new = c.rewrap(blob, context=CTX, actor="a", purpose="rotate")
        assert new[1:5] == b"\x00\x00\x00\x02"
        assert c.decrypt(new, context=CTX, actor="a", purpose="t") == b"4111111111111111"
    # Seal and unseal again in the same process (the library is already loaded and initialised).
    assert "sealed: true" in k.cli("seal").stdout
    k.unseal(USER_PIN.encode() + b"\n")
    with k.client() as c:
        assert c.decrypt(new, context=CTX, actor="a", purpose="t") == b"4111111111111111"
    # Restart: the same PIN opens both versions.
    k.stop()
    k.start()
    k.unseal(USER_PIN.encode() + b"\n")
    with k.client() as c:
        assert c.decrypt(blob, context=CTX, actor="a", purpose="t") == b"4111111111111111"
        assert c.decrypt(new, context=CTX, actor="a", purpose="t") == b"4111111111111111"
    assert USER_PIN not in k.log_text()
    assert USER_PIN not in (k.state_dir / "events.jsonl").read_text()


def test_init_refusals_in_pkcs11_mode(keyd_factory: object, softhsm: dict[str, str]) -> None:
    util = need_binary("softhsm2-util")
    subprocess.run(
        [util, "--init-token", "--free", "--label", "keyd-test-2", "--so-pin", SO_PIN, "--pin", USER_PIN],
        env=softhsm,
        check=True,
        capture_output=True,
    )
    k: Keyd = keyd_factory(mode="pkcs11", env=softhsm, extra=["--token-label", "keyd-test-2"])  # type: ignore[operator]
    k.drop(b"wrong-pin\n")
    wrong = k.cli("init", "--wait", "5", check=False)
    assert wrong.returncode == 1
    assert "the token refused the PIN" in wrong.stderr
    assert not (k.state_dir / "state.json").exists()
    k.init(USER_PIN.encode() + b"\n")
    # An operator who lost the state but not the token: init will not silently add a second v1 key.
    shutil.rmtree(k.state_dir)
    k.drop(USER_PIN.encode() + b"\n")
    again = k.cli("init", "--wait", "5", check=False)
    assert again.returncode == 1
    assert "already holds a key labelled 'strongroom-keyd-v1'" in again.stderr
