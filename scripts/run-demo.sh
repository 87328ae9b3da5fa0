#!/usr/bin/env bash
# `make run`: the whole system on one machine, for a demo.
#
#   keyd       sealed at start, then unsealed with a development key dropped through the real
#              drop-file path (/dev/shm, read and deleted by keyd);
#   ca/        a demo CA: a server certificate for localhost/127.0.0.1 and one client certificate
#              bundle per demo user;
#   users      one per role, each with a password and a bundle, printed at the end: an admin, a
#              supervisor, a clerk and an auditor (scripted bootstrap path, `users add
#              --password-stdin`: no forced password change at their first login);
#   records    a few customers with well-known TEST card numbers and an item or two, added through
#              the app's records service (scripts/demo_data.py), so keyd encrypts them like any data;
#   webapp     on SQLite, under gunicorn terminating TLS itself with a required client certificate
#              checked against the CA's CRL;
#   or, with DEMO_APACHE=1 (`make run APACHE=1`), the production layout: a private Apache
#              (apache/private.py: mod_ssl with the required client certificate and the CRL,
#              ModSecurity + CRS) in front of gunicorn on a Unix socket, STRONGROOM_BEHIND_PROXY=true.
#
# Everything lives in $DEMO_DIR (default var/demo, git-ignored, mode 0700). Its secrets are
# DEMO secrets: generated once per checkout, kept in $DEMO_DIR/secrets, never fit for production.
# Ctrl-C (or SIGTERM) stops Apache, gunicorn and keyd; keyd drops the key from memory as it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
DEMO_DIR=${DEMO_DIR:-$ROOT/var/demo}
PORT=${DEMO_PORT:-8443}
ADMIN=${DEMO_ADMIN:-admin}
# NAME:ROLE of every demo user, in the banner's order.
DEMO_USERS=("$ADMIN:admin" "supervisor:supervisor" "clerk:clerk" "auditor:auditor")
case "${DEMO_APACHE:-0}" in
    0 | "" | no | false) APACHE=0 ;;
    1 | yes | true) APACHE=1 ;;
    *) echo "DEMO_APACHE must be 1 (behind Apache) or 0 (gunicorn alone), not '${DEMO_APACHE}'" >&2; exit 2 ;;
esac

# Before anything is created: behind Apache needs Apache with ModSecurity and the CRS.
if [[ $APACHE == 1 ]]; then
    missing=()
    [[ -x /usr/sbin/apache2 ]] || missing+=(apache2)
    [[ -e /usr/lib/apache2/modules/mod_security2.so ]] || missing+=(libapache2-mod-security2)
    [[ -d /usr/share/modsecurity-crs ]] || missing+=(modsecurity-crs)
    if [[ ${#missing[@]} -gt 0 ]]; then
        echo "make run APACHE=1: Apache is not installed (missing Debian packages: ${missing[*]})." >&2
        echo "  As root, \`make sysdeps\` installs them (scripts/debian-packages.txt); or run \`make run\`" >&2
        echo "  without APACHE=1 for gunicorn serving TLS itself." >&2
        exit 3
    fi
fi

umask 077
mkdir -p "$DEMO_DIR/secrets" "$DEMO_DIR/tls"
chmod 700 "$DEMO_DIR"
SECRETS=$DEMO_DIR/secrets

gen() {  # gen FILE PYTHON-EXPR: a random secret, made once and kept
    [[ -s "$1" ]] || "$PY" -c "import secrets; print($2)" > "$1"
}
gen "$SECRETS/ca-root.pass" 'secrets.token_urlsafe(24)'
gen "$SECRETS/ca-issuing.pass" 'secrets.token_urlsafe(24)'
gen "$SECRETS/flask-secret-key" '"demo-only-" + secrets.token_urlsafe(48)'
gen "$SECRETS/keyd-dev.key" 'secrets.token_hex(32)'  # DEVELOPMENT data key
# Passwords that pass the policy (15+ characters, letters and digits, not guessable), one per user.
for entry in "${DEMO_USERS[@]}"; do
    gen "$SECRETS/${entry%%:*}.password" '"-".join(secrets.token_hex(3) + "x" for _ in range(4))'
done

# --- keyd -------------------------------------------------------------------------------------
# The drop path is per demo dir so that two checkouts (or a test) never share one.
DROP=/dev/shm/strongroom-demo-$(printf '%s' "$DEMO_DIR" | sha256sum | cut -c1-12)-ekey
KEYD_SOCKET=$DEMO_DIR/keyd-run/keyd.sock
KEYD_FLAGS=(--socket "$KEYD_SOCKET" --state-dir "$DEMO_DIR/keyd-state" --drop-path "$DROP"
    --allow-uid "$(id -u)" --admin-uid "$(id -u)" --no-syslog)
KEYD=("$PY" -m keyd)

drop_key() {  # what the operator does: type into a temp file, then rename it onto the drop path
    cp "$SECRETS/keyd-dev.key" "$DROP-tmp"
    chmod 600 "$DROP-tmp"
    mv "$DROP-tmp" "$DROP"
}

pids=()
cleanup() {
    # Stopping runs to the end, whatever else arrives: a service manager's SIGTERM reaches every
    # process of the unit, `make` forwards its own to this script, and a second Ctrl-C is common;
    # with the default action back, the second signal killed the script halfway and left the run
    # dir (the app's socket) and Apache's logs behind. SIGKILL still stops it outright. No errexit
    # either: one step failing must not skip the rest.
    trap - EXIT
    trap '' INT TERM
    set +e
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -f "$DROP" "$DROP-tmp"
    if [[ -n "${FRONT_MADE:-}" ]]; then
        # Apache's logs outlive its run dir: appended to $DEMO_DIR/apache-logs/.
        mkdir -p "$DEMO_DIR/apache-logs"
        for log in "$FRONT_RUN"/apache/logs/*; do
            if [[ -f "$log" ]]; then cat "$log" >>"$DEMO_DIR/apache-logs/${log##*/}"; fi
        done
        rm -rf "$FRONT_RUN"
    fi
    echo "demo stopped"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

if [[ ! -f "$DEMO_DIR/keyd-state/state.json" ]]; then
    echo "== keyd init (development key, raw 256-bit)"
    drop_key
    "${KEYD[@]}" init "${KEYD_FLAGS[@]}" --key-kind raw --wait 10
fi
echo "== keyd serve (sealed until the key is dropped)"
"${KEYD[@]}" serve "${KEYD_FLAGS[@]}" 2>>"$DEMO_DIR/keyd.log" &
pids+=($!)
for _ in $(seq 50); do [[ -S "$KEYD_SOCKET" ]] && break; sleep 0.1; done
drop_key
# `keyd status` exits 0 only when keyd is unsealed (3 sealed, 4 unreachable: docs/keyd.md).
unsealed() { "${KEYD[@]}" status "${KEYD_FLAGS[@]}" > /dev/null 2>&1; }
for _ in $(seq 100); do unsealed && break; sleep 0.1; done
unsealed || { echo "keyd did not unseal: see $DEMO_DIR/keyd.log" >&2; exit 1; }

# --- web app database and the demo admin -----------------------------------------------------
export STRONGROOM_MODE=production
export STRONGROOM_SECRET_KEY
STRONGROOM_SECRET_KEY=$(cat "$SECRETS/flask-secret-key")
export STRONGROOM_DATABASE_URL=sqlite:///$DEMO_DIR/strongroom.db
export STRONGROOM_KEYD_SOCKET=$KEYD_SOCKET
export STRONGROOM_INSTANCE_PATH=$DEMO_DIR/instance
FLASK=("$PY" -m flask --app webapp)

echo "== database migrations"
"${FLASK[@]}" db upgrade
# Users made once: a user already there (by name, the list's first column) is left as it is.
users=$("${FLASK[@]}" users list | cut -f1)
for entry in "${DEMO_USERS[@]}"; do
    name=${entry%%:*} role=${entry#*:}
    if ! grep -qxF -- "$name" <<<"$users"; then
        echo "== adding the demo $role: $name"
        "${FLASK[@]}" users add "$name" --role "$role" --password-stdin < "$SECRETS/$name.password" >/dev/null
    fi
done
echo "== demo customer records (test card numbers, encrypted by keyd)"
PYTHONPATH=$ROOT "$PY" scripts/demo_data.py

# --- where the front door's runtime files live ------------------------------------------------
# Behind Apache, gunicorn's Unix socket is the trust boundary (the web app believes the identity
# headers on it), and gunicorn makes it 0777: its directory must let Apache's children (www-data)
# through and nobody else. $DEMO_DIR is root's 0700, so as root the socket lives in a per-demo dir
# under /run, root:www-data 0710 (so is Apache's own run dir, for its ModSecurity scratch files),
# removed when the demo stops. Run by anyone else, Apache's children keep that user, so a 0700
# dir under $DEMO_DIR does.
DEMO_HASH=$(printf '%s' "$DEMO_DIR" | sha256sum | cut -c1-12)
if [[ $(id -u) -eq 0 ]]; then
    FRONT_RUN=/run/strongroom-demo-$DEMO_HASH
else
    FRONT_RUN=$DEMO_DIR/front-run
fi
APACHE_PID=$FRONT_RUN/apache/run/apache2.pid  # where apache/private.py has Apache write it

# --- CA: server certificate and each demo user's bundle -----------------------------------------
export STRONGROOM_CA_DIR=$DEMO_DIR/ca
CA=("$PY" -m ca --passphrase-file "$SECRETS/ca-issuing.pass")
# After each CRL update the CA runs this hook: Apache re-reads the CRL on a graceful reload
# (SIGUSR1); gunicorn serving TLS itself reads it when HUPped into new workers. One hook for both
# modes, so that a demo dir made in one mode works in the other.
RELOAD_HOOK="sh -c 'if test -s $APACHE_PID; then kill -USR1 \$(cat $APACHE_PID); elif test -s $DEMO_DIR/gunicorn.pid; then kill -HUP \$(cat $DEMO_DIR/gunicorn.pid); fi'"
if [[ ! -d "$STRONGROOM_CA_DIR" ]]; then
    echo "== CA init"
    "${CA[@]}" --root-passphrase-file "$SECRETS/ca-root.pass" init --reload-command "$RELOAD_HOOK"
    "${CA[@]}" server localhost 127.0.0.1 --out-dir "$DEMO_DIR/tls" >/dev/null
else
    # A demo dir from before the Apache mode (its hook only HUPs gunicorn), or made by another
    # user: point the CA's hook at this run's pid files.
    "$PY" - "$STRONGROOM_CA_DIR/config.toml" "$RELOAD_HOOK" <<'EOF'
import shlex, sys
from pathlib import Path
from ca.config import load_config, render_config
path, hook = Path(sys.argv[1]), shlex.split(sys.argv[2])
config = load_config(path)
if config.reload_command != hook:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(render_config(config.model_copy(update={"reload_command": hook})))
    tmp.replace(path)
    print("== CA reload hook updated (it now reloads Apache or gunicorn, whichever runs)")
EOF
fi
# A demo dir from before the four users kept the admin's bundle password under another name.
if [[ -s "$SECRETS/bundle.password" && ! -e "$SECRETS/$ADMIN.bundle.password" ]]; then
    mv "$SECRETS/bundle.password" "$SECRETS/$ADMIN.bundle.password"
fi
for entry in "${DEMO_USERS[@]}"; do
    name=${entry%%:*}
    if [[ ! -f "$DEMO_DIR/$name.p12" || ! -s "$SECRETS/$name.bundle.password" ]]; then
        echo "== issuing $name's certificate bundle (bound to the web app user)"
        # The CA shows a generated bundle password once; the demo keeps it for the banner below.
        "${CA[@]}" issue "$name" --out "$DEMO_DIR/$name.p12" --replace >"$DEMO_DIR/issue.out" 2>&1 \
            || { cat "$DEMO_DIR/issue.out" >&2; rm -f "$DEMO_DIR/issue.out"; exit 1; }
        grep -v 'bundle password' "$DEMO_DIR/issue.out" || true
        sed -n 's/.*bundle password[^:]*: *//p' "$DEMO_DIR/issue.out" > "$SECRETS/$name.bundle.password"
        rm -f "$DEMO_DIR/issue.out"
    fi
done

wait_port() {  # wait_port PORT: until something accepts connections on 127.0.0.1:PORT
    for _ in $(seq 100); do
        "$PY" - "$1" <<'EOF' 2>/dev/null && return 0
import socket, sys
socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.2).close()
EOF
        sleep 0.1
    done
    return 1
}

if [[ $APACHE == 0 ]]; then
    # --- gunicorn with TLS and a required client certificate -----------------------------------
    export STRONGROOM_TLS_CERT=$DEMO_DIR/tls/localhost.crt.pem
    export STRONGROOM_TLS_KEY=$DEMO_DIR/tls/localhost.key.pem
    export STRONGROOM_CLIENT_CA=$STRONGROOM_CA_DIR/publish/chain.pem
    export STRONGROOM_CRL=$STRONGROOM_CA_DIR/publish/crl.pem
    export STRONGROOM_BIND=127.0.0.1:$PORT
    echo "== gunicorn on https://127.0.0.1:$PORT"
    "$PY" -m gunicorn -c webapp/gunicorn_conf.py --pid "$DEMO_DIR/gunicorn.pid" \
        2>>"$DEMO_DIR/gunicorn.log" >>"$DEMO_DIR/gunicorn.log" &
    pids+=($!)
    wait_port "$PORT" || true
else
    # --- Apache in front, gunicorn behind it on a Unix socket ----------------------------------
    rm -rf "$FRONT_RUN"  # a crashed run's leftovers (stale pid file, socket)
    mkdir -m 700 "$FRONT_RUN" "$FRONT_RUN/web" "$FRONT_RUN/apache"
    FRONT_MADE=1
    # apache/private.py gives ModSecurity's data and tmp dirs (in modsec/) to the children's user;
    # the children must be able to walk down to them.
    mkdir -m 700 "$FRONT_RUN/apache/modsec"
    apache_user=()
    if [[ $(id -u) -eq 0 ]]; then
        chgrp www-data "$FRONT_RUN" "$FRONT_RUN/web" "$FRONT_RUN/apache" "$FRONT_RUN/apache/modsec"
        chmod 710 "$FRONT_RUN" "$FRONT_RUN/web" "$FRONT_RUN/apache" "$FRONT_RUN/apache/modsec"
        apache_user=(--user www-data --group www-data)
    fi
    WEB_SOCKET=$FRONT_RUN/web/gunicorn.sock
    export STRONGROOM_BEHIND_PROXY=true
    echo "== gunicorn on unix:$WEB_SOCKET (behind Apache)"
    # No TLS here: Apache verified the client certificate and passes it in a header that the app
    # believes only on this socket. webapp/gunicorn_conf.py's proxy mode (a unix: bind): no trusted
    # forwarding headers, underscore headers dropped, no access log (Apache's omits query strings).
    STRONGROOM_BIND=unix:$WEB_SOCKET "$PY" -m gunicorn -c webapp/gunicorn_conf.py --pid "$DEMO_DIR/gunicorn.pid" \
        2>>"$DEMO_DIR/gunicorn.log" >>"$DEMO_DIR/gunicorn.log" &
    pids+=($!)
    for _ in $(seq 100); do [[ -S "$WEB_SOCKET" ]] && break; sleep 0.1; done
    echo "== Apache on https://127.0.0.1:$PORT"
    "$PY" -m apache.private run --port "$PORT" --run-dir "$FRONT_RUN/apache" \
        --web-socket "$WEB_SOCKET" --tls-cert "$DEMO_DIR/tls/localhost.crt.pem" \
        --tls-key "$DEMO_DIR/tls/localhost.key.pem" \
        --client-ca "$STRONGROOM_CA_DIR/publish/chain.pem" \
        --crl "$STRONGROOM_CA_DIR/publish/crl.pem" "${apache_user[@]}" \
        2>>"$DEMO_DIR/apache.log" >>"$DEMO_DIR/apache.log" &
    pids+=($!)
    wait_port "$PORT" || { echo "Apache did not start: see $DEMO_DIR/apache.log" >&2; exit 1; }
fi
"${FLASK[@]}" health >/dev/null || { echo "the web app is not healthy: see $DEMO_DIR/gunicorn.log" >&2; exit 1; }

if [[ $APACHE == 1 ]]; then
    FRONT="behind Apache + ModSecurity (gunicorn on $WEB_SOCKET)"
    LOGS="$DEMO_DIR/*.log; Apache's in $FRONT_RUN/apache/logs, kept in $DEMO_DIR/apache-logs"
else
    FRONT="gunicorn serving TLS itself"
    LOGS="$DEMO_DIR/*.log"
fi
what() {  # what ROLE: what the role's pages show, for the banner
    case $1 in
        admin) echo "the console: users, certificates, sessions, alerts, budgets and keys" ;;
        supervisor) echo "customer records (reveals a card number with a reason), the audit log, activity" ;;
        clerk) echo "customer records, card numbers masked" ;;
        auditor) echo "the audit log, each employee's activity, CSV export; no customer data" ;;
    esac
}
cat <<EOF

  Strongroom demo is running: https://127.0.0.1:$PORT/login
  Front door:         $FRONT
  Trust the demo CA for the server certificate:  $STRONGROOM_CA_DIR/publish/chain.pem

  One user per role. Import a user's client certificate bundle into your browser (README.md,
  "Using the demo"; one browser profile per user, or pick the certificate when asked), then log
  in with that user's name and password. No password change is asked at the first login.
EOF
for entry in "${DEMO_USERS[@]}"; do
    name=${entry%%:*} role=${entry#*:}
    cat <<EOF

  Log in as:          $name ($role): $(what "$role")
      bundle:           $DEMO_DIR/$name.p12
      bundle password:  $(cat "$SECRETS/$name.bundle.password")
      password:         $(cat "$SECRETS/$name.password")
EOF
done
cat <<EOF

  Customer records to search for (as the clerk or the supervisor): C1000001, C1000002, C1000003
  (their cards are the card schemes' published TEST numbers).

  These are DEMO secrets (in $SECRETS). Logs: $LOGS
  Press Ctrl-C to stop.
EOF
echo "demo ready"
status=0
wait -n "${pids[@]}" || status=$?
# Ctrl-C reaches every process of the group, not only this shell; a daemon that stops cleanly on
# it (status 0, or 130/143 for SIGINT/SIGTERM) can end the `wait` before bash runs its own trap,
# and bash may then drop the SIGINT as handled by the child. That is a requested stop, not a crash.
case $status in
    0 | 130 | 143) exit 0 ;;
esac
echo "a demo process exited ($status): see $DEMO_DIR/*.log" >&2
exit 1
