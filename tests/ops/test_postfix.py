"""postfix as rendered by ops.postfix, in a real private postfix (tests/ops/postfix_harness.py):

- the shipped files are the rendering with example values;
- relay mode: root's and the daemons' mail and the alert mailer's SMTP on loopback reach the admins
  through the relay (an aiosmtpd sink); a foreign sender or recipient is refused at the listener;
- local mode (no relay): the same mail lands in the admins' mailboxes (/var/mail/USER), admins being
  local users of the host;
- the only listeners are on loopback.
"""

from __future__ import annotations

import secrets
import smtplib
import subprocess
import sys
from email import message_from_bytes
from email.message import EmailMessage
from pathlib import Path

import pytest

from ops.postfix import Postfix, PostfixConfigError
from tests.ops.postfix_harness import local_users, private_postfix
from tests.ops.rsyslog_harness import wait_for
from tests.support import free_port, need_binary
from tests.webapp.smtpsink import Sink, smtp_server
from webapp.mail.delivery import SmtpSession
from webapp.mail.settings import MailSettings

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "ops" / "postfix"
HOST = "vault.example.internal"
LOOPBACK = {"127.0.0.1", "::1"}


def test_shipped_files_are_the_example_rendering() -> None:
    for name, text in Postfix.example().render().items():
        assert (SHIPPED / name).read_text() == text, f"ops/postfix/{name}: run the render again"


def test_shipped_main_cf_parses_and_listens_on_loopback_only() -> None:
    postconf = need_binary("postconf")
    out = subprocess.run(
        [postconf, "-c", str(SHIPPED), "-h", "inet_interfaces", "mynetworks", "smtpd_relay_restrictions"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "warning" not in out.stderr, out.stderr
    assert out.stdout.splitlines() == ["loopback-only", "127.0.0.0/8 [::1]/128", "permit_mynetworks, reject"]
    services = subprocess.run(
        [postconf, "-c", str(SHIPPED), "-M"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    inet = sorted(line.split()[0] for line in services if line.split()[1] == "inet")
    assert inet == ["127.0.0.1:25", "[::1]:25"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"myhostname": "vault"}, "fully qualified"),
        ({"myhostname": "Vault.example.internal"}, "lowercase"),
        ({"myhostname": "vault.example.internal\nrelayhost = evil"}, "fully qualified"),
        ({"myhostname": "vault..example"}, "fully qualified"),
        ({"admins": ()}, "1 to 10"),
        ({"admins": tuple(f"a{i}@example.internal" for i in range(11))}, "1 to 10"),
        ({"admins": ("a@example.internal", "a@example.internal")}, "twice"),
        ({"admins": ("Alice <a@example.internal>",)}, "plain"),
        ({"admins": ("a=OK,b@example.internal",)}, "plain"),
        ({"admins": ("a}@example.internal",)}, "plain"),
        ({"admins": ("a b@example.internal",)}, "plain"),
        ({"admins": ("a@example.internal\nroot evil@x.example",)}, "plain"),
        ({"admins": ("Admins@example.internal",)}, "plain"),
        ({"admins": ("admins",)}, "plain"),
        ({"admins": ("root@vault.example.internal",)}, "loop"),
        ({"relayhost": "mail.example.internal:587"}, "relayhost"),
        ({"relayhost": "[mail.example.internal]:0"}, "relayhost"),
        ({"relayhost": "[mail.example.internal]:70000"}, "relayhost"),
        ({"relayhost": "[mail.example.internal]:587\nmynetworks = 0.0.0.0/0"}, "relayhost"),
        ({"relayhost": "[mail]:587"}, "relayhost"),
        ({"relayhost": None}, "must end in @vault.example.internal"),  # admins@example.internal is not local
    ],
)
def test_refused_settings(kwargs: dict[str, object], message: str) -> None:
    values: dict[str, object] = {
        "myhostname": HOST,
        "admins": ("admins@example.internal",),
        "relayhost": "[mail.example.internal]:587",
        **kwargs,
    }
    with pytest.raises(PostfixConfigError, match=message):
        Postfix(**values)  # type: ignore[arg-type]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.postfix", "render", *args], cwd=ROOT, capture_output=True, text=True
    )


def test_cli_writes_the_rendering_or_nothing(tmp_path: Path) -> None:
    done = _cli(
        "--out", str(tmp_path), "--myhostname", HOST, "--admin", f"alice@{HOST}", "--admin", f"bob@{HOST}"
    )
    assert done.returncode == 0, done.stderr
    expected = Postfix(myhostname=HOST, admins=(f"alice@{HOST}", f"bob@{HOST}")).render()
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == expected
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = _cli("--out", str(empty), "--myhostname", HOST, "--admin", "admins@example.internal")
    assert refused.returncode == 2
    assert "must end in @" in refused.stderr
    assert list(empty.iterdir()) == []


def _alert(sender: str, to: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, "Strongroom: ops.port_new"
    msg.set_content("Strongroom: ops.port_new at 02:14 UTC, check the server.\n")
    return msg


def _mailer_sends(port: int, recipients: tuple[str, ...]) -> None:
    """The alert mailer's own SMTP code (webapp.mail.delivery) against the loopback listener."""
    settings = MailSettings(
        host="127.0.0.1",
        port=port,
        starttls=False,
        timeout=10,
        sender=f"strongroom@{HOST}",
        recipients=recipients,
    )
    session = SmtpSession(settings)
    try:
        assert session.send(_alert(settings.sender, ", ".join(recipients))) == 0
    finally:
        session.close()


# (MAIL FROM, RCPT TO, the reply code expected at the refused step) from a loopback client.
REFUSED = [
    ("ceo@example.com", "admins@example.internal", 554),  # a foreign sender, even to the admins
    ("", "admins@example.internal", 554),  # the null sender: the mailer never uses it
    (f"strongroom@{HOST}", "victim@example.com", 554),  # relaying to anyone else
    (f"strongroom@{HOST}", f"root@{HOST}", 554),  # only the admins, not the rewritten users
    (f"strongroom@{HOST}", "admins@example.internal.evil.example", 554),
]


def _refusals(port: int, host: str = "127.0.0.1") -> list[tuple[str, str, int]]:
    codes = []
    with smtplib.SMTP(host, port, timeout=10) as smtp:
        smtp.ehlo("client.example")
        for sender, rcpt, _ in REFUSED:
            code, _text = smtp.mail(sender)
            if code == 250:
                code, _text = smtp.rcpt(rcpt)
            codes.append((sender, rcpt, code))
            smtp.rset()
    return codes


def test_relay_mode_delivers_root_and_mailer_mail_and_relays_nothing_else() -> None:
    port = free_port()
    config = Postfix(
        myhostname=HOST,
        admins=("admins@example.internal",),
        relayhost="[mail.example.internal]:587",
        port=port,
    )
    sink = Sink()
    with smtp_server(sink) as relay_port, private_postfix(config, relay_port=relay_port) as pf:
        assert pf.listeners() == {("127.0.0.1", port), ("::1", port)}
        msg = b"Subject: cron: check the server\n\nA daemon wrote to root.\n"
        pf.sendmail("root", "root", msg)
        pf.sendmail("www-data", "www-data", msg)
        _mailer_sends(port, ("admins@example.internal",))
        for family_host in ("127.0.0.1", "::1"):
            assert _refusals(port, family_host) == REFUSED
        wait_for(lambda: len(sink.messages) >= 3, timeout=30, what="relayed mail: " + pf.log())
        assert sorted(r for m in sink.messages for r in m.rcpt_tos) == ["admins@example.internal"] * 3
        subjects = sorted(str(message_from_bytes(m.raw)["Subject"]) for m in sink.messages)
        assert subjects == ["Strongroom: ops.port_new", "cron: check the server", "cron: check the server"]


def test_local_mode_delivers_to_the_admins_mailboxes() -> None:
    tag = secrets.token_hex(3)
    alice, bob = f"sra{tag}", f"srb{tag}"  # stand-ins for the admins alice and bob
    admins = (f"{alice}@{HOST}", f"{bob}@{HOST}")
    port = free_port()
    config = Postfix(myhostname=HOST, admins=admins, port=port)
    with local_users(alice, bob), private_postfix(config) as pf:
        assert {ip for ip, _ in pf.listeners()} == LOOPBACK
        pf.sendmail("root", "root", b"Subject: cron: check the server\n\nA daemon wrote to root.\n")
        _mailer_sends(port, admins)
        assert _refusals(port) == REFUSED

        def mailbox(user: str) -> str:
            path = pf.mail_dir / user
            return path.read_text(errors="replace") if path.exists() else ""

        wait_for(
            lambda: all(mailbox(u).count("\nSubject: ") == 2 for u in (alice, bob)),
            timeout=30,
            what="local delivery: " + pf.log(),
        )
        for user in (alice, bob):
            assert "Subject: cron: check the server" in mailbox(user)
            assert "Subject: Strongroom: ops.port_new" in mailbox(user)
        # Mail to anyone else does not leave: no relay, no MX lookups, it bounces (to root: the admins).
        pf.sendmail("root", "someone@example.com", b"Subject: out\n\nnot sent\n")
        wait_for(lambda: "status=bounced" in pf.log(), timeout=30, what="a bounce: " + pf.log())
