"""gunicorn serving Strongroom directly over TLS with required client certificates (dev/demo mode).

    gunicorn -c webapp/gunicorn_conf.py

Settings come from the environment (the app's own STRONGROOM_* settings are read by create_app):
    STRONGROOM_TLS_CERT    server certificate chain (PEM)            required
    STRONGROOM_TLS_KEY     its private key (PEM)                      required
    STRONGROOM_CLIENT_CA   CA that issues employee certificates      required
    STRONGROOM_CRL         that CA's CRL (PEM); checked for the leaf  required
    STRONGROOM_BIND        address:port (default 127.0.0.1:8443)
    STRONGROOM_WORKERS     worker processes (default 2)

gunicorn verifies the chain and the CRL in the TLS handshake; without a valid, unrevoked client
certificate there is no HTTP request at all. The app then reads the certificate's DER from the TLS
socket and also requires it to be bound to an active user. gunicorn has no CRL option, hence the
ssl_context hook. The CRL file is read once at start: restart (or HUP) gunicorn after the CA
publishes a new one. Behind Apache (production) none of this is used: see docs/webapp.md.
"""

from __future__ import annotations

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


wsgi_app = "webapp:create_app()"
bind = [os.environ.get("STRONGROOM_BIND", "127.0.0.1:8443")]
workers = int(os.environ.get("STRONGROOM_WORKERS", "2"))
# sync workers: threads > 1 would silently switch to gthread (PLATFORM-NOTES.md).
worker_class = "sync"
threads = 1
timeout = 30
# No shared control socket: several instances (tests, demo) must not collide on ~/.gunicorn.
control_socket_disable = True
# Never let a client-sent header decide the scheme.
secure_scheme_headers: dict[str, str] = {}
forwarded_allow_ips = "127.0.0.1"
accesslog = "-"
errorlog = "-"

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
