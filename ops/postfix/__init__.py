"""postfix for a Strongroom server, rendered from its few settings so the tested text is the shipped text.

What it does:
- one SMTP listener, on loopback only (127.0.0.1:25 and [::1]:25, the addresses written into
  master.cf itself, not only `inet_interfaces`), for the web app's alert mailer. It accepts clients
  from loopback only, senders of this host's own domain only, and recipients that are admins only:
  a local process cannot use it to relay anything anywhere else;
- `sendmail` for everything else on the host (cron, daemons, the watchdog's failure notices); mail
  for root, postmaster and the daemons' users is rewritten to the admins (the `virtual` map);
- onwards either through the company relay (TLS required, certificate verified) or, without a relay,
  into local mailboxes (/var/mail/USER) for admins that are local users of this host (their
  addresses are USER@MYHOSTNAME). Nothing is ever sent straight to a foreign MX.

`ops/postfix/main.cf`, `master.cf` and `virtual` are `Postfix.example().render()`;
tests/ops/test_postfix.py keeps them equal and runs the same text in a real postfix.
Render yours with `python -m ops.postfix render --out DIR --myhostname ... --admin ... [--relayhost ...]`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from webapp.mail.settings import plain_address

# The local users whose mail goes to the admins: root, the RFC 2142 role names, the daemons.
REWRITTEN = ("root", "postmaster", "abuse", "daemon", "www-data", "strongroom", "keyd", "mysql", "nobody")
MAX_ADMINS = 10  # the mailer's own limit for STRONGROOM_ALERT_TO
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
# Lowercase, at least two labels (postfix derives mydomain from it); nothing else can reach a config line.
_FQDN = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
# `[host]:port`: the brackets turn off MX lookups, which is what a fixed relay wants.
# Admin addresses go into postfix map lines: a narrower local part than the mailer's plain address
# (no '=', ',', '{', '}' or spaces, which mean something in an inline map).
_ADMIN = re.compile(rf"[a-z0-9][a-z0-9._+-]{{0,63}}@{_LABEL}(?:\.{_LABEL})*")
_RELAYHOST = re.compile(rf"\[({_LABEL}(?:\.{_LABEL})+|\d{{1,3}}(?:\.\d{{1,3}}){{3}})\](?::(\d{{1,5}}))?")


class PostfixConfigError(ValueError):
    """A setting that would not give a safe, working postfix."""


@dataclass(frozen=True)
class Postfix:
    myhostname: str
    admins: tuple[str, ...]
    relayhost: str | None = None  # None: local delivery to the admins' mailboxes on this host
    port: int = 25  # the loopback listener; the mailer's STRONGROOM_SMTP_PORT (deploy/webapp.env.in)

    def __post_init__(self) -> None:
        if len(self.myhostname) > 253 or not _FQDN.fullmatch(self.myhostname):
            raise PostfixConfigError("myhostname must be a lowercase fully qualified name (host.domain)")
        if not 1 <= len(self.admins) <= MAX_ADMINS:
            raise PostfixConfigError(f"give 1 to {MAX_ADMINS} admin addresses")
        if len(set(self.admins)) != len(self.admins):
            raise PostfixConfigError("an admin address is listed twice")
        for address in self.admins:
            # The same plain form the mailer accepts (STRONGROOM_ALERT_TO): nothing a map line could
            # be smuggled in with.
            if not _ADMIN.fullmatch(address) or not plain_address(address):
                raise PostfixConfigError(f"{address!r:.80} is not a plain lowercase mail address (user@host)")
            user, domain = address.rsplit("@", 1)
            if self.relayhost is None and domain != self.myhostname:
                raise PostfixConfigError(
                    f"without a relay host, admins are local users: {address!r:.80} "
                    f"must end in @{self.myhostname}"
                )
            if domain == self.myhostname and user in REWRITTEN:
                raise PostfixConfigError(f"{address!r:.80} is itself rewritten to the admins: a mail loop")
        if self.relayhost is not None:
            match = _RELAYHOST.fullmatch(self.relayhost)
            if not match or (match[2] is not None and not 1 <= int(match[2]) <= 65535):
                raise PostfixConfigError("relayhost must be [host.domain]:port or [host.domain]")
        if not 1 <= self.port <= 65535:
            raise PostfixConfigError("port must be 1-65535")

    @classmethod
    def example(cls) -> Postfix:
        """The values of the shipped files in ops/postfix/."""
        return cls(
            myhostname="vault.example.internal",
            admins=("admins@example.internal",),
            relayhost="[mail.example.internal]:587",
        )

    def render(self) -> dict[str, str]:
        """File name -> text, for /etc/postfix/ (then `postmap /etc/postfix/virtual`)."""
        return {"main.cf": self._main(), "master.cf": self._master(), "virtual": self._virtual()}

    def _main(self) -> str:
        recipients = ", ".join(f"{a}=OK" for a in self.admins)
        if self.relayhost is None:
            outbound = (
                "# No relay host: the admins are local users, their mail goes to /var/mail/USER. Anything\n"
                "# else bounces: this server never talks to a foreign mail server by itself.\n"
                "relayhost =\n"
                "mydestination = $myhostname, localhost\n"
                "default_transport = error:this server sends mail to local admins only\n"
                "relay_transport = error:this server sends mail to local admins only\n"
            )
        else:
            outbound = (
                "# Everything goes to the company's mail server; nothing is delivered locally.\n"
                f"relayhost = {self.relayhost}\n"
                "mydestination =\n"
                "local_recipient_maps =\n"
                "local_transport = error:local delivery is disabled\n"
            )
        return (
            "# Strongroom: postfix sends this server's own mail (cron, daemons, the watchdog, the web app's\n"
            "# alert mailer) to the admins and accepts nothing from the network. Rendered by ops.postfix;\n"
            "# see docs/monitoring.md. Install as /etc/postfix/main.cf.\n"
            "compatibility_level = 3.6\n"
            f"myhostname = {self.myhostname}\n"
            "myorigin = $myhostname\n"
            "# The one listener (master.cf) names its loopback addresses itself; this is the second lock.\n"
            "inet_interfaces = loopback-only\n"
            "inet_protocols = all\n"
            f"{outbound}"
            "# Mail for root and the daemons goes to the admins: rewritten on the way in (virtual).\n"
            "alias_maps =\n"
            "alias_database =\n"
            "virtual_alias_maps = hash:/etc/postfix/virtual\n"
            "# The loopback listener is for the alert mailer: loopback clients only, this host's senders\n"
            "# only, the admins only. A local process cannot relay through it.\n"
            "mynetworks = 127.0.0.0/8 [::1]/128\n"
            "smtpd_helo_required = yes\n"
            "smtpd_client_restrictions = permit_mynetworks, reject\n"
            f"smtpd_sender_restrictions = check_sender_access inline:{{ {self.myhostname}=OK }}, reject\n"
            "smtpd_relay_restrictions = permit_mynetworks, reject\n"
            f"smtpd_recipient_restrictions = check_recipient_access inline:{{ {recipients} }}, reject\n"
            "smtpd_tls_security_level = none\n"
            "disable_vrfy_command = yes\n"
            "smtpd_banner = $myhostname ESMTP\n"
            "# To the relay: TLS required, its certificate verified against the system's CAs.\n"
            "smtp_tls_security_level = secure\n"
            "smtp_tls_CAfile = /etc/ssl/certs/ca-certificates.crt\n"
            "smtp_tls_loglevel = 1\n"
            "# No syslog daemon may be running when postfix starts; never lose postfix's own errors.\n"
            "maillog_file = /var/log/postfix.log\n"
            "biff = no\n"
            "append_dot_mydomain = no\n"
            "readme_directory = no\n"
        )

    def _master(self) -> str:
        return (
            "# Strongroom: Debian's master.cf with one network service, SMTP on loopback only, for the\n"
            "# alert mailer (its addresses are written here, so no inet_interfaces change can widen it).\n"
            "# No chroot: the services are few, and a chroot needs copied system files to keep in sync.\n"
            "# service type  private unpriv  chroot  wakeup  maxproc command + args\n"
            f"127.0.0.1:{self.port} inet n - n - - smtpd\n"
            f"[::1]:{self.port} inet n - n - - smtpd\n"
            "pickup    unix  n       -       n       60      1       pickup\n"
            "cleanup   unix  n       -       n       -       0       cleanup\n"
            "qmgr      unix  n       -       n       300     1       qmgr\n"
            "tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n"
            "rewrite   unix  -       -       n       -       -       trivial-rewrite\n"
            "bounce    unix  -       -       n       -       0       bounce\n"
            "defer     unix  -       -       n       -       0       bounce\n"
            "trace     unix  -       -       n       -       0       bounce\n"
            "verify    unix  -       -       n       -       1       verify\n"
            "flush     unix  n       -       n       1000?   0       flush\n"
            "proxymap  unix  -       -       n       -       -       proxymap\n"
            "proxywrite unix -       -       n       -       1       proxymap\n"
            "smtp      unix  -       -       n       -       -       smtp\n"
            "relay     unix  -       -       n       -       -       smtp\n"
            "        -o syslog_name=postfix/$service_name\n"
            "showq     unix  n       -       n       -       -       showq\n"
            "error     unix  -       -       n       -       -       error\n"
            "retry     unix  -       -       n       -       -       error\n"
            "discard   unix  -       -       n       -       -       discard\n"
            "local     unix  -       n       n       -       -       local\n"
            "anvil     unix  -       -       n       -       1       anvil\n"
            "scache    unix  -       -       n       -       1       scache\n"
            "postlog   unix-dgram n  -       n       -       1       postlogd\n"
        )

    def _virtual(self) -> str:
        to = ", ".join(self.admins)
        lines = "".join(f"{name:<15} {to}\n" for name in REWRITTEN)
        return (
            "# Mail for root and the daemons: to the admins. Install as /etc/postfix/virtual, then\n"
            "# `postmap /etc/postfix/virtual`. (virtual_alias_maps, not /etc/aliases: it rewrites before\n"
            "# any delivery, to a relay or to a local mailbox alike.)\n" + lines
        )
