"""The remote copy of the audit trail: every committed audit record (with its chain hash) goes to syslog.

rsyslog forwards it off the machine (ops/), where an intruder on this host cannot rewrite it; that
copy is what anchors the chain head against deletion of the newest rows.
"""

from __future__ import annotations

import logging
import logging.handlers
import os

AUDIT_LOGGER = "strongroom.audit"
EVENT_LOGGER = "strongroom.events"
DEV_LOG = "/dev/log"


def _attach_syslog(logger: logging.Logger) -> logging.Logger:
    if os.path.exists(DEV_LOG) and not any(
        isinstance(h, logging.handlers.SysLogHandler) for h in logger.handlers
    ):
        handler = logging.handlers.SysLogHandler(
            address=DEV_LOG, facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV
        )
        handler.setFormatter(logging.Formatter("strongroom: %(message)s"))
        logger.addHandler(handler)
    if not logger.handlers:
        # Without /dev/log the records still propagate to whatever the host process configured
        # (gunicorn's error log), but never to logging's last-resort stderr handler: the admin
        # commands' stderr is a one-line contract.
        logger.addHandler(logging.NullHandler())
    logger.setLevel(logging.INFO)
    return logger


def audit_logger() -> logging.Logger:
    """Syslog via /dev/log when it exists, else a plain logger that propagates to the root handlers."""
    return _attach_syslog(logging.getLogger(AUDIT_LOGGER))


def event_logger() -> logging.Logger:
    return _attach_syslog(logging.getLogger(EVENT_LOGGER))
