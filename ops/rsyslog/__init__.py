"""rsyslog configs for remote logging, rendered from one place so the tested file is the shipped file.

- the sender (this server): keeps an exact local copy of everything it forwards, and forwards it over
  RELP on TLS with mutual certificate authentication (authMode name: each side names the peer it
  accepts) through a disk queue that survives a receiver outage and an rsyslog restart;
- the receiver (the log host): accepts only the permitted sender's certificate and writes the same
  exact template per sending host.

The `StrongroomExact` template is the contract with ops/checks/remote.py: RFC 3339 time with
microseconds, host, app name, process id, message - byte-identical on both sides, so the copies compare
line by line. (Not %syslogtag%: the log host rebuilds the tag from RFC 5424 fields without the colon.)
`ops/rsyslog/*.conf` are these renderings with the production values (see docs/monitoring.md);
tests/ops/test_rsyslog.py checks they are current and runs the same text in two real rsyslogd.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EXACT_TEMPLATE = (
    'template(name="StrongroomExact" type="string"\n'
    '         string="%TIMESTAMP:::date-rfc3339% %HOSTNAME% %app-name% %procid%'
    '%msg:::sp-if-no-1st-sp%%msg:::drop-last-lf%\\n")\n'
)
_SAFE = re.compile(r"^[A-Za-z0-9_./:@-]{1,255}$")


def _q(value: object) -> str:
    text = str(value)
    # Values land inside rsyslog's double-quoted strings: no quotes, no spaces, no newlines.
    if not _SAFE.match(text):
        raise ValueError(f"unsafe value for an rsyslog config: {text!r}")
    return text


@dataclass(frozen=True)
class Sender:
    target: str  # the log host
    port: int
    permitted_peer: str  # the log host's certificate name
    ca_file: str
    cert_file: str
    key_file: str
    local_copy: str  # what ops/checks/remote.py compares with the remote copy
    queue_max_disk: str = "2g"

    def render(self) -> str:
        return (
            "# Strongroom: forward everything to the log host, RELP over mutual TLS (from ops.rsyslog).\n"
            + EXACT_TEMPLATE
            + f'action(type="omfile" file="{_q(self.local_copy)}" template="StrongroomExact"\n'
            '       fileCreateMode="0600" dirCreateMode="0700")\n'
            "# RELP, not plain TCP: the log host acknowledges every message, so the lines written into a\n"
            "# connection that has just died are sent again instead of lost (measured: plain TCP+TLS lost\n"
            "# them). A disk queue, not an in-memory one spilling to disk: an rsyslog restart during an\n"
            "# outage cancels the worker, and an in-memory batch died with it (measured); on disk a message\n"
            "# is only deleted once the log host has acknowledged it. The action retries forever.\n"
            'module(load="omrelp")\n'
            f'action(type="omrelp" target="{_q(self.target)}" port="{int(self.port)}"\n'
            f'       tls="on" tls.caCert="{_q(self.ca_file)}" tls.myCert="{_q(self.cert_file)}"\n'
            f'       tls.myPrivKey="{_q(self.key_file)}" tls.authMode="name"\n'
            f'       tls.permittedPeer=["{_q(self.permitted_peer)}"]\n'
            '       template="RSYSLOG_SyslogProtocol23Format"\n'
            '       queue.type="Disk" queue.filename="strongroom_forward" queue.syncQueueFiles="on"\n'
            f'       queue.maxDiskSpace="{_q(self.queue_max_disk)}" queue.saveOnShutdown="on"\n'
            '       action.resumeRetryCount="-1" action.resumeInterval="2")\n'
        )


@dataclass(frozen=True)
class Receiver:
    port: int
    permitted_peer: str  # the sender's certificate name
    ca_file: str
    cert_file: str
    key_file: str
    directory: str  # one subdirectory per sending host
    # The group of the read-only SFTP account the vault pulls its copy through (ops/remote_copy.py):
    # it may read the files, never write them. None: root only.
    reader_group: str | None = None

    def _modes(self) -> str:
        if self.reader_group is None:
            return 'fileCreateMode="0600" dirCreateMode="0700"'
        group = _q(self.reader_group)
        return (
            f'fileCreateMode="0640" dirCreateMode="0750"\n           fileGroup="{group}" dirGroup="{group}"'
        )

    def render(self) -> str:
        return (
            "# Strongroom log host: only the permitted sender, RELP over mutual TLS (from ops.rsyslog).\n"
            + EXACT_TEMPLATE
            + 'template(name="StrongroomPerHost" type="string"\n'
            f'         string="{_q(self.directory)}/%HOSTNAME%/forwarded.log")\n'
            'ruleset(name="strongroom_remote") {\n'
            '    action(type="omfile" dynaFile="StrongroomPerHost" template="StrongroomExact"\n'
            f"           {self._modes()})\n"
            "}\n"
            'module(load="imrelp")\n'
            f'input(type="imrelp" port="{int(self.port)}" ruleset="strongroom_remote"\n'
            f'      tls="on" tls.caCert="{_q(self.ca_file)}" tls.myCert="{_q(self.cert_file)}"\n'
            f'      tls.myPrivKey="{_q(self.key_file)}" tls.authMode="name"\n'
            f'      tls.permittedPeer=["{_q(self.permitted_peer)}"])\n'
        )


PRODUCTION_SENDER = Sender(
    target="loghost.example.internal",
    port=6514,
    permitted_peer="loghost.example.internal",
    ca_file="/etc/strongroom/rsyslog/ca.pem",
    cert_file="/etc/strongroom/rsyslog/vault.pem",
    key_file="/etc/strongroom/rsyslog/vault.key",
    local_copy="/var/log/strongroom/forwarded.log",
)
PRODUCTION_RECEIVER = Receiver(
    port=6514,
    permitted_peer="vault.example.internal",
    ca_file="/etc/strongroom/rsyslog/ca.pem",
    cert_file="/etc/strongroom/rsyslog/loghost.pem",
    key_file="/etc/strongroom/rsyslog/loghost.key",
    directory="/var/log/remote",
    reader_group="strongroom-logpull",
)
