"""`python -m keyd`: the operator's commands."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keyd.config import Config, ConfigError, load
from keyd.errors import KeydError, Unavailable

if TYPE_CHECKING:
    from keyd.client import KeydAdminClient, Status

DESCRIPTION = """\
keyd holds Strongroom's data key and encrypts/decrypts fields for the web app over a Unix socket.

First boot (once):
  1. python -m keyd init --config /etc/strongroom/keyd.toml [--key-kind passphrase|raw]
     init waits for the key at the drop path (default /dev/shm/ekey); in another shell, as keyd's
     user, type it into the drop file (see step 3 below). init creates the state and key version 1.

Every boot:
  2. python -m keyd serve --config /etc/strongroom/keyd.toml     (starts sealed)
  3. python -m keyd unseal --config /etc/strongroom/keyd.toml    (type the passphrase, raw key or
     token PIN: not echoed; written to the drop file as keyd's user, taken by keyd, state printed)
     By hand, as keyd's user: umask 077; cat > /dev/shm/ekey-tmp  then  mv /dev/shm/ekey-tmp /dev/shm/ekey
  4. python -m keyd status                   (sealed: false)

Exit codes of status and unseal: 0 unsealed, 3 sealed, 4 keyd unreachable, 1 refused or failed,
2 usage or config error.

Key rotation: `rotate`, have the web app rewrap every record, check `versions`, then `retire --min-version N`.
Every refusal and what it means: docs/keyd.md.
"""

# Exit codes (docs/keyd.md): scripts test `keyd status` by its code, not by parsing its output.
EXIT_UNSEALED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SEALED = 3
EXIT_UNREACHABLE = 4

# Flags shared by every command; each overrides the same key of the config file.
_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--socket", "socket", {"help": "the Unix socket (its directory is created 0750)"}),
    ("--state-dir", "state_dir", {"help": "keyd's state directory (state.json, budgets.json, events.jsonl)"}),
    ("--drop-path", "drop_path", {"help": "where the operator drops the key or PIN (default /dev/shm/ekey)"}),
    ("--allow-uid", "allowed_uids", {"type": int, "action": "append", "help": "a uid served (repeatable)"}),
    (
        "--admin-uid",
        "admin_uids",
        {"type": int, "action": "append", "help": "a uid that may seal/rotate/retire"},
    ),
    ("--drop-uid", "drop_uids", {"type": int, "action": "append", "help": "an owner a drop file may have"}),
    ("--socket-group", "socket_group", {"help": "the web app's group: may enter the socket directory"}),
    ("--user", "user", {"help": "drop root privileges to this user after binding the socket"}),
    ("--mode", "mode", {"choices": ["file", "pkcs11"], "help": "key source (default file)"}),
    ("--pkcs11-module", "pkcs11_module", {"help": "PKCS#11 library (default SoftHSM2)"}),
    ("--token-label", "token_label", {"help": "label of the PKCS#11 token"}),
    ("--poll-interval", "poll_interval", {"type": float, "help": "seconds between drop-file checks"}),
]


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="a TOML config file (see keyd/config.py)")
    for flag, dest, kwargs in _FLAGS:
        common.add_argument(flag, dest=dest, default=None, **kwargs)
    common.add_argument(
        "--budget",
        action="append",
        default=None,
        metavar="SCOPE.WINDOW=N",
        help="a decrypt budget, e.g. employee.minute=30 or global.day=20000 (repeatable)",
    )
    common.add_argument("--no-syslog", action="store_true", help="events to the spool and stderr only")

    parser = argparse.ArgumentParser(
        prog="python -m keyd", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("serve", parents=[common], help="run the daemon (starts sealed, waits for the drop file)")
    init = sub.add_parser(
        "init", parents=[common], help="create the state and key version 1 from a dropped key"
    )
    init.add_argument(
        "--key-kind",
        choices=["passphrase", "raw"],
        default="passphrase",
        help="file mode: a long passphrase (scrypt) or a raw key as 64 hex digits",
    )
    init.add_argument("--scrypt-n", type=int, default=2**17, help="scrypt cost N (power of two, >= 2**14)")
    init.add_argument("--wait", type=float, default=600.0, help="seconds to wait for the drop file")
    sub.add_parser("status", parents=[common], help="sealed or not, key versions (exit 0/3/4)")
    unseal = sub.add_parser(
        "unseal", parents=[common], help="type the key or PIN (no echo) into the drop file, wait for keyd"
    )
    unseal.add_argument(
        "--stdin", action="store_true", help="read the secret from a pipe (scripts); refused on a terminal"
    )
    unseal.add_argument("--wait", type=float, default=10.0, help="seconds keyd has to take the drop file")
    sub.add_parser("versions", parents=[common], help="encryptions per key version")
    sub.add_parser("seal", parents=[common], help="drop the key from keyd's memory")
    sub.add_parser("rotate", parents=[common], help="add a new key version and encrypt under it from now on")
    retire = sub.add_parser("retire", parents=[common], help="refuse decrypts under versions below N")
    retire.add_argument("--min-version", type=int, required=True, help="the oldest version still decrypted")
    return parser


def _config(args: argparse.Namespace) -> Config:
    overrides = {dest: getattr(args, dest) for _, dest, _ in _FLAGS}
    if args.budget:
        budgets: dict[str, dict[str, int]] = {}
        for spec in args.budget:
            try:
                key, value = spec.split("=", 1)
                scope, window = key.split(".", 1)
                budgets.setdefault(scope, {})[window] = int(value)
            except ValueError:
                raise ConfigError(f"bad --budget {spec!r}: use SCOPE.WINDOW=N") from None
        overrides["budgets"] = budgets
    if args.no_syslog:
        overrides["syslog"] = False
    return load(args.config, overrides)


def _init(config: Config, args: argparse.Namespace) -> int:
    from keyd import hardening
    from keyd.keysource import DropRefused, TokenError, consume_drop, open_drop
    from keyd.state import StateError, StateStore, hand_over, make_state_dir
    from keyd.keyring import close_ring, create_state

    store = StateStore(config.state_dir)
    if store.exists():
        print(f"keyd: {store.path} exists; refusing to overwrite a key state", file=sys.stderr)
        return 1
    n = args.scrypt_n
    if config.mode == "file" and args.key_kind == "passphrase" and (n < 2**14 or n & (n - 1)):
        print("keyd: --scrypt-n must be a power of two >= 16384", file=sys.stderr)
        return 2
    try:
        make_state_dir(config.state_dir)  # before the secret is consumed: refuse early
    except (StateError, OSError) as exc:
        print(f"keyd init: {exc}", file=sys.stderr)
        return 1
    kind = "pin" if config.mode == "pkcs11" else args.key_kind
    what = {"passphrase": "passphrase", "raw": "raw key (64 hex digits)", "pin": "token PIN"}[kind]
    print(f"keyd init: waiting up to {args.wait:.0f} s for the {what} at {config.drop_path}", file=sys.stderr)
    deadline = time.monotonic() + args.wait
    # init runs as root: accept the operator's drop as root or as keyd's user, like serve will.
    drop_uids = config.drop_uids or frozenset(
        {os.geteuid()} | ({hardening.resolve_user(config.user)[0]} if config.user else set())
    )
    while True:
        try:
            fd = open_drop(config.drop_path)
            if fd is not None:
                secret = consume_drop(fd, config.drop_path, allowed_uids=drop_uids)
                break
        except DropRefused as exc:
            print(f"keyd init: drop file refused ({exc.reason.value}); see docs/keyd.md", file=sys.stderr)
            return 1
        if time.monotonic() > deadline:
            print("keyd init: no drop file arrived", file=sys.stderr)
            return 1
        time.sleep(config.poll_interval)
    if kind == "passphrase" and len(secret.rstrip(b"\r\n")) < 16:
        print("keyd init: a passphrase must be at least 16 characters", file=sys.stderr)
        return 1
    scrypt = {"n": n, "r": 8, "p": 1}
    try:
        state, ring = create_state(config, secret, key_kind=kind, scrypt=scrypt)
    except (TokenError, ValueError) as exc:
        print(f"keyd init: {exc}", file=sys.stderr)
        return 1
    close_ring(ring)
    store.save(state)
    if config.user is not None:
        hand_over(config.state_dir, *hardening.resolve_user(config.user))
    print(
        f"keyd init: state created in {config.state_dir} (mode {config.mode}, key version 1)", file=sys.stderr
    )
    return 0


def _remote(config: Config, args: argparse.Namespace) -> int:
    from keyd.client import KeydAdminClient

    actor = os.environ.get("SUDO_USER") or getpass.getuser()
    actor = "".join(c for c in actor if c.isalnum() or c in "._-")[:64] or "operator"
    with KeydAdminClient(config.socket, timeout=10.0) as client:
        try:
            if args.command == "seal":
                status = client.seal(actor=actor)
            elif args.command == "rotate":
                status = client.rotate(actor=actor)
            elif args.command == "retire":
                status = client.retire(args.min_version, actor=actor)
            else:
                status = client.status()
        except Unavailable as exc:
            print(f"keyd: unavailable: {exc}", file=sys.stderr)
            return EXIT_UNREACHABLE
        except KeydError as exc:
            print(f"keyd: {exc.code.value}: {exc.reason or exc}", file=sys.stderr)
            return EXIT_FAILED
    if args.command == "versions":
        print("version  encryptions  state")
        for v, count in sorted(status.versions.items()):
            mark = (
                "current"
                if v == status.key_version
                else "retired"
                if v < (status.min_decrypt_version or 0)
                else ""
            )
            print(f"{v:>7}  {count:>11}  {mark}")
        return 0
    _print_status(status)
    if args.command == "status":
        return EXIT_SEALED if status.sealed else EXIT_UNSEALED
    return 0  # seal/rotate/retire: the command was done


def _print_status(status: Status) -> None:
    print(f"sealed: {str(status.sealed).lower()}")
    print(f"mode: {status.mode}")
    print(f"key_version: {status.key_version}")
    print(f"min_decrypt_version: {status.min_decrypt_version}")


def _unseal(config: Config, args: argparse.Namespace) -> int:
    """Prompt (or --stdin), drop, wait until keyd took it, report the state like `status` does."""
    from keyd.client import KeydAdminClient
    from keyd.keysource import wipe
    from keyd.unseal import UnsealError, check_clear, drop_owner, place, read_secret, wait_taken

    # The client's timeout outlasts scrypt: keyd answers status only after an unseal attempt ends.
    with KeydAdminClient(config.socket, timeout=30.0) as client:
        try:
            before = client.status()
            if not before.sealed:
                print("keyd unseal: keyd is already unsealed; nothing was asked", file=sys.stderr)
                _print_status(before)
                return EXIT_UNSEALED
            check_clear(config)  # before the operator types anything
            owner = drop_owner(config)
            what = "token PIN" if before.mode == "pkcs11" else "passphrase or raw key"
            secret = read_secret(f"keyd unseal: {what} (not shown): ", from_stdin=args.stdin)
            try:
                ident = place(secret, config, owner)
            finally:
                wipe(secret)
            wait_taken(config.drop_path, ident, args.wait)
            status = _settled(client)
        except UnsealError as exc:
            print(f"keyd unseal: {exc}", file=sys.stderr)
            return EXIT_USAGE if exc.usage else EXIT_FAILED
        except Unavailable as exc:
            print(f"keyd unseal: keyd is unreachable: {exc}", file=sys.stderr)
            return EXIT_UNREACHABLE
        except KeydError as exc:
            print(f"keyd unseal: {exc.code.value}: {exc.reason or exc}", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt:
            print("\nkeyd unseal: aborted; no drop file left behind", file=sys.stderr)
            return EXIT_FAILED
    _print_status(status)
    if status.sealed:
        print(
            "keyd unseal: keyd took the secret and stays sealed: its wrong_key event says why",
            file=sys.stderr,
        )
        return EXIT_SEALED
    return EXIT_UNSEALED


def _settled(client: KeydAdminClient) -> Status:
    """keyd's state once it has tried the secret it took.

    keyd deletes the drop file a moment before it takes its barrier lock to try the secret, and
    `status` waits for that lock: a status asked in that moment may still say sealed. So a sealed
    answer is asked again for a second before it is believed (a wrong key costs that second).
    """
    deadline = time.monotonic() + 1.0
    while True:
        status: Status = client.status()
        if not status.sealed or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s keyd[%(process)d] %(levelname)s %(message)s")
    try:
        config = _config(args)
    except ConfigError as exc:
        print(f"keyd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "serve":
        from keyd.server import serve
        from keyd.state import StateError

        try:
            return serve(config)
        except (StateError, OSError, ValueError) as exc:
            print(f"keyd: cannot serve: {exc}", file=sys.stderr)
            return 1
    if args.command == "init":
        return _init(config, args)
    if args.command == "unseal":
        return _unseal(config, args)
    try:
        return _remote(config, args)
    except BrokenPipeError:
        # `keyd status | head -1`: the reader left. Python's documented remedy: point stdout at
        # /dev/null so the interpreter's final flush does not raise again, and exit non-zero.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
