#!/bin/sh
# OnFailure= of strongroom-backup.service: a bare notification to root (the admins, via the local postfix
# of ops/postfix). Details stay in the journal: never a path, a key name or any content in a mail.
set -eu
SENDMAIL="${SENDMAIL:-/usr/sbin/sendmail}"
host="$(hostname)"
printf 'Subject: Strongroom: backup failed on %s, check the server\n\nThe nightly backup did not complete.\nCheck `journalctl -u strongroom-backup` on the server.\n' "$host" | "$SENDMAIL" -oi root
