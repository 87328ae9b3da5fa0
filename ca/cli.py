"""`python -m ca COMMAND`: the admin's interface (easy-rsa/step-ca style: one command per task).

Secrets never come from argv or the environment: passphrases are prompted for, or read from a
private file named by --passphrase-file / --root-passphrase-file (for the CRL timer and the demo).
Exit codes: 0 done; 1 refused, nothing changed; 2 usage error; 3 done, but a follow-up step
(web app unbind, Apache reload, root CRL renewal) needs the admin; 4 an I/O error (disk full...).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from rich.console import Console
from rich.table import Table

from ca import crl_push, pki
from ca.authority import Authority, Clock, utcnow, validate_host, validate_name
from ca.binding import Binder
from ca.config import Config
from ca.errors import CAError, FollowUpFailed
from ca.fsutil import create_exclusive
from ca.index import LEAF_REASONS, Entry, Profile, Reason
from ca.oplog import Event, OpsLog
from ca.passwords import check_strength, generate_password, read_secret_file


@dataclass
class Deps:
    """What tests replace: the clock and the web app binder (None = the real subprocess binder)."""

    clock: Clock = utcnow
    binder: Binder | None = None
    # Filled in by the group callback.
    options: dict[str, Path | None] = field(default_factory=dict)


class Refused(click.ClickException):
    """A one-line `Error: ...` on stderr; each subclass has one of the exit codes in the docstring above."""

    exit_code = 1


class UsageFailure(Refused):
    exit_code = 2


class FollowUpNeeded(Refused):
    exit_code = 3


class IOFailure(Refused):
    exit_code = 4


_BY_EXIT_CODE = {cls.exit_code: cls for cls in (Refused, UsageFailure, FollowUpNeeded, IOFailure)}


def _passphrase_source(opts: dict[str, Path | None], *, new: frozenset[str]) -> Callable[[str], bytes]:
    """Ask for the root/issuing CA passphrase: from its file if given, else a hidden prompt.

    Passphrases named in `new` are being set: asked twice and checked for strength. Each is asked
    for at most once per run.
    """
    cache: dict[str, bytes] = {}

    def get(which: str) -> bytes:
        if which not in cache:
            cache[which] = _ask(which)
        return cache[which]

    def _ask(which: str) -> bytes:
        is_new = which in new
        path = opts.get(f"{which}_file")
        what = f"{which} CA passphrase"
        if path is not None:
            secret = read_secret_file(path, what=what)
        else:
            prompt = f"New {what}" if is_new else what.capitalize()
            secret = click.prompt(prompt, hide_input=True, confirmation_prompt=is_new).encode("utf-8")
        if is_new:
            try:
                text = secret.decode("utf-8")
            except UnicodeDecodeError:
                raise CAError(f"the {what} must be UTF-8 text") from None
            check_strength(text, what=what, context=["strongroom", "root", "issuing"])
        return secret

    return get


def _ca_dir(ctx: click.Context) -> Path:
    """--ca-dir, checked here and not by click: `python -m ca COMMAND --help` needs no CA directory."""
    base = ctx.obj.options["ca_dir"]
    if base is None:
        raise UsageFailure("no CA directory: pass --ca-dir DIR or set STRONGROOM_CA_DIR")
    path: Path = base
    return path


def _authority(ctx: click.Context, *, new: frozenset[str] = frozenset()) -> Authority:
    deps: Deps = ctx.obj
    opts = deps.options
    return Authority(
        _ca_dir(ctx),
        passphrases=_passphrase_source(opts, new=new),
        clock=deps.clock,
        binder=deps.binder,
        root_key=opts.get("root_key"),
    )


class CAGroup(click.Group):
    """Turns CAError into a one-line message and its exit code, and logs the refusal."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except CAError as e:
            if e.exit_code == 1:
                _log_refusal(ctx, str(e))
            raise _BY_EXIT_CODE.get(e.exit_code, Refused)(str(e)) from None
        except OSError as e:
            # A disk full or I/O error mid-operation: issue undoes its own steps; anything else may
            # have completed part of its writes (always index first), so send the admin to look.
            raise IOFailure(
                f"I/O failure: {e.strerror or e} ({e.filename or '-'}); check `python -m ca list`, retry"
            ) from None


def _log_refusal(ctx: click.Context, message: str) -> None:
    deps = ctx.obj
    command = ctx.invoked_subcommand or "?"
    when = deps.clock() if isinstance(deps, Deps) else utcnow()
    base = deps.options.get("ca_dir") if isinstance(deps, Deps) else None
    try:
        if base is None:
            raise CAError("no CA directory")
        Authority(base, passphrases=lambda _: b"").log().record(
            Event.REFUSED, when, command=command, why=message
        )
    except (CAError, OSError):
        # The CA directory itself is the problem (missing, unsafe): syslog still gets the refusal.
        OpsLog(None, use_syslog=True).record(Event.REFUSED, when, command=command, why=message)


@click.group(cls=CAGroup)
@click.option(
    "--ca-dir",
    type=click.Path(path_type=Path),
    envvar="STRONGROOM_CA_DIR",
    help="The CA directory (env STRONGROOM_CA_DIR), e.g. /var/lib/strongroom-ca. Required by every command.",
)
@click.option(
    "--passphrase-file",
    "issuing_file",
    type=click.Path(path_type=Path),
    envvar="STRONGROOM_CA_PASSPHRASE_FILE",
    help="File holding the issuing CA passphrase (mode 0600); default: prompt.",
)
@click.option(
    "--root-passphrase-file",
    "root_file",
    type=click.Path(path_type=Path),
    help="File holding the root CA passphrase (mode 0600); default: prompt.",
)
@click.option(
    "--root-key",
    type=click.Path(path_type=Path),
    help="Where the offline root key is mounted (default: CA_DIR/root/root-key.pem).",
)
@click.pass_context
def cli(
    ctx: click.Context,
    ca_dir: Path | None,
    issuing_file: Path | None,
    root_file: Path | None,
    root_key: Path | None,
) -> None:
    """Strongroom's certificate authority: employee, service and server certificates, revocation, CRL.

    \b
    Exit codes: 0 done; 1 refused, nothing changed; 2 usage error; 3 done, but a follow-up step
    (web app unbind, Apache reload, root CRL renewal) needs the admin; 4 an I/O error (disk full...).
    The CA directory and every command: docs/ca.md.
    """
    if not isinstance(ctx.obj, Deps):
        ctx.obj = Deps()
    ctx.obj.options = {
        "ca_dir": ca_dir.absolute() if ca_dir is not None else None,
        "issuing_file": issuing_file,
        "root_file": root_file,
        "root_key": root_key,
    }


def _warn_root_online(auth: Authority) -> None:
    if auth.root_key_online():
        click.echo(
            f"warning: the root CA key is still at {auth.layout.root_key}: move it offline (docs/ca.md)",
            err=True,
        )


@cli.command()
@click.option("--organization", default="Strongroom", show_default=True, help="O= in every subject.")
@click.option("--reload-command", default="", help='Run after each CRL update, e.g. "apache2ctl graceful".')
@click.option("--no-bind", is_flag=True, help="Do not bind employee certificates in the web app (demo only).")
@click.option("--employee-days", type=click.IntRange(1, 1095), default=90, show_default=True)
@click.option("--crl-days", type=click.IntRange(2, 365), default=7, show_default=True)
@click.pass_context
def init(
    ctx: click.Context,
    organization: str,
    reload_command: str,
    no_bind: bool,
    employee_days: int,
    crl_days: int,
) -> None:
    """Create the root CA and the issuing CA (asks for two new passphrases)."""
    auth = _authority(ctx, new=frozenset({"root", "issuing"}))
    config = Config(
        organization=organization,
        reload_command=shlex.split(reload_command),
        bind=not no_bind,
        employee_days=employee_days,
        crl_days=crl_days,
    )
    auth.init(config)
    layout = auth.layout
    click.echo(f"created the CA in {layout.base}")
    click.echo(f"  Apache SSLCACertificateFile: {layout.chain}")
    click.echo(f"  Apache SSLCARevocationFile:  {layout.crl}  (with SSLCARevocationCheck chain)")
    click.echo(f"NOW move the root key {layout.root_key} to offline media and delete it here (docs/ca.md).")


def _bundle_delivery(
    out: Path, password: list[bytes], kdf_rounds: int, name: str
) -> Callable[[pki.CAKey, x509.Certificate, x509.Certificate], Callable[[], None]]:
    def deliver(key: pki.CAKey, cert: x509.Certificate, issuing: x509.Certificate) -> Callable[[], None]:
        bundle = pki.pkcs12_bundle(name, key, cert, [issuing], password[0], kdf_rounds=kdf_rounds)
        create_exclusive(out, bundle)
        return out.unlink

    return deliver


def _issue_bundle(
    ctx: click.Context,
    profile: Profile,
    name: str,
    out: Path | None,
    *,
    replace: bool,
    days: int | None,
    ask_password: bool,
    bind: bool,
) -> None:
    _ca_dir(ctx)
    validate_name(name)
    out = out or Path(f"{name}.p12")
    if out.exists() or out.is_symlink():
        raise CAError(f"{out} already exists: refusing to overwrite it")
    if not out.absolute().parent.is_dir():
        raise CAError(f"{out.absolute().parent} does not exist")
    auth = _authority(ctx)
    cfg = auth.config
    password: list[bytes] = []
    generated: list[str] = []

    def choose_password() -> None:  # runs once the request is known to be valid
        if ask_password:
            typed = click.prompt(f"Password for {name}'s bundle", hide_input=True, confirmation_prompt=True)
            check_strength(typed, what="bundle password", context=[name, "strongroom"])
            password.append(typed.encode("utf-8"))
        else:
            generated.append(generate_password())
            password.append(generated[0].encode("utf-8"))

    if profile is Profile.EMPLOYEE and not (bind and cfg.bind):
        why = "--no-bind" if not bind else "bind = false in config.toml"
        click.echo(f"warning: not bound in the web app ({why}): the web app will not accept it", err=True)
    issued = auth.issue(
        profile,
        name,
        deliver=_bundle_delivery(out, password, cfg.pkcs12_kdf_rounds, name),
        bind=bind and cfg.bind,
        replace_existing=replace,
        days=days,
        check=choose_password,
    )
    e = issued.entry
    click.echo(
        f"issued {profile} certificate for {name}: serial {e.serial}, expires {e.not_after:%Y-%m-%d %H:%M}"
    )
    click.echo(f"  SHA-256 fingerprint: {e.fingerprint}" + ("  (bound in the web app)" if e.bound else ""))
    if issued.replaced:
        click.echo(f"  replaced (revoked as superseded): serial {issued.replaced.serial}")
    click.echo(f"  bundle: {out}")
    if generated:
        click.echo("")
        click.echo(f"  bundle password (shown ONCE, hand it over separately from the bundle): {generated[0]}")
        click.echo("")
    if issued.problem:
        raise FollowUpFailed(f"issued {name} (serial {e.serial}), but {issued.problem}")


@cli.command()
@click.argument("name")
@click.option(
    "--out", type=click.Path(path_type=Path), help="Where to write the PKCS#12 bundle [./NAME.p12]."
)
@click.option("--replace", is_flag=True, help="Renew: revoke NAME's current certificate as superseded.")
@click.option("--days", type=click.IntRange(1, 1095), help="Lifetime [config employee_days].")
@click.option("--ask-password", is_flag=True, help="Type the bundle password instead of generating one.")
@click.option("--no-bind", is_flag=True, help="Do not bind in the web app (only if it is not deployed).")
@click.pass_context
def issue(
    ctx: click.Context,
    name: str,
    out: Path | None,
    replace: bool,
    days: int | None,
    ask_password: bool,
    no_bind: bool,
) -> None:
    """Issue an employee certificate (clientAuth) for web app user NAME, as a PKCS#12 bundle."""
    _issue_bundle(
        ctx,
        Profile.EMPLOYEE,
        name,
        out,
        replace=replace,
        days=days,
        ask_password=ask_password,
        bind=not no_bind,
    )


@cli.command()
@click.argument("name")
@click.option(
    "--out", type=click.Path(path_type=Path), help="Where to write the PKCS#12 bundle [./NAME.p12]."
)
@click.option("--replace", is_flag=True, help="Renew: revoke NAME's current certificate as superseded.")
@click.option("--days", type=click.IntRange(1, 1095), help="Lifetime [config service_days].")
@click.option("--ask-password", is_flag=True, help="Type the bundle password instead of generating one.")
@click.pass_context
def service(
    ctx: click.Context, name: str, out: Path | None, replace: bool, days: int | None, ask_password: bool
) -> None:
    """Issue a machine-client certificate (e.g. the CRM): OU=Services, its own policy OID, not bound."""
    _issue_bundle(
        ctx, Profile.SERVICE, name, out, replace=replace, days=days, ask_password=ask_password, bind=False
    )


@cli.command()
@click.argument("hosts", nargs=-1, required=True)
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("."), show_default=True)
@click.option("--replace", is_flag=True, help="Renew: revoke the current certificate for the first host.")
@click.option("--days", type=click.IntRange(1, 1095), help="Lifetime [config server_days].")
@click.pass_context
def server(
    ctx: click.Context, hosts: tuple[str, ...], out_dir: Path, replace: bool, days: int | None
) -> None:
    """Issue a TLS server certificate (serverAuth, SAN = HOSTS) for testing and the demo.

    Writes HOST.key.pem (unencrypted, mode 0600, for Apache) and HOST.crt.pem (certificate + issuing CA).
    """
    _ca_dir(ctx)
    names = [validate_host(h) for h in hosts]
    key_path, cert_path = out_dir / f"{names[0]}.key.pem", out_dir / f"{names[0]}.crt.pem"
    for p in (key_path, cert_path):
        if p.exists() or p.is_symlink():
            raise CAError(f"{p} already exists: refusing to overwrite it")
    if not out_dir.is_dir():
        raise CAError(f"{out_dir} does not exist")
    auth = _authority(ctx)

    def deliver(key: pki.CAKey, cert: x509.Certificate, issuing: x509.Certificate) -> Callable[[], None]:
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        create_exclusive(key_path, key_pem)
        try:
            create_exclusive(cert_path, pki.pem(cert) + pki.pem(issuing))
        except BaseException:
            key_path.unlink()
            raise

        def undo() -> None:
            key_path.unlink()
            cert_path.unlink()

        return undo

    issued = auth.issue(
        Profile.SERVER,
        names[0],
        deliver=deliver,
        bind=False,
        replace_existing=replace,
        days=days,
        hosts=names,
    )
    e = issued.entry
    click.echo(
        f"issued server certificate for {', '.join(names)}: serial {e.serial}, expires {e.not_after:%Y-%m-%d}"
    )
    click.echo(f"  SSLCertificateFile {cert_path}")
    click.echo(f"  SSLCertificateKeyFile {key_path}")
    if issued.problem:
        raise FollowUpFailed(f"issued {names[0]} (serial {e.serial}), but {issued.problem}")


@cli.command()
@click.argument("target")
@click.option(
    "--reason",
    type=click.Choice([r.value for r in LEAF_REASONS]),
    required=True,
    help="affiliationChanged when someone leaves; keyCompromise if the bundle or its password leaked.",
)
@click.pass_context
def revoke(ctx: click.Context, target: str, reason: str) -> None:
    """Revoke NAME's valid certificate (or SERIAL): CRL at once, Apache reload, web app unbind."""
    auth = _authority(ctx)
    done = auth.revoke(target, Reason(reason))
    click.echo(f"revoked {done.entry.name}'s certificate {done.entry.serial} ({reason}); CRL published")


@cli.command()
@click.argument("target")
@click.pass_context
def unbind(ctx: click.Context, target: str) -> None:
    """Retry the web app unbind of a revoked certificate (after the web app was down)."""
    entry = _authority(ctx).retry_unbind(target)
    click.echo(f"unbound {entry.name}'s certificate {entry.serial} in the web app")


@cli.command()
@click.option("--if-due", is_flag=True, help="Only when the CRL is due for refresh (for the timer).")
@click.pass_context
def crl(ctx: click.Context, if_due: bool) -> None:
    """Re-sign and publish the issuing CA's CRL, then run the reload hook."""
    auth = _authority(ctx)
    regenerated = auth.crl(if_due=if_due)
    _, next_update, _ = auth.crl_status()
    verb = "published a new CRL" if regenerated else "CRL not due yet"
    click.echo(f"{verb}; it is valid until {next_update:%Y-%m-%d %H:%M} UTC" if next_update else verb)


@cli.command("push-crl")
@click.pass_context
def push_crl(ctx: click.Context) -> None:
    """Send publish/crl.pem to every web node in crl_nodes (make it the reload hook; docs/ca.md)."""
    # No CA lock: the hook runs while `revoke` or `crl` holds it, and this only reads the published file.
    auth = _authority(ctx)
    nodes = auth.config.crl_nodes
    if not nodes:
        raise CAError("no web nodes: add them to crl_nodes in config.toml (docs/ca.md, Several web nodes)")
    try:
        crl = auth.layout.crl.read_bytes()
    except FileNotFoundError:
        raise CAError(f"{auth.layout.crl} is missing: run `python -m ca crl` first") from None
    outcomes = crl_push.push(crl, nodes)
    for o in outcomes:
        result = f"FAILED: {o.problem}" if o.problem else "CRL installed, Apache reloaded"
        click.echo(f"{o.label}: {result}")
    if problem := crl_push.summary(outcomes):
        raise FollowUpFailed(problem)


@cli.command("root-crl")
@click.pass_context
def root_crl(ctx: click.Context) -> None:
    """Re-sign the root CA's CRL with the offline root key (yearly; `crl` warns 60 days ahead)."""
    auth = _authority(ctx)
    auth.root_crl()
    _, _, root_next = auth.crl_status()
    click.echo(f"published a new root CRL, valid until {root_next:%Y-%m-%d} UTC" if root_next else "done")


@cli.command("new-issuing")
@click.option(
    "--reason",
    type=click.Choice(
        [Reason.SUPERSEDED.value, Reason.CA_COMPROMISE.value, Reason.CESSATION_OF_OPERATION.value]
    ),
    required=True,
    help="superseded for a planned rotation; cACompromise if the issuing key may have leaked.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def new_issuing(ctx: click.Context, reason: str, yes: bool) -> None:
    """Replace the issuing CA (needs the offline root key). Revokes EVERY certificate it signed."""
    auth = _authority(ctx, new=frozenset({"issuing"}))
    now = ctx.obj.clock()
    valid = [e for e in auth.load_index().entries if e.state(now) == "valid"]
    if not yes:
        click.confirm(
            f"This revokes all {len(valid)} valid certificates (employees, services, servers); "
            "everyone needs a new one. Continue?",
            abort=True,
        )
    new, revoked = auth.new_issuing(Reason(reason))
    click.echo(f"new issuing CA: serial {new.serial_number:x}, expires {new.not_valid_after_utc:%Y-%m-%d}")
    click.echo(f"revoked {len(revoked)} certificate(s): re-issue them (`python -m ca list --all`)")


def _state(entry: Entry, now: datetime) -> str:
    state = entry.state(now)
    if state == "revoked" and entry.bound:
        state += " (web app binding still active: run `ca unbind`)"
    return state


@cli.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include revoked and expired certificates.")
@click.pass_context
def list_(ctx: click.Context, show_all: bool) -> None:
    """Who holds which certificate, its state and expiry."""
    auth = _authority(ctx)
    now = ctx.obj.clock()
    index = auth.load_index()
    _warn_root_online(auth)
    table = Table("name", "profile", "state", "expires (UTC)", "serial", "bound")
    for e in sorted(index.entries, key=lambda e: (e.name, e.not_before)):
        if show_all or e.state(now) == "valid":
            table.add_row(
                e.name,
                str(e.profile),
                _state(e, now),
                f"{e.not_after:%Y-%m-%d %H:%M}",
                e.serial,
                "yes" if e.bound else "",
            )
    Console(width=200).print(table)


@cli.command()
@click.argument("target")
@click.pass_context
def show(ctx: click.Context, target: str) -> None:
    """Details of NAME's current certificate (or the one with SERIAL)."""
    auth = _authority(ctx)
    now = ctx.obj.clock()
    e = auth.find(auth.load_index(), target, now)
    cert = x509.load_pem_x509_certificate(auth.layout.cert_file(e.serial).read_bytes())
    rows = [
        ("name", e.name),
        ("profile", str(e.profile)),
        ("subject", cert.subject.rfc4514_string()),
        ("serial", e.serial),
        ("state", _state(e, now)),
        ("valid from", f"{e.not_before:%Y-%m-%d %H:%M} UTC"),
        ("expires", f"{e.not_after:%Y-%m-%d %H:%M} UTC"),
        ("SHA-256", e.fingerprint),
        ("bound in web app", "yes" if e.bound else "no"),
    ]
    if e.revoked_at:
        rows.append(("revoked", f"{e.revoked_at:%Y-%m-%d %H:%M} UTC ({e.reason})"))
    for label, value in rows:
        click.echo(f"{label:>17}: {value}")


def main() -> None:
    cli(prog_name="python -m ca")
