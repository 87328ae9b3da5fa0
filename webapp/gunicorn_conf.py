"""gunicorn for Strongroom, in the two ways it runs:

    gunicorn -c webapp/gunicorn_conf.py

**Behind Apache (production, `make run APACHE=1`)**: STRONGROOM_BIND is `unix:/path/gunicorn.sock`.
Apache terminates TLS, checks the client certificate and the CRL, and forwards the verified certificate
in a header; the app trusts that header only when STRONGROOM_BEHIND_PROXY=true (required here, so a
half-configured proxy mode fails at start rather than refusing every login) and only on a Unix socket.
gunicorn's socket is created 0777: its directory (root or the app's user : www-data, 0710) is the gate.

**Terminating TLS itself (the plain demo)**: STRONGROOM_BIND is `address:port` (default 127.0.0.1:8443):
    STRONGROOM_TLS_CERT    server certificate chain (PEM)            required
    STRONGROOM_TLS_KEY     its private key (PEM)                      required
    STRONGROOM_CLIENT_CA   CA that issues employee certificates      required
    STRONGROOM_CRL         that CA's CRL (PEM); checked for the leaf  required
gunicorn verifies the chain and the CRL in the TLS handshake; without a valid, unrevoked client
certificate there is no HTTP request at all. gunicorn has no CRL option, hence the ssl_context hook.
The CRL file is read once at start: HUP gunicorn after the CA publishes a new one.

Both: STRONGROOM_WORKERS (else WEB_CONCURRENCY, else 2) sync worker processes, one per core: measured
through the whole production path on SQLite and MariaDB (docs/benchmarks.md, "Production path"), more
processes or gthread threads gave no more requests per second on a 2-core server and longer tails.
STRONGROOM_WORKER_CLASS=gthread with STRONGROOM_THREADS=N is there to measure that again
(bench/bench_production_path.py), not for production.
"""

from __future__ import annotations

import json
import os
import ssl
from typing import Any


def _required(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise SystemExit(f"gunicorn_conf: {name} must be set (see webapp/gunicorn_conf.py)")
    if not os.path.isfile(value):
        raise SystemExit(f"gunicorn_conf: {name}={value} is not a file")
    return value


def _behind_proxy() -> bool:
    raw = os.environ.get("STRONGROOM_BEHIND_PROXY", "false")
    try:
        return json.loads(raw) is True
    except ValueError:
        return False


wsgi_app = "webapp:create_app()"
_bind = os.environ.get("STRONGROOM_BIND", "127.0.0.1:8443")
bind = [_bind]
workers = int(os.environ.get("STRONGROOM_WORKERS") or os.environ.get("WEB_CONCURRENCY") or "2")
# sync processes unless told otherwise: chosen by measurement (docs/benchmarks.md, "Production path").
# gthread is there to be measured against them (bench/bench_production_path.py); sync with threads > 1
# would silently become gthread (gunicorn's documented behaviour), so the two are set together.
worker_class = os.environ.get("STRONGROOM_WORKER_CLASS") or "sync"
if worker_class not in ("sync", "gthread"):
    raise SystemExit(f"gunicorn_conf: STRONGROOM_WORKER_CLASS={worker_class} is not sync or gthread")
threads = int(os.environ.get("STRONGROOM_THREADS") or "1") if worker_class == "gthread" else 1
timeout = 30
# No shared control socket: several instances (tests, demo) must not collide on ~/.gunicorn.
control_socket_disable = True
# Never let a client-sent header decide the scheme or the client's address.
secure_scheme_headers: dict[str, str] = {}
forwarded_allow_ips = ""
# Headers whose names hold an underscore are dropped: X_Strongroom_Client_Cert would otherwise reach
# the app as the same WSGI variable as the header Apache sets.
header_map = "drop"
errorlog = "-"
# Both logs read what clients send (paths, headers, refused request lines): card numbers in them are
# masked, whatever their spelling or encoding (webapp/gunicorn_logging.py).
logger_class = "webapp.gunicorn_logging.RedactingLogger"

if _bind.startswith("unix:"):
    if not _behind_proxy():
        raise SystemExit("gunicorn_conf: a unix: bind is the proxy mode: set STRONGROOM_BEHIND_PROXY=true")
    # Apache keeps the access and review logs (without query strings); no second copy here.
    accesslog = None
else:
    if _behind_proxy():
        raise SystemExit("gunicorn_conf: STRONGROOM_BEHIND_PROXY=true needs a unix: bind behind Apache")
    accesslog = "-"
    # The path without the query string: a card number typed into a search box stays out of the log.
    # A card number typed into the path is masked by logger_class.
    access_log_format = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(L)ss'
    certfile = _required("STRONGROOM_TLS_CERT")
    keyfile = _required("STRONGROOM_TLS_KEY")
    ca_certs = _required("STRONGROOM_CLIENT_CA")
    cert_reqs = ssl.CERT_REQUIRED
    _crl = _required("STRONGROOM_CRL")

    def ssl_context(conf: Any, default_ssl_context_factory: Any) -> ssl.SSLContext:
        context: ssl.SSLContext = default_ssl_context_factory()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED
        # A revoked employee certificate fails the handshake itself.
        context.load_verify_locations(cafile=_crl)
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        return context
