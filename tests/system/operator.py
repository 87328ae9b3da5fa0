"""What the people of docs/runbook.md and docs/admin-guide.md do on the installed server, as they do it.

- the keyd custodians: the first-boot key ceremony (`keyd init --key-kind shares`) and every later
  unseal (`keyd unseal`, or the drop file by hand), each with their own share,
  with the runbook's commands (run as root inside the container);
- the admin: `deploy/strongroom-flask ...` (flask --app webapp with the web app's settings), the CA on the
  admin's own machine (the test's TestCa on the host), certificates bound in the web app;
- the employee: HTTPS from the employees' network with a client certificate (`Browser`), each
  request made by a process inside that network namespace, the cookies kept by the test.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlencode

from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, pkcs12

from tests.system.container import Container, ContainerError
from tests.system.server import FQDN, Server

OPT = "/opt/strongroom"
PY = f"{OPT}/.venv/bin/python"
KEYD_CONFIG = "/etc/strongroom/keyd.toml"
DROP = "/dev/shm/ekey"


# -- the keyd operator ------------------------------------------------------------------------------


def drop_secret(c: Container, secret: str) -> None:
    """docs/runbook.md 1.3, the fallback by hand: write the drop file as keyd's user under a temporary
    name, rename it (a custodian's file holds just the share's text)."""
    c.run(["runuser", "-u", "strongroom-keyd", "--", "sh", "-c", f"umask 077; cat > {DROP}-tmp"],
          input=secret + "\n")  # fmt: skip
    c.run(["runuser", "-u", "strongroom-keyd", "--", "mv", f"{DROP}-tmp", DROP])


def keyd_status(c: Container) -> subprocess.CompletedProcess[str]:
    """docs/runbook.md 1.4."""
    return c.run(f"cd {OPT} && .venv/bin/python -m keyd status --config {KEYD_CONFIG}", check=False)


def is_sealed(c: Container) -> bool | None:
    """True/False from `keyd status`, None when keyd cannot be reached."""
    status = keyd_status(c)
    found = re.search(r"^sealed: (true|false)$", status.stdout, re.MULTILINE)
    return None if found is None else found.group(1) == "true"


def start_keyd(c: Container, timeout: float = 20) -> None:
    """`systemctl start strongroom-keyd` returns before keyd binds its socket (Type=simple): wait for it."""
    c.run(["systemctl", "start", "strongroom-keyd"])
    deadline = time.monotonic() + timeout
    while is_sealed(c) is None:
        if time.monotonic() > deadline:
            journal = c.journal("strongroom-keyd")[-3000:]
            raise ContainerError(f"keyd did not answer within {timeout:.0f} s:\n{journal}")
        time.sleep(0.2)


def wait_unsealed(c: Container, timeout: float = 30) -> float:
    started = time.monotonic()
    while is_sealed(c) is not False:
        if time.monotonic() - started > timeout:
            raise ContainerError(
                f"keyd still sealed after {timeout:.0f} s:\n{c.journal('strongroom-keyd')[-3000:]}"
            )
        time.sleep(0.25)
    return time.monotonic() - started


# docs/runbook.md 1.0: three custodians, any two of whom unseal.
CUSTODIANS = ("alice", "bob", "carol")
THRESHOLD = 2
# What init prints for each custodian when no terminal is on stdin (keyd/handout.py).
SHARE_LINE = re.compile(r"share (\d+) of (\d+) \(any (\d+) unseal\) for (\S+): (SR1-[0-9A-Z-]+)")
INIT_TIMEOUT = 120


def key_ceremony(c: Container) -> list[str]:
    """First boot with custodian shares (docs/runbook.md 1.0): `keyd init --key-kind shares`, scripted.

    init prints share I on one line and waits for `NAME CHECK` (the share's last group) from its
    custodian before it prints the next; the shares come back in index order (index I is shares[I-1]).
    They live in the test's memory only: never in a file, a log or an error message here.
    """
    flags = " ".join(f"--custodian {name}" for name in CUSTODIANS)
    # `timeout` inside: killing nsenter on the host would leave init waiting on its pipe.
    proc = c.popen(f"cd {OPT} && exec timeout {INIT_TIMEOUT} .venv/bin/python -m keyd init "
                   f"--config {KEYD_CONFIG} --key-kind shares --shares {len(CUSTODIANS)} "
                   f"--threshold {THRESHOLD} {flags}")  # fmt: skip
    assert proc.stdin is not None
    assert proc.stdout is not None
    shares: list[str] = []
    unexpected = ""
    try:
        for name in CUSTODIANS:
            line = proc.stdout.readline()
            found = SHARE_LINE.fullmatch(line.strip())
            if found is None:
                unexpected = re.sub(r"SR1-\S+", "SR1-(withheld)", line.strip())
                break
            index, count, threshold, custodian, share = found.groups()
            got = (int(index), int(count), int(threshold), custodian)  # public: no share in it
            assert got == (len(shares) + 1, len(CUSTODIANS), THRESHOLD, name), got
            shares.append(share)
            proc.stdin.write(f"{name} {share.rsplit('-', 1)[1]}\n")  # the custodian's acknowledgement
            proc.stdin.flush()
        rest, errors = proc.communicate(timeout=INIT_TIMEOUT + 10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0 or len(shares) != len(CUSTODIANS) or "state created" not in errors:
        rest = re.sub(r"SR1-\S+", "SR1-(withheld)", rest)
        raise ContainerError(
            f"keyd init did not finish ({proc.returncode}): {unexpected}{rest}{errors[-2000:]}"
        )
    return shares


def deliver_share(c: Container, share: str) -> subprocess.CompletedProcess[str]:
    """One custodian's turn (docs/runbook.md 1.3, With custodian shares): `keyd unseal --stdin` fed
    their share. Exit 0: accepted (or the M-th: unsealed); 1: refused."""
    done = c.run(f"cd {OPT} && .venv/bin/python -m keyd unseal --config {KEYD_CONFIG} --stdin",
                 input=share + "\n", check=False, timeout=60)  # fmt: skip
    assert share not in done.stdout + done.stderr, "keyd unseal echoed the share"
    return done


def unseal(c: Container, shares: Sequence[str]) -> float:
    """docs/runbook.md 1.2-1.4: start keyd (sealed), then one `keyd unseal --stdin` per custodian
    with their own share; each exits 0, the last with `sealed: false`. The seconds from the first
    custodian's command to that."""
    start_keyd(c)
    started = time.monotonic()
    for turn, share in enumerate(shares, start=1):
        done = deliver_share(c, share)
        if done.returncode != 0:
            raise ContainerError(
                f"keyd unseal (custodian {turn}) exited {done.returncode}: {done.stdout}{done.stderr}"
            )
        if turn < len(shares):
            assert re.search(rf"share \d+ accepted: {turn} of {len(shares)} shares received", done.stderr), (
                done
            )
    assert re.search(r"^sealed: false$", done.stdout, re.MULTILINE), done.stdout
    return time.monotonic() - started


# -- the admin ----------------------------------------------------------------------------------------


def flask(
    c: Container, *args: str, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`flask --app webapp ARGS` as the admin runs it on the server (deploy/strongroom-flask)."""
    return c.run([f"{OPT}/deploy/strongroom-flask", *args], input=input, check=check, timeout=120)


@dataclass(frozen=True)
class Person:
    username: str
    role: str
    password: str
    cert: Path  # PEM certificate (host side, for the client)
    key: Path  # PEM key, unencrypted (host side, test-owned directory)


def add_person(server: Server, work: Path, username: str, role: str) -> Person:
    """The admin guide's steps: the web app user, a certificate from the CA, bound to the user."""
    c = server.container
    password = "Pw-" + secrets.token_urlsafe(18) + "7"  # the policy wants a digit
    flask(c, "users", "add", username, "--role", role, "--password-stdin", input=password + "\n")
    bundle = work / f"{username}.p12"
    issued = server.ca.ca("issue", username, "--out", str(bundle), "--no-bind")
    bundle_password = _bundle_password(issued.stdout + issued.stderr)
    key, cert, _chain = pkcs12.load_key_and_certificates(bundle.read_bytes(), bundle_password.encode())
    assert key is not None
    assert cert is not None
    cert_path, key_path = work / f"{username}.crt.pem", work / f"{username}.key.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.PEM))
    key_path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    key_path.chmod(0o600)
    # A certificate is public; the bind command runs as the web app's user, which cannot read /root.
    c.write_file(f"/var/tmp/{username}.crt.pem", cert_path.read_bytes(), 0o644)
    flask(c, "certs", "bind", username, f"/var/tmp/{username}.crt.pem")
    return Person(username, role, password, cert_path, key_path)


def _bundle_password(output: str) -> str:
    found = re.search(r"password[^:\n]*:\s*(\S+)", output, re.IGNORECASE)
    if found is None:
        raise AssertionError(f"no bundle password in the CA's output: {output[-500:]}")
    return found.group(1)


# -- the employee's browser ------------------------------------------------------------------------

# Runs inside a client namespace (the test's own interpreter): one HTTPS request, the answer as JSON.
_REQUEST = r"""
import http.client, json, socket, ssl, sys
a = json.loads(sys.argv[1])
ctx = ssl.create_default_context(cafile=a["ca"])
if a["cert"]:
    ctx.load_cert_chain(a["cert"], a["key"])
try:
    raw = socket.create_connection((a["ip"], 443), timeout=a["timeout"])
    tls = ctx.wrap_socket(raw, server_hostname=a["name"])
    conn = http.client.HTTPSConnection(a["name"], 443, timeout=a["timeout"])
    conn.sock = tls
    conn.request(a["method"], a["path"], body=a["body"], headers=a["headers"])
    r = conn.getresponse()
    body = r.read().decode("utf-8", "replace")
    print(json.dumps({"status": r.status, "headers": r.getheaders(), "body": body}))
except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
    print(json.dumps({"status": 0, "headers": [], "body": "", "error": type(exc).__name__ + ": " + str(exc)}))
"""


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: str
    error: str = ""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


@dataclass
class Browser:
    """An employee's browser on network `role` (the cookies kept here, each request made over there)."""

    server: Server
    person: Person | None
    role: str = "employees"
    cookies: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, *, form: dict[str, str] | None = None,
                headers: dict[str, str] | None = None, timeout: float = 30) -> Response:  # fmt: skip
        sent = dict(headers or {})
        body = None
        if form is not None:
            body = urlencode(form)
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        args = {
            "ip": self.server.address(self.role), "name": FQDN, "ca": str(self.server.ca.chain),
            "cert": str(self.person.cert) if self.person else "",
            "key": str(self.person.key) if self.person else "",
            "method": method, "path": path, "body": body, "headers": sent, "timeout": timeout,
        }  # fmt: skip
        out = self.server.network.client_python(self.role, _REQUEST, json.dumps(args), timeout=timeout + 10)
        answer = Response(**json.loads(out.stdout))
        for name, value in answer.headers:
            if name.lower() == "set-cookie":
                cookie = value.split(";", 1)[0]
                key, _, val = cookie.partition("=")
                self.cookies[key.strip()] = val.strip()
        return answer

    def get(self, path: str, **kw: object) -> Response:
        return self.request("GET", path, **kw)  # type: ignore[arg-type]

    def csrf(self, path: str) -> str:
        page = self.get(path)
        found = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.body)
        if found is None:
            raise AssertionError(f"no CSRF token on {path} ({page.status}): {page.body[:300]}")
        return found.group(1)

    def login(self, password: str | None = None) -> Response:
        assert self.person is not None
        token = self.csrf("/login")
        form = {"csrf_token": token, "username": self.person.username,
                "password": self.person.password if password is None else password}  # fmt: skip
        return self.request("POST", "/login", form=form)


# -- the watchdog and the alert mailer ------------------------------------------------------------

MAIL_DROPIN = "/etc/systemd/system/strongroom-mail.service.d/50-test-interval.conf"


def watch(c: Container, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`python -m ops.watch ARGS` as root with the settings its units have (docs/monitoring.md)."""
    return c.run(
        ["systemd-run", "--quiet", "--collect", "--wait", "--pipe", "--service-type=exec",
         "-p", "EnvironmentFile=-/etc/strongroom/webapp.env", "-p", f"WorkingDirectory={OPT}",
         f"{PY}", "-m", "ops.watch", "--config", "/etc/strongroom/watch.toml", *args],
        check=check, timeout=300,
    )  # fmt: skip


def approve_baseline(c: Container) -> None:
    """The admin's review of what normally runs and listens (docs/monitoring.md): record, approve."""
    recorded = watch(c, "baseline", "record").stdout
    digest = re.search(r"approve ([0-9a-f]{16,})", recorded)
    if digest is None:
        raise AssertionError(f"no digest in: {recorded}")
    watch(c, "baseline", "approve", digest.group(1))


def _busctl(c: Container, *args: str) -> subprocess.CompletedProcess[str]:
    """busctl on the container's system bus, from the host: its dbus-daemon answers a root client over
    the socket under the container's root. Nothing runs inside the container for it: a `systemctl`
    there would be a process the watchdog's own pass sees (and reports: it is in no baseline)."""
    address = f"unix:path=/proc/{c.pid1}/root/run/dbus/system_bus_socket"
    argv = ["busctl", f"--address={address}", "--json=short", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def _bus(c: Container, *args: str) -> object:
    result = _busctl(c, *args)
    if result.returncode != 0:
        raise ContainerError(f"busctl {' '.join(args)} failed: {result.stderr.strip()}")
    return json.loads(result.stdout)["data"]


def watch_pass(
    c: Container, unit: str = "strongroom-watch.service", timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """What the timer does every 5 minutes (or hourly, strongroom-watch-slow), now: a oneshot start,
    waited for; returncode 0 when the unit's Result is `success`."""
    systemd = "org.freedesktop.systemd1"
    manager = (systemd, "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager")
    job = _bus(c, "call", *manager, "StartUnit", "ss", unit, "replace")
    assert isinstance(job, list)
    deadline = time.monotonic() + timeout
    # The job object exists until the start has finished, one way or the other.
    while _busctl(c, "introspect", systemd, job[0]).returncode == 0:
        if time.monotonic() > deadline:
            raise ContainerError(f"{unit} did not finish within {timeout:.0f} s")
        time.sleep(0.2)
    path = _bus(c, "call", *manager, "GetUnit", "s", unit)
    assert isinstance(path, list)
    result = _bus(c, "get-property", systemd, path[0], "org.freedesktop.systemd1.Service", "Result")
    return subprocess.CompletedProcess([unit], 0 if result == "success" else 1, stdout=str(result), stderr="")


def mail_every(c: Container, seconds: int) -> None:
    """A drop-in for the alert mailer's pass interval (60 s as shipped): the test waits less.

    Only the interval changes; the unit's user, sandbox and loopback-only network stay as shipped.
    """
    command = f"{OPT}/.venv/bin/flask --app webapp mail run --interval {seconds}"
    c.write_file(MAIL_DROPIN, f"[Service]\nExecStart=\nExecStart={command}\n", 0o644)
    c.run(["systemctl", "daemon-reload"])
    c.run(["systemctl", "restart", "strongroom-mail"])


def subjects(c: Container, user: str) -> list[str]:
    return [str(m["Subject"]) for m in c.mails(user)]


def subject_is(alert: str) -> Callable[[EmailMessage], bool]:
    """A mail matcher: the alert's bare subject (`Strongroom: NAME` or `Strongroom: NAME (N events)`)."""
    pattern = re.compile(rf"Strongroom: {re.escape(alert)}(?: \(\d+ events\))?")
    return lambda message: pattern.fullmatch(str(message["Subject"])) is not None


def approve_aide(c: Container) -> None:
    """docs/runbook.md section 8: the admin's approval of changes they made (AIDE's exit code is a
    bitmask of what it found: non-zero is expected when there were changes)."""
    update = c.run(["aide", "--update", "--config", "/etc/strongroom/aide.conf"], check=False, timeout=300)
    if update.returncode >= 8:  # 1 added, 2 removed, 4 changed; 8 and up are AIDE's own errors
        raise ContainerError(f"aide --update failed ({update.returncode}): {update.stderr[-1000:]}")
    c.run(["mv", "/var/lib/aide/aide.db.new.gz", "/var/lib/aide/aide.db.gz"])
