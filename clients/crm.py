"""The reference client of the CRM API (/api/v1, docs/crm-api.md): standard library only.

    from clients.crm import CrmClient
    api = CrmClient("vault.example.com", cert="crm.pem", key="crm.key", ca="strongroom-ca.pem")
    record = api.add_record("C1234567")
    card = api.add_card(record["id"], pan="4111 1111 1111 1111", cardholder="Ada Lovelace",
                        exp_month=12, exp_year=2030)
    for card in api.iter_cards(record["id"]):
        print(card["brand"], card["last4"])

Every POST carries an Idempotency-Key (a fresh random one unless the caller gives its own); a POST
whose answer was lost (connection error, 502/503/504) is retried with the same key, so the vault
stores it once and the retry gets the first answer. A refusal raises `ApiError` with the problem's
`type`, `title`, `status` and `detail` (RFC 9457). The client never logs anything; the card number
is sent once in the body and kept nowhere.

The transport is pluggable (`transport=`): the default speaks HTTPS with the service certificate
(http.client + ssl); the tests pass one that calls the Flask test client.
"""

from __future__ import annotations

import http.client
import json
import secrets
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

BASE = "/api/v1"
PROBLEM_BASE = "https://strongroom.invalid/problems/"
RETRY_STATUSES = frozenset({502, 503, 504})
# (method, path with query, headers, body) -> (status, headers, body)
Transport = Callable[[str, str, Mapping[str, str], bytes | None], tuple[int, Mapping[str, str], bytes]]


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    data: Any  # the parsed JSON body

    @property
    def replayed(self) -> bool:
        """This answer is the stored first answer of an earlier call with the same Idempotency-Key."""
        return self.headers.get("Idempotent-Replayed", "") == "true"


class ApiError(Exception):
    """A refusal: the problem document's fields. `slug` is the last part of the type URI."""

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        self.status = status
        self.type = str(problem.get("type", ""))
        self.title = str(problem.get("title", ""))
        self.detail = str(problem.get("detail", ""))
        super().__init__(f"{status} {self.slug}: {self.detail}")

    @property
    def slug(self) -> str:
        return self.type.removeprefix(PROBLEM_BASE)


def https_transport(
    host: str,
    port: int = 443,
    *,
    cert: str,
    key: str,
    ca: str,
    timeout: float = 10.0,
    server_hostname: str | None = None,
) -> Transport:
    """HTTPS with the service certificate; the server is verified against `ca` (the Strongroom CA)."""
    context = ssl.create_default_context(cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)

    def send(
        method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[int, Mapping[str, str], bytes]:
        conn = http.client.HTTPSConnection(host, port, context=context, timeout=timeout)
        if server_hostname is not None:
            conn.server_hostname = server_hostname  # type: ignore[attr-defined]
        try:
            conn.request(method, path, body=body, headers=dict(headers))
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    return send


@dataclass
class CrmClient:
    host: str = "localhost"
    port: int = 443
    cert: str = ""
    key: str = ""
    ca: str = ""
    timeout: float = 10.0
    retries: int = 2  # retries of a call whose answer was lost (same Idempotency-Key)
    backoff: float = 0.5
    transport: Transport | None = None
    _send: Transport = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._send = self.transport or https_transport(
            self.host, self.port, cert=self.cert, key=self.key, ca=self.ca, timeout=self.timeout
        )

    # --- the calls ------------------------------------------------------------------------------

    def find_records(
        self, crm_ref: str, *, limit: int | None = None, cursor: str | None = None
    ) -> dict[str, Any]:
        """One page of the records with this CRM number: {"records": [...], "next_cursor": ...}."""
        return dict(self.get("/records", crm_ref=crm_ref, limit=limit, cursor=cursor).data)

    def add_record(self, crm_ref: str, *, idempotency_key: str | None = None) -> dict[str, Any]:
        return dict(self.post("/records", {"crm_ref": crm_ref}, idempotency_key=idempotency_key).data)

    def get_record(self, record_id: int) -> dict[str, Any]:
        return dict(self.get(f"/records/{int(record_id)}").data)

    def add_card(
        self,
        record_id: int,
        *,
        pan: str,
        cardholder: str,
        exp_month: int,
        exp_year: int,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Store a card; the answer is its id, brand and last four (never the number)."""
        body = {"pan": pan, "cardholder": cardholder, "exp_month": exp_month, "exp_year": exp_year}
        return dict(self.post(f"/records/{int(record_id)}/cards", body, idempotency_key=idempotency_key).data)

    def list_cards(
        self, record_id: int, *, limit: int | None = None, cursor: str | None = None
    ) -> dict[str, Any]:
        return dict(self.get(f"/records/{int(record_id)}/cards", limit=limit, cursor=cursor).data)

    def iter_cards(self, record_id: int, *, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Every card of a record, masked, page after page."""
        cursor = None
        while True:
            page = self.list_cards(record_id, limit=limit, cursor=cursor)
            yield from page["cards"]
            cursor = page["next_cursor"]
            if not cursor:
                return

    def retire_card(
        self, record_id: int, card_id: str, *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        path = f"/records/{int(record_id)}/cards/{urllib.parse.quote(card_id, safe='')}/retire"
        return dict(self.post(path, {}, idempotency_key=idempotency_key).data)

    def openapi(self) -> dict[str, Any]:
        return dict(self.get("/openapi.json").data)

    # --- the plumbing ---------------------------------------------------------------------------

    def get(self, path: str, **query: Any) -> Reply:
        params = {k: str(v) for k, v in query.items() if v is not None}
        target = BASE + path + (("?" + urllib.parse.urlencode(params)) if params else "")
        return self._call("GET", target, None, {})

    def post(self, path: str, body: Mapping[str, Any], *, idempotency_key: str | None = None) -> Reply:
        key = idempotency_key or secrets.token_urlsafe(24)
        data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        return self._call(
            "POST", BASE + path, data, {"Content-Type": "application/json", "Idempotency-Key": key}
        )

    def _call(self, method: str, target: str, data: bytes | None, extra: Mapping[str, str]) -> Reply:
        headers = {"Accept": "application/json", **extra}
        attempt = 0
        while True:
            try:
                status, got, raw = self._send(method, target, headers, data)
            except (OSError, http.client.HTTPException):
                # The answer was lost: the same request again (a POST with the same key is safe).
                if attempt >= self.retries:
                    raise
            else:
                if status not in RETRY_STATUSES or attempt >= self.retries:
                    return _reply(status, got, raw)
            attempt += 1
            time.sleep(self.backoff * attempt)


def _reply(status: int, headers: Mapping[str, str], raw: bytes) -> Reply:
    folded = {k.title(): v for k, v in headers.items()}
    try:
        data = json.loads(raw.decode("utf-8")) if raw else None
    except ValueError:
        data = None
    if status >= 400:
        raise ApiError(status, data if isinstance(data, dict) else {"detail": f"HTTP {status}"})
    return Reply(status, folded, data)
