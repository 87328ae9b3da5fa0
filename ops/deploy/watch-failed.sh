#!/bin/sh
# OnFailure= of the watchdog units: the pass could not queue its own alerts, so tell root (the admins,
# via the local postfix of ops/postfix) directly. A bare notification; details stay in the journal.
set -eu
SENDMAIL="${SENDMAIL:-/usr/sbin/sendmail}"
host="$(hostname)"
printf 'Subject: Strongroom: watchdog failed on %s, check the server\n\nThe watchdog could not complete a pass.\nCheck `journalctl -u strongroom-watch` on the server.\n' "$host" | "$SENDMAIL" -oi root
