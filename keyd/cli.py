"""`python -m keyd`: the operator's commands."""

from __future__ import annotations

import contextlib
import functools
import getpass
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

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
     Split knowledge: --key-kind shares --shares 3 --threshold 2 --custodian A --custodian B
     --custodian C makes the key itself and shows each custodian their share once; at every boot
     any 2 of them each run step 3 with their own share.

Every boot:
  2. python -m keyd serve --config /etc/strongroom/keyd.toml     (starts sealed)
  3. python -m keyd unseal --config /etc/strongroom/keyd.toml    (type the passphrase, raw key or
     token PIN: not echoed; written to the drop file as keyd's user, taken by keyd, state printed)
     By hand, as keyd's user: umask 077; cat > /dev/shm/ekey-tmp  then  mv /dev/shm/ekey-tmp /dev/shm/ekey
  4. python -m keyd status                   (sealed: false)

Exit codes of status and unseal: 0 unsealed, 3 sealed, 4 keyd unreachable, 1 refused or failed,
2 usage or config error. unseal with a custodian share: 0 accepted (keyd may wait for more), 1 refused.

Key rotation: `rotate`, have the web app rewrap every record, check `versions`, then `retire --min-version N`.
Re-keying (a new operator secret, or file to PKCS#11): `rekey --to ...`, rewrap, retire, `retire-secret`
(docs/key-rotation.md). Until `retire-secret`, every boot needs the old secret, then the new one.
Every refusal and what it means: docs/keyd.md.
"""

# Exit codes (docs/keyd.md): scripts test `keyd status` by its code, not by parsing its output.
EXIT_UNSEALED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SEALED = 3
EXIT_UNREACHABLE = 4


class Refused(click.ClickException):
    """One line `Error: ...` on stderr and exit 1; the subclasses exit with the other codes above."""

    exit_code = EXIT_FAILED


class UsageFailure(Refused):
    exit_code = EXIT_USAGE


class StillSealed(Refused):
    exit_code = EXIT_SEALED


class Unreachable(Refused):
    exit_code = EXIT_UNREACHABLE


# Options shared by every command; each overrides the same key of the config file. Given after the
# command (`python -m keyd status --config FILE`), as the units, the runbook and the tests write them.
_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--socket", "socket", {"help": "The Unix socket (its directory is created 0750)."}),
    (
        "--state-dir",
        "state_dir",
        {"help": "keyd's state directory (state.json, budgets.json, events.jsonl)."},
    ),
    (
        "--drop-path",
        "drop_path",
        {"help": "Where the operator drops the key or PIN (default /dev/shm/ekey)."},
    ),
    ("--allow-uid", "allowed_uids", {"type": int, "multiple": True, "help": "A uid served (repeatable)."}),
    (
        "--admin-uid",
        "admin_uids",
        {"type": int, "multiple": True, "help": "A uid that may seal/rotate/retire."},
    ),
    ("--drop-uid", "drop_uids", {"type": int, "multiple": True, "help": "An owner a drop file may have."}),
    ("--socket-group", "socket_group", {"help": "The web app's group: may enter the socket directory."}),
    ("--user", "user", {"help": "Drop root privileges to this user after binding the socket."}),
    ("--mode", "mode", {"type": click.Choice(["file", "pkcs11"]), "help": "Key source (default file)."}),
    ("--pkcs11-module", "pkcs11_module", {"help": "PKCS#11 library (default SoftHSM2)."}),
    ("--token-label", "token_label", {"help": "Label of the PKCS#11 token."}),
    ("--poll-interval", "poll_interval", {"type": float, "help": "Seconds between drop-file checks."}),
]


def _common(f: Callable[..., None]) -> Callable[..., None]:
    """The config file and the flags above, on a command; the callback gets the loaded Config."""
    options = [
        click.option(
            "--config", type=click.Path(path_type=Path), help="A TOML config file (see keyd/config.py)."
        ),
        *(click.option(flag, dest, default=None, **kwargs) for flag, dest, kwargs in _FLAGS),
        click.option(
            "--budget",
            multiple=True,
            metavar="SCOPE.WINDOW=N",
            help="A decrypt budget, e.g. employee.minute=30 or global.day=20000 (repeatable).",
        ),
        click.option("--no-syslog", is_flag=True, help="Events to the spool and stderr only."),
    ]

    @functools.wraps(f)
    def wrapper(**kwargs: Any) -> None:
        config = _config(kwargs)
        f(config, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def _config(kwargs: dict[str, Any]) -> Config:
    """Pops the common options from `kwargs` (the rest belong to the command) and loads the config."""
    overrides: dict[str, Any] = {}
    for _, dest, _ in _FLAGS:
        value = kwargs.pop(dest)
        overrides[dest] = (list(value) or None) if isinstance(value, tuple) else value
    path, budget_specs, no_syslog = kwargs.pop("config"), kwargs.pop("budget"), kwargs.pop("no_syslog")
    try:
        if budget_specs:
            budgets: dict[str, dict[str, int]] = {}
            for spec in budget_specs:
                try:
                    key, value = spec.split("=", 1)
                    scope, window = key.split(".", 1)
                    budgets.setdefault(scope, {})[window] = int(value)
                except ValueError:
                    raise ConfigError(f"bad --budget {spec!r}: use SCOPE.WINDOW=N") from None
            overrides["budgets"] = budgets
        if no_syslog:
            overrides["syslog"] = False
        return load(path, overrides)
    except ConfigError as exc:
        raise UsageFailure(f"{exc} — fix the flag or the config file (keys: keyd/config.py)") from None


class _KeydGroup(click.Group):
    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """DESCRIPTION as written: its numbered steps and commands must not be re-wrapped."""
        formatter.write_paragraph()
        with formatter.indentation():
            for line in DESCRIPTION.splitlines():
                formatter.write(f"{'':>{formatter.current_indent}}{line}\n" if line else "\n")


@click.group(cls=_KeydGroup, help=DESCRIPTION.split("\n")[0])
def cli() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s keyd[%(process)d] %(levelname)s %(message)s")


@cli.command()
@_common
def serve(config: Config) -> None:
    """Run the daemon (starts sealed, waits for the drop file)."""
    from keyd.server import serve as run
    from keyd.state import StateError

    try:
        code = run(config)
    except (StateError, OSError, ValueError) as exc:
        raise Refused(f"cannot serve: {exc}") from None
    sys.exit(code)


@cli.command()
@_common
@click.option(
    "--key-kind",
    type=click.Choice(["passphrase", "raw", "shares"]),
    default="passphrase",
    help="File mode: a long passphrase (scrypt), a raw key as 64 hex digits, or custodian shares "
    "(keyd makes the key and splits it: --shares, --threshold, --custodian).",
)
@click.option("--scrypt-n", type=int, default=2**17, help="scrypt cost N (power of two, >= 2**14).")
@click.option("--wait", type=float, default=600.0, help="Seconds to wait for the drop file.")
@click.option("--shares", "share_count", type=int, help="Shares: how many custodians (N, at most 16).")
@click.option("--threshold", type=int, help="Shares: how many of them unseal keyd (M, at least 2).")
@click.option(
    "--custodian", "custodians", multiple=True, help="Shares: a custodian's name, one per share, in order."
)
def init(
    config: Config,
    key_kind: str,
    scrypt_n: int,
    wait: float,
    share_count: int | None,
    threshold: int | None,
    custodians: tuple[str, ...],
) -> None:
    """Create the state and key version 1 from a dropped key, or split a new key among custodians."""
    if key_kind == "shares":
        _init_shares(config, count=share_count, threshold=threshold, custodians=list(custodians))
        return
    if share_count is not None or threshold is not None or custodians:
        raise UsageFailure("--shares, --threshold and --custodian go with --key-kind shares")
    _init(config, key_kind=key_kind, n=scrypt_n, wait=wait)


@cli.command()
@_common
def status(config: Config) -> None:
    """Sealed or not, key versions (exit 0 unsealed, 3 sealed, 4 unreachable)."""
    _remote(config, "status")


@cli.command()
@_common
@click.option("--stdin", is_flag=True, help="Read the secret from a pipe (scripts); refused on a terminal.")
@click.option("--wait", type=float, default=10.0, help="Seconds keyd has to take the drop file.")
def unseal(config: Config, stdin: bool, wait: float) -> None:
    """Type the key or PIN (no echo) into the drop file, wait for keyd (exit codes as status)."""
    sys.exit(_unseal(config, from_stdin=stdin, wait=wait))


@cli.command()
@_common
def versions(config: Config) -> None:
    """Encryptions per key version."""
    _remote(config, "versions")


@cli.command()
@_common
def seal(config: Config) -> None:
    """Drop the key from keyd's memory."""
    _remote(config, "seal")


@cli.command()
@_common
def rotate(config: Config) -> None:
    """Add a new key version and encrypt under it from now on."""
    _remote(config, "rotate")


@cli.command()
@_common
@click.option("--min-version", type=int, required=True, help="The oldest version still decrypted.")
def retire(config: Config, min_version: int) -> None:
    """Refuse decrypts under versions below N (--min-version)."""
    _remote(config, "retire", min_version=min_version)


@cli.command()
@_common
@click.option(
    "--to",
    "to",
    type=click.Choice(["passphrase", "raw", "pkcs11"]),
    required=True,
    help="The new secret: a passphrase (scrypt), a raw key (64 hex digits), or a PKCS#11 token's PIN.",
)
@click.option("--new-token-label", default="", help="With --to pkcs11: the label of the new token.")
@click.option("--scrypt-n", type=int, default=2**17, help="With --to passphrase: scrypt cost N.")
@click.option(
    "--stdin", is_flag=True, help="Read the new secret from a pipe (scripts); refused on a terminal."
)
@click.option("--wait", type=float, default=10.0, help="Seconds keyd has to take the drop file.")
def rekey(config: Config, to: str, new_token_label: str, scrypt_n: int, stdin: bool, wait: float) -> None:
    """Replace the operator secret: a new secret generation and key version (keyd unsealed)."""
    from keyd.rekey import rekey as run

    run(config, to=to, token_label=new_token_label, scrypt_n=scrypt_n, from_stdin=stdin, wait=wait)


@cli.command("retire-secret")
@_common
def retire_secret(config: Config) -> None:
    """Forget the old secret once every version under it is retired (after a rekey and rewrap)."""
    _remote(config, "retire-secret")


def _init(config: Config, *, key_kind: str, n: int, wait: float) -> None:
    from keyd import hardening
    from keyd.keyring import close_ring, create_state
    from keyd.keysource import DropRefused, TokenError, consume_drop, open_drop
    from keyd.state import StateError, StateStore, hand_over, make_state_dir

    store = StateStore(config.state_dir)
    if store.exists():
        raise Refused(
            f"{store.path} exists; refusing to overwrite a key state — init is for the first boot only: "
            "start keyd with `serve` and unseal it"
        )
    if config.mode == "file" and key_kind == "passphrase" and (n < 2**14 or n & (n - 1)):
        raise UsageFailure("--scrypt-n must be a power of two >= 16384 — leave it out for the default")
    try:
        make_state_dir(config.state_dir)  # before the secret is consumed: refuse early
    except (StateError, OSError) as exc:
        raise Refused(f"init: {exc}") from None
    kind = "pin" if config.mode == "pkcs11" else key_kind
    what = {"passphrase": "passphrase", "raw": "raw key (64 hex digits)", "pin": "token PIN"}[kind]
    click.echo(f"keyd init: waiting up to {wait:.0f} s for the {what} at {config.drop_path}", err=True)
    deadline = time.monotonic() + wait
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
            raise Refused(
                f"init: drop file refused ({exc.reason.value}) — what it means: docs/keyd.md, "
                "'Refusals and what they mean'; drop it again and rerun init"
            ) from None
        if time.monotonic() > deadline:
            raise Refused(
                f"init: no drop file arrived at {config.drop_path} within {wait:.0f} s — rerun init, then "
                "drop the key as docs/runbook.md 1.3 shows (or give --wait more seconds)"
            )
        time.sleep(config.poll_interval)
    if kind == "passphrase" and len(secret.rstrip(b"\r\n")) < 16:
        raise Refused("init: a passphrase must be at least 16 characters — rerun init and drop a longer one")
    scrypt = {"n": n, "r": 8, "p": 1}
    try:
        state, ring = create_state(config, secret, key_kind=kind, scrypt=scrypt)
    except (TokenError, ValueError) as exc:
        raise Refused(f"init: {exc}") from None
    close_ring(ring)
    store.save(state)
    if config.user is not None:
        hand_over(config.state_dir, *hardening.resolve_user(config.user))
    click.echo(
        f"keyd init: state created in {config.state_dir} (mode {config.mode}, key version 1)", err=True
    )


def _init_shares(config: Config, *, count: int | None, threshold: int | None, custodians: list[str]) -> None:
    """A random master, split M-of-N, each share handed to its custodian and acknowledged; only the
    shares' verifiers and the custodians' names are saved. Events record who split and who took which."""
    from keyd import hardening, shares
    from keyd.events import Event, SpoolSink
    from keyd.handout import HandoutAborted, check_custodians, hand_out
    from keyd.keyring import close_ring, create_state
    from keyd.keysource import wipe
    from keyd.state import StateError, StateStore, hand_over, make_state_dir
    from keyd.unseal import operator_login

    store = StateStore(config.state_dir)
    if store.exists():
        raise Refused(
            f"{store.path} exists; refusing to overwrite a key state — init is for the first boot only: "
            "start keyd with `serve` and unseal it"
        )
    if config.mode != "file":
        raise UsageFailure("--key-kind shares is for file mode — a PKCS#11 token keeps its own key")
    if count is None or threshold is None:
        raise UsageFailure(
            "--key-kind shares needs --shares N and --threshold M — e.g. --shares 3 --threshold 2"
        )
    try:
        shares.check_parameters(count, threshold)
        check_custodians(custodians, count)
    except (ValueError, HandoutAborted) as exc:
        raise UsageFailure(f"{exc} — fix the flags") from None
    try:
        make_state_dir(config.state_dir)
    except (StateError, OSError) as exc:
        raise Refused(f"init: {exc}") from None
    events = SpoolSink(config.state_dir / "events.jsonl")
    by: dict[str, str | int] = {"uid": os.getuid(), "login": operator_login()}
    master = bytearray(os.urandom(shares.SECRET_LEN))
    split = shares.split(master, count=count, threshold=threshold)
    try:
        events.emit(Event.SHARES_SPLIT, threshold=threshold, count=count, **by)
        click.echo(f"keyd init: a new key, split into {count} shares; any {threshold} unseal keyd", err=True)
        try:
            hand_out(
                split,
                custodians,
                threshold=threshold,
                acknowledged=lambda i, name: events.emit(
                    Event.SHARE_ACKNOWLEDGED, index=i, custodian=name, **by
                ),
            )
        except HandoutAborted as exc:
            raise Refused(f"init: {exc}; nothing was saved — run init again (all shares are new)") from None
        except KeyboardInterrupt:
            raise Refused("init aborted; nothing was saved — run init again (all shares are new)") from None
        state, ring = create_state(config, bytearray(master), key_kind="shares")
        state.shares = shares.ShareSet.record(split, threshold=threshold, custodians=custodians)
        close_ring(ring)
    finally:
        wipe(master)
        for _, value in split:
            wipe(value)
        events.close()
    store.save(state)
    if config.user is not None:
        hand_over(config.state_dir, *hardening.resolve_user(config.user))
    click.echo(
        f"keyd init: state created in {config.state_dir} (mode file, key version 1, {threshold} of {count} "
        "custodian shares)",
        err=True,
    )


# What to do about a refusal: the runbook's table, one row per code and reason.
_REFUSALS = "what to do: docs/runbook.md, 'When keyd refuses'"


def _unreachable(exc: Unavailable) -> Unreachable:
    return Unreachable(
        f"keyd is unreachable (unavailable: {exc}) — is it running, and are --socket/--config right? "
        f"({_REFUSALS})"
    )


def _remote(config: Config, command: str, *, min_version: int = 0) -> None:
    """status, versions, seal, rotate, retire: one request to keyd, its answer printed."""
    from keyd.client import KeydAdminClient

    actor = os.environ.get("SUDO_USER") or getpass.getuser()
    actor = "".join(c for c in actor if c.isalnum() or c in "._-")[:64] or "operator"
    with KeydAdminClient(config.socket, timeout=10.0) as client:
        try:
            if command == "seal":
                status = client.seal(actor=actor)
            elif command == "rotate":
                status = client.rotate(actor=actor)
            elif command == "retire":
                status = client.retire(min_version, actor=actor)
            elif command == "retire-secret":
                status = client.retire_secret(actor=actor)
            else:
                status = client.status()
        except Unavailable as exc:
            raise _unreachable(exc) from None
        except KeydError as exc:
            raise Refused(f"keyd refused: {exc.code.value}: {exc.reason or exc} — {_REFUSALS}") from None
    try:
        if command == "versions":
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
            return
        _print_status(status)
    except BrokenPipeError:
        # `keyd status | head -1`: the reader left. Python's documented remedy: point stdout at
        # /dev/null so the interpreter's final flush does not raise again, and exit non-zero.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(EXIT_FAILED)
    if command == "status":
        sys.exit(EXIT_SEALED if status.sealed else EXIT_UNSEALED)
    # seal/rotate/retire: the command was done (exit 0)


def _print_status(status: Status) -> None:
    print(f"sealed: {str(status.sealed).lower()}")
    print(f"mode: {status.mode}")
    print(f"key_version: {status.key_version}")
    print(f"min_decrypt_version: {status.min_decrypt_version}")
    if status.shares is not None and status.sealed:
        print(f"shares: {status.shares.received} of {status.shares.threshold} received")
    if status.generation > 1 or len(status.generations) > 1:
        # After a re-key: which secrets keyd needs, oldest first, and the one it waits for.
        print(f"secret_generation: {status.generation}")
        for g in status.generations:
            versions = ",".join(str(v) for v in g.versions)
            print(f"secret {g.number}: {g.mode} {g.key_kind} (versions {versions})")
        if status.sealed and status.awaiting_generation is not None:
            print(f"waiting_for_secret: {status.awaiting_generation}")


@contextlib.contextmanager
def _drop_refusals(verb: str, hint: str) -> Iterator[None]:
    """How a command that drops a secret for keyd (unseal, rekey) refuses: one line, with the exit code
    its kind documents; `hint` says where to read about keyd's own refusals."""
    from keyd.unseal import UnsealError

    try:
        yield
    except UnsealError as exc:
        raise (UsageFailure if exc.usage else Refused)(f"{verb}: {exc}") from None
    except Unavailable as exc:
        raise _unreachable(exc) from None
    except KeydError as exc:
        raise Refused(f"keyd refused: {exc.code.value}: {exc.reason or exc} — {hint}") from None
    except KeyboardInterrupt:
        click.echo("", err=True)  # the operator's ^C ended the prompt's line
        raise Refused(f"{verb} aborted; no drop file left behind — run {verb} again") from None


def _unseal(config: Config, *, from_stdin: bool, wait: float) -> int:
    """Prompt (or --stdin), drop, wait until keyd took it, report the state like `status` does."""
    from keyd.client import KeydAdminClient
    from keyd.keysource import wipe
    from keyd.unseal import check_clear, drop_owner, place, read_secret, wait_taken

    # The client's timeout outlasts scrypt: keyd answers status only after an unseal attempt ends.
    with KeydAdminClient(config.socket, timeout=30.0) as client, _drop_refusals("unseal", _REFUSALS):
        before = client.status()
        if not before.sealed:
            click.echo("keyd unseal: keyd is already unsealed; nothing was asked", err=True)
            _print_status(before)
            return EXIT_UNSEALED
        check_clear(config)  # before the operator types anything
        owner = drop_owner(config)
        if before.shares is not None:
            return _unseal_share(client, config, before, owner, from_stdin=from_stdin, wait=wait)
        what = "token PIN" if before.mode == "pkcs11" else "passphrase or raw key"
        if len(before.generations) > 1:  # mid re-key: one secret per generation, oldest first
            gen = next(g for g in before.generations if g.number == before.awaiting_generation)
            kind = "token PIN" if gen.mode == "pkcs11" else gen.key_kind
            what = f"{kind} of secret generation {gen.number}"
        secret = read_secret(f"keyd unseal: {what} (not shown): ", from_stdin=from_stdin)
        try:
            ident = place(secret, config, owner)
        finally:
            wipe(secret)
        wait_taken(config.drop_path, ident, wait)
        status = _settled(client)
    _print_status(status)
    if status.sealed and status.awaiting_generation != before.awaiting_generation:
        click.echo(
            f"keyd unseal: secret generation {before.awaiting_generation} accepted; keyd waits for "
            f"generation {status.awaiting_generation}'s secret: run unseal again",
            err=True,
        )
        return EXIT_SEALED
    if status.sealed:
        raise StillSealed(
            "keyd took the secret and stays sealed — its wrong_key event says why; run unseal again"
        )
    return EXIT_UNSEALED


def _unseal_share(
    client: KeydAdminClient,
    config: Config,
    before: Status,
    owner: tuple[int, int],
    *,
    from_stdin: bool,
    wait: float,
) -> int:
    """One custodian's share: checked here, dropped, and judged by keyd. 0 accepted, 1 refused."""
    from keyd.keysource import wipe
    from keyd.unseal import operator_login, place, read_secret, share_delivery, wait_taken

    secret = read_secret("keyd unseal: your custodian share (not shown): ", from_stdin=from_stdin)
    index, content = share_delivery(secret, operator_login())
    try:
        ident = place(content, config, owner)
    finally:
        wipe(content)
    wait_taken(config.drop_path, ident, wait)
    status = _share_settled(client, index)
    _print_status(status)
    if before.shares is not None and index in before.shares.indices:
        raise Refused(f"keyd already held share {index}: the repeat was refused (event share_duplicate)")
    if not status.sealed:
        return EXIT_UNSEALED
    if status.shares is not None and index in status.shares.indices:
        click.echo(
            f"keyd unseal: share {index} accepted: {status.shares.received} of {status.shares.threshold} "
            "shares received; keyd waits for the other custodians",
            err=True,
        )
        return EXIT_UNSEALED
    raise Refused(
        f"keyd refused share {index} (its share_refused event says why) — check the share with its "
        f"custodian and run unseal again ({_REFUSALS})"
    )


def _share_settled(client: KeydAdminClient, index: int) -> Status:
    """keyd's state once it has judged share `index`: unsealed, or holding it, or (after a second) not."""
    deadline = time.monotonic() + 1.0
    while True:
        status: Status = client.status()
        held = status.shares is not None and index in status.shares.indices
        if not status.sealed or held or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


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


def main() -> None:
    cli(prog_name="python -m keyd")
