"""deploy/server/settings.py: the example parses, and every bad or hostile value is refused with a
message naming its key (nothing on the server is touched before this passes)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deploy.server.settings import SettingsError, parse
from ops.postfix import Postfix

EXAMPLE = (Path(__file__).resolve().parents[3] / "deploy/server/server.toml.example").read_text()


def test_the_example_is_valid() -> None:
    s = parse(EXAMPLE)
    assert s.hostname == "vault.example.internal"
    assert s.alert_to == ("alice@vault.example.internal",)
    assert s.relay == ""
    assert s.admin_networks == ("192.0.2.10/32", "2001:db8::10/128")


@pytest.mark.parametrize(
    "hashed",
    [
        "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$LO0LYdRtUWdKoXbWTmbBTeAI.NiRNh6DzK/2mlmTZnA",
        "$6$abc$K4v3HcZ8yAmpRfxML6S46NCcqy9r4/KdbQpFvqSWsBf4dgySOEOo1DHJTrmn2BsJK2aNmPN8Tfb826D2o9.z51",
        "$6$rounds=656000$abcdefgh$INFVkk4fRtS9y1IfYJvDVMIXNucx/JlFBHd7y5OnzHwmOz025FNQh51uVXyLFnf/"
        "ykhnyKCQzKPb8/5jrVEUQ.",
    ],
    ids=["yescrypt", "sha512crypt", "sha512crypt-rounds"],
)
def test_a_password_hash_of_mkpasswd_or_openssl_is_taken(hashed: str) -> None:
    s = parse(edit(r"^password_hash = .*$", f'password_hash = "{hashed}"'))
    assert s.admins[0].password_hash == hashed


def edit(pattern: str, replacement: str) -> str:
    text, n = re.subn(pattern, replacement, EXAMPLE, count=1, flags=re.M)
    assert n == 1, pattern
    return text


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("surprise = 1\n" + EXAMPLE, "surprise"),
        (edit(r"^hostname = .*$", 'hostname = "vault"'), "hostname"),
        # A raw newline inside a string is not even TOML: refused before any key is read.
        (edit(r"^hostname = .*$", 'hostname = "vault.example.internal\\nX"'), "settings"),
        (edit(r"^hostname = .*$", "hostname = 5"), "hostname"),
        (edit(r"^login = .*$", 'login = "root"'), "admins[0].login"),
        (edit(r"^login = .*$", 'login = "strongroom-web"'), "admins[0].login"),
        (edit(r"^login = .*$", 'login = "al ice"'), "admins[0].login"),
        (edit(r"^keyholder = .*$", 'keyholder = "alice\\" x"'), "admins[0].keyholder"),
        (edit(r"^ssh_key = .*$", 'ssh_key = "ssh-ed25519 AAAA\\ncommand=\\"sh\\""'), "settings"),
        (
            edit(
                r"^ssh_key = .*$",
                'ssh_key = "ssh-dss AAAAB3NzaC1kc3MAAACBAPp1234567890abcdefghijklmnopqrstu"',
            ),
            "admins[0].ssh_key",
        ),
        (edit(r"^mail = .*$", 'mail = "security@example.org"'), "admins[0].mail"),
        # password_hash: a yescrypt or sha512crypt hash, never the password, nothing that locks or
        # empties the account, nothing that could split an /etc/shadow line.
        (edit(r"^password_hash = .*\n", ""), "admins[0].password_hash"),
        (
            edit(r"^password_hash = .*$", 'password_hash = "correct horse battery staple"'),
            "admins[0].password_hash",
        ),
        (edit(r"^password_hash = .*$", 'password_hash = ""'), "admins[0].password_hash"),
        (edit(r"^password_hash = .*$", 'password_hash = "*"'), "admins[0].password_hash"),
        (edit(r"^password_hash = .*$", 'password_hash = "!"'), "admins[0].password_hash"),
        (edit(r"^password_hash = .*$", "password_hash = 5"), "admins[0].password_hash"),
        # MD5-crypt and DES: weak; refused.
        (
            edit(r"^password_hash = .*$", 'password_hash = "$1$abcdefgh$ABCDEFGHIJKLMNOPQRSTUV"'),
            "admins[0].password_hash",
        ),
        (edit(r"^password_hash = .*$", 'password_hash = "abJnggxhB/yJU"'), "admins[0].password_hash"),
        # A locked copy of a good hash ("!" in front), and good hashes with a tail.
        (edit(r"^password_hash = \"", 'password_hash = "!'), "admins[0].password_hash"),
        (edit(r"^(password_hash = \".*)\"$", r'\1:0:0"'), "admins[0].password_hash"),
        (edit(r"^(password_hash = \".*)\"$", r'\1\\nroot::0"'), "admins[0].password_hash"),
        (edit(r"^(password_hash = \".*)\"$", r'\1x"'), "admins[0].password_hash"),
        (
            edit(r"^password_hash = .*$", 'password_hash = "$6$salt$' + "A" * 85 + '"'),
            "admins[0].password_hash",
        ),
        (
            edit(r"^password_hash = .*$", 'password_hash = "$6$' + "s" * 17 + "$" + "A" * 86 + '"'),
            "admins[0].password_hash",
        ),
        (
            edit(r"^password_hash = .*$", 'password_hash = "$y$j9T$' + "s" * 5000 + "$" + "A" * 43 + '"'),
            "admins[0].password_hash",
        ),
        (edit(r"^\[\[admins\]\]$", '[[admins]]\nshell = "/bin/bash"'), "admins[0].shell"),
        (edit(r"^relay = .*$", 'relay = "mail.example.internal; rm -rf /"'), "mail.relay"),
        # ops.postfix's relayhost: brackets (no MX lookup), a real port, lower case.
        (edit(r"^relay = .*$", 'relay = "mail.example.internal:587"'), "mail.relay"),
        (edit(r"^relay = .*$", 'relay = "[mail.example.internal]:70000"'), "mail.relay"),
        (edit(r"^relay = .*$", 'relay = "[Mail.Example.internal]"'), "mail.relay"),
        (edit(r"^mail = .*$", 'mail = "Alice@vault.example.internal"'), "admins[0].mail"),
        # postfix rewrites these names to the admins: an admin of that name is a mail loop.
        (edit(r"^login = .*$", 'login = "abuse"'), "admins[0].login"),
        (edit(r"^login = .*$", 'login = "postmaster"'), "admins[0].login"),
        # postfix's loopback listener takes this host's senders only.
        (edit(r"^from = .*$", 'from = "alerts@example.org"'), "mail.from"),
        (edit(r"^port = .*$", "port = 70000"), "loghost.port"),
        (edit(r"^port = .*$", "port = true"), "loghost.port"),
        (edit(r"^address = .*$", 'address = "192.0.2.50:6514"'), "loghost.address"),
        (edit(r"^ca_file = .*$", 'ca_file = "relative/chain.pem"'), "loghost.ca_file"),
        (edit(r"^key_file = .*$", 'key_file = "/root/../etc/shadow"'), "loghost.key_file"),
        # The remote copy's pinned host key goes into a known_hosts line: one key, nothing else.
        (edit(r"^ssh_host_key = .*$", ""), "loghost.ssh_host_key"),
        (edit(r"^ssh_host_key = .*$", 'ssh_host_key = "ssh-ed25519"'), "loghost.ssh_host_key"),
        (edit(r"^ssh_host_key = .*$", "ssh_host_key = 1"), "loghost.ssh_host_key"),
        (edit(r"^# ssh_port = .*$", "ssh_port = 0"), "loghost.ssh_port"),
        (edit(r"^admins = .*$", 'admins = ["0.0.0.0/0"]'), "network.admins"),
        (edit(r"^admins = .*$", "admins = []"), "network.admins"),
        (edit(r"^employees = .*$", 'employees = ["not-an-address"]'), "network.employees"),
        (edit(r"^crm = .*$", 'crm = ["203.0.113.7", "203.0.113.7"]'), "network.crm"),
        (edit(r"^crl = .*$", "crl = 1"), "tls.crl"),
        (edit(r"^\[tls\]$", "[tls]\nverify = false"), "tls.verify"),
        (edit(r"^# \[backup\]$", '[backup]\nenv_file = "/x"\nextra = 1'), "backup.extra"),
        (EXAMPLE.replace("[[admins]]", "[[admin]]"), "admin"),
        ("hostname = [", "settings"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(text: str, key: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse(text)
    assert any(p.startswith(key) for p in info.value.problems), info.value.problems


def test_every_problem_is_reported_at_once() -> None:
    text = edit(r"^port = .*$", "port = 0").replace('hostname = "vault.example.internal"', 'hostname = "x"')
    with pytest.raises(SettingsError) as info:
        parse(text)
    problems = info.value.problems
    assert {p.split(":")[0] for p in problems} >= {"hostname", "loghost.port"}


@pytest.mark.parametrize("relay", ["", "[mail.example.internal]:587", "[mail.example.internal]"])
def test_what_the_settings_accept_the_postfix_renderer_accepts(relay: str) -> None:
    """The installer renders postfix after it has changed the server: the settings must refuse first
    whatever ops.postfix would refuse then."""
    text = edit(r"^relay = .*$", f'relay = "{relay}"')
    if relay:
        text = text.replace('mail = "alice@vault.example.internal"', 'mail = "alice@example.org"')
    s = parse(text)
    files = Postfix(myhostname=s.hostname, admins=s.alert_to, relayhost=s.relay or None).render()
    assert s.hostname in files["main.cf"]
    assert s.mail_from.endswith("@" + s.hostname)


def test_the_log_hosts_key_line_keeps_type_and_key_only() -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ"
    s = parse(re.sub(r"^ssh_host_key = .*$", f'ssh_host_key = "{key} root@loghost"', EXAMPLE, flags=re.M))
    assert s.loghost.ssh_host_key == key
    assert s.loghost.ssh_port == 22
