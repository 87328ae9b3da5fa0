"""outbox: alerts that wait too long in the outbox mean the alert mail path is broken (the mailer is
stopped or misconfigured, postfix is down or refuses). The outbox is the broken path, so this check
does not alert through it: it tells root (the admins, through postfix's `sendmail`, like
ops/deploy/watch-failed.sh) directly, once when the condition appears and again only after it
cleared and came back. The mail is bare: a count and where to look, never an event's details.
"""

from __future__ import annotations

import socket
import subprocess
from datetime import datetime, timedelta

import sqlalchemy as sa

from ops.checks import CheckFailed, Context, Result
from webapp.clock import to_db
from webapp.db.tables import outbox

NAME = "outbox"
SENDMAIL = "/usr/sbin/sendmail"  # postfix's; MAIL_CONFIG in the environment selects its config
SENDMAIL_TIMEOUT = 60


def stuck_count(engine: sa.Engine, cutoff: datetime) -> int:
    """Unsent rows created at or before `cutoff` (naive UTC, as the column holds it)."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(outbox)
                .where(outbox.c.sent_at.is_(None), outbox.c.created_at <= cutoff)
            ).scalar_one()
        )


def notify_root(count: int, minutes: int) -> None:
    """A bare system mail to root (rewritten to the admins by postfix's virtual map)."""
    host = socket.gethostname()
    text = (
        f"Subject: Strongroom: alerts are not being mailed on {host}, check the server\n"
        "Auto-Submitted: auto-generated\n"
        "\n"
        f"{count} alert(s) have waited more than {minutes} minutes in the outbox.\n"
        "Check `systemctl status strongroom-mail`, `journalctl -u strongroom-mail` and postfix\n"
        "(`mailq`, /var/log/postfix.log) on the server; the alerts themselves are in the outbox.\n"
    )
    try:
        done = subprocess.run(
            [SENDMAIL, "-oi", "root"],
            input=text.encode(),
            capture_output=True,
            timeout=SENDMAIL_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CheckFailed(f"sendmail failed: {type(exc).__name__}") from None
    if done.returncode != 0:
        raise CheckFailed(f"sendmail failed: exit {done.returncode}")


def run(ctx: Context) -> Result:
    if ctx.engine is None:
        raise CheckFailed("no database")
    seconds = ctx.settings.outbox_stuck_seconds
    count = stuck_count(ctx.engine, to_db(ctx.now - timedelta(seconds=seconds)))
    was_stuck = bool((ctx.state or {}).get("stuck"))
    if count and not was_stuck:
        # If sendmail fails, CheckFailed keeps the old state: the next pass tries again.
        notify_root(count, max(1, seconds // 60))
    return Result([], {"stuck": count > 0})
