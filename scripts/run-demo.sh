#!/usr/bin/env bash
# `make run`: the whole system on one machine, for a demo.
#
#   keyd       sealed at start, then unsealed with a development key dropped through the real
#              drop-file path (/dev/shm, read and deleted by keyd);
#   ca/        a demo CA: a server certificate for localhost/127.0.0.1 and the demo admin's bundle;
#   webapp     on SQLite, under gunicorn terminating TLS itself with a required client certificate
#              checked against the CA's CRL.
#
# Everything lives in $DEMO_DIR (default var/demo, git-ignored, mode 0700). Its secrets are
# DEMO secrets: generated once per checkout, kept in $DEMO_DIR/secrets, never fit for production.
# Ctrl-C (or SIGTERM) stops gunicorn and keyd; keyd drops the key from memory as it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
DEMO_DIR=${DEMO_DIR:-$ROOT/var/demo}
PORT=${DEMO_PORT:-8443}
ADMIN=${DEMO_ADMIN:-admin}

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
# A password that passes the policy (15+ characters, letters and digits, not guessable).
gen "$SECRETS/admin.password" '"-".join(secrets.token_hex(3) + "x" for _ in range(4))'

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
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -f "$DROP" "$DROP-tmp"
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
# `keyd status` exits 0 sealed or not: read its answer. (Captured, not piped into `grep -q`, which
# would close the pipe early and, under pipefail, fail the check.)
unsealed() { [[ $("${KEYD[@]}" status "${KEYD_FLAGS[@]}" 2>/dev/null) == *"sealed: false"* ]]; }
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
users=$("${FLASK[@]}" users list)
if ! grep -qw -- "$ADMIN" <<<"$users"; then
    "${FLASK[@]}" users add "$ADMIN" --role admin --password-stdin < "$SECRETS/admin.password"
fi

# --- CA: server certificate and the admin's bundle ---------------------------------------------
export STRONGROOM_CA_DIR=$DEMO_DIR/ca
CA=("$PY" -m ca --passphrase-file "$SECRETS/ca-issuing.pass")
if [[ ! -d "$STRONGROOM_CA_DIR" ]]; then
    echo "== CA init"
    # gunicorn reads the CRL at start; a HUP makes it start new workers that read it again.
    "${CA[@]}" --root-passphrase-file "$SECRETS/ca-root.pass" init \
        --reload-command "sh -c 'test ! -s $DEMO_DIR/gunicorn.pid || kill -HUP \$(cat $DEMO_DIR/gunicorn.pid)'"
    "${CA[@]}" server localhost 127.0.0.1 --out-dir "$DEMO_DIR/tls" >/dev/null
fi
BUNDLE=$DEMO_DIR/$ADMIN.p12
if [[ ! -f "$BUNDLE" ]]; then
    echo "== issuing $ADMIN's certificate bundle (bound to the web app user)"
    # The CA shows a generated bundle password once; the demo keeps it for the banner below.
    "${CA[@]}" issue "$ADMIN" --out "$BUNDLE" --replace >"$DEMO_DIR/issue.out" 2>&1 \
        || { cat "$DEMO_DIR/issue.out" >&2; rm -f "$DEMO_DIR/issue.out"; exit 1; }
    grep -v 'bundle password' "$DEMO_DIR/issue.out" || true
    sed -n 's/.*bundle password[^:]*: *//p' "$DEMO_DIR/issue.out" > "$SECRETS/bundle.password"
    rm -f "$DEMO_DIR/issue.out"
fi

# --- gunicorn with TLS and a required client certificate ---------------------------------------
export STRONGROOM_TLS_CERT=$DEMO_DIR/tls/localhost.crt.pem
export STRONGROOM_TLS_KEY=$DEMO_DIR/tls/localhost.key.pem
export STRONGROOM_CLIENT_CA=$STRONGROOM_CA_DIR/publish/chain.pem
export STRONGROOM_CRL=$STRONGROOM_CA_DIR/publish/crl.pem
export STRONGROOM_BIND=127.0.0.1:$PORT
echo "== gunicorn on https://127.0.0.1:$PORT"
"$PY" -m gunicorn -c webapp/gunicorn_conf.py --pid "$DEMO_DIR/gunicorn.pid" \
    2>>"$DEMO_DIR/gunicorn.log" >>"$DEMO_DIR/gunicorn.log" &
pids+=($!)
for _ in $(seq 100); do
    "$PY" - "$PORT" <<'EOF' 2>/dev/null && break
import socket, sys
socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.2).close()
EOF
    sleep 0.1
done
"${FLASK[@]}" health >/dev/null || { echo "the web app is not healthy: see $DEMO_DIR/gunicorn.log" >&2; exit 1; }

cat <<EOF

  Strongroom demo is running: https://127.0.0.1:$PORT/login

  Import the client certificate bundle into your browser (README.md, "Using the demo"):
      bundle:           $BUNDLE
      bundle password:  $(cat "$SECRETS/bundle.password")
  Trust the demo CA for the server certificate:  $STRONGROOM_CA_DIR/publish/chain.pem
  Log in as:          $ADMIN
      password:       $(cat "$SECRETS/admin.password")

  These are DEMO secrets (in $SECRETS). Logs: $DEMO_DIR/*.log
  Press Ctrl-C to stop.
EOF
echo "demo ready"
wait -n "${pids[@]}"
echo "a demo process exited: see $DEMO_DIR/*.log" >&2
exit 1
