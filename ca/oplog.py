"""The operations log: who did what to the CA, when. Append-only file in the CA directory + syslog.

Entries carry names, serials, fingerprints and reasons; never keys, passphrases or bundle passwords
(callers only ever pass those fields, and `record` takes keyword details it writes as they are).
"""

from __future__ import annotations

import json
import os
import pwd
import syslog
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from ca.fsutil import FILE_MODE


class Event(StrEnum):
    INIT = "ca.init"
    ISSUE = "ca.issue"
    REVOKE = "ca.revoke"
    CRL = "ca.crl"
    ROOT_CRL = "ca.root_crl"
    NEW_ISSUING = "ca.new_issuing"
    UNBIND = "ca.unbind"
    UNBIND_FAILED = "ca.unbind_failed"
    RELOAD_FAILED = "ca.reload_failed"
    REFUSED = "ca.refused"


def who() -> str:
    """The human behind the command: sudo's caller if any, else the login name of the real uid."""
    sudo_user = os.environ.get("SUDO_USER")
    try:
        me = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        me = f"uid={os.getuid()}"
    return f"{sudo_user} (via sudo as {me})" if sudo_user else me


class OpsLog:
    def __init__(self, path: Path | None, *, use_syslog: bool) -> None:
        self._path = path
        self._syslog = use_syslog

    def record(self, event: Event, when: datetime, **details: object) -> None:
        line = json.dumps(
            {"ts": when.isoformat(), "who": who(), "event": str(event), **details},
            sort_keys=True,
            default=str,
        )
        if self._syslog:
            syslog.openlog("strongroom-ca", syslog.LOG_PID, syslog.LOG_AUTHPRIV)
            syslog.syslog(syslog.LOG_NOTICE, line)
        if self._path is not None:
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
            try:
                os.write(fd, (line + "\n").encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
