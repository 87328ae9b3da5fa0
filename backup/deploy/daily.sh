#!/bin/sh
# The nightly backup (strongroom-backup.service): a consistent snapshot, sent off-site and verified there,
# then old copies pruned. Each step stops the chain on failure; the step itself has already raised its
# alert through the outbox, and the unit's OnFailure tells root in case it could not.
set -eu
PY="${STRONGROOM_PYTHON:-/opt/strongroom/.venv/bin/python}"
OUT="${STRONGROOM_BACKUP_OUT_DIR:-/var/backups/strongroom}"
KEYD_STATE="${STRONGROOM_BACKUP_KEYD_STATE_DIR:-/var/lib/strongroom-keyd}"
install -d -m 0700 "$OUT"
file=$("$PY" -m backup create --keyd-state-dir "$KEYD_STATE" --out-dir "$OUT" | head -n 1)
[ -f "$file" ] || { echo "backup create printed no file" >&2; exit 1; }
"$PY" -m backup send "$file"
"$PY" -m backup prune --keep-last "${STRONGROOM_BACKUP_KEEP_LAST:-14}" \
    --keep-days "${STRONGROOM_BACKUP_KEEP_DAYS:-35}" --local-dir "$OUT"
