#!/bin/sh
# OnFailure= of strongroom-mail.service (strongroom-mail-failed.service): the alert mailer stopped
# for good (its mail settings are unusable, exit 78), so the outbox's alerts go nowhere. Tell root
# (the admins, through postfix's sendmail and its virtual map) directly. A bare notification: the
# reason is in the journal, never in the mail.
set -eu
SENDMAIL="${SENDMAIL:-/usr/sbin/sendmail}"
host="$(hostname)"
printf 'Subject: Strongroom: alert mailer failed on %s, check the server\nAuto-Submitted: auto-generated\n\nThe alert mailer stopped: alerts are not being mailed.\nCheck `systemctl status strongroom-mail` and `journalctl -u strongroom-mail` on the server.\n' "$host" | "$SENDMAIL" -oi root
