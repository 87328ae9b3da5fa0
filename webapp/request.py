"""Per-request state: where the request came from (IP, client certificate) and its unit of work."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from flask import current_app, g, request

from webapp.auth.certs import (
    BadCertificate,
    CertInfo,
    came_over_unix_socket,
    der_from_tls,
    from_folded_pem,
)
from webapp.services import services
from webapp.unit import Origin, UnitOfWork


@dataclass(frozen=True)
class RequestOrigin:
    ip: str
    cert: CertInfo | None
    # Why a certificate (or certificate header) was ignored; audited and raised as an event.
    problem: str | None = None

    @property
    def fingerprint(self) -> str | None:
        return self.cert.fingerprint if self.cert else None

    @property
    def serial(self) -> str:
        return self.cert.serial if self.cert else "-"


def origin() -> RequestOrigin:
    if "origin" not in g:
        g.origin = _resolve_origin()
    found: RequestOrigin = g.origin
    return found


def _valid_ip(value: str | None) -> str:
    try:
        return str(ipaddress.ip_address((value or "").strip()))
    except ValueError:
        return "-"


def _resolve_origin() -> RequestOrigin:
    cfg = current_app.config
    header = cfg["PROXY_CERT_HEADER"]
    environ = request.environ
    if cfg["BEHIND_PROXY"]:
        # Only Apache can reach the private Unix socket; over anything else the headers are forgeable.
        if not came_over_unix_socket(environ):
            return RequestOrigin(
                _valid_ip(request.remote_addr), None, "proxy headers on a non-private socket"
            )
        ip = _valid_ip(request.headers.get(cfg["PROXY_IP_HEADER"]))
        raw = request.headers.get(header)
        if not raw:
            return RequestOrigin(ip, None)
        try:
            return RequestOrigin(ip, from_folded_pem(raw))
        except BadCertificate:
            return RequestOrigin(ip, None, "malformed certificate header")
    ip = _valid_ip(request.remote_addr)
    problem = "certificate header sent while not behind the proxy" if header in request.headers else None
    der = der_from_tls(environ)
    if der is None:
        return RequestOrigin(ip, None, problem)
    try:
        return RequestOrigin(ip, CertInfo.from_der(der), problem)
    except BadCertificate:
        return RequestOrigin(ip, None, "unparseable TLS client certificate")


def unit() -> UnitOfWork:
    if "uow" not in g:
        svc = services()
        who = origin()
        g.uow = svc.unit(Origin(ip=who.ip, cert_serial=who.serial))
    uow: UnitOfWork = g.uow
    return uow
