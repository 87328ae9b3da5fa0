"""The reference client (clients/crm.py): through the Flask test client (its transport is pluggable)
and over real TLS with a service certificate against gunicorn."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from clients.crm import ApiError, CrmClient, Transport
from tests.webapp.api.conftest import VISA, counts
from tests.webapp.conftest import HTTPS


def flask_transport(client: FlaskClient, *, lose_first_answers: int = 0) -> Transport:
    """Calls the app; the first `lose_first_answers` answers are lost on the way back (the request
    was served, the client sees a broken connection), as a retry after a network failure sees it."""
    lost = [lose_first_answers]

    def send(
        method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[int, Mapping[str, str], bytes]:
        r = client.open(path, method=method, headers=dict(headers), data=body, base_url=HTTPS)
        if lost[0] > 0:
            lost[0] -= 1
            raise ConnectionResetError("answer lost")
        return r.status_code, dict(r.headers), r.data

    return send


def test_the_client_does_what_the_guide_says(app: Flask, api: FlaskClient) -> None:
    crm = CrmClient(transport=flask_transport(api), backoff=0)
    record = crm.add_record("C1234567")
    card = crm.add_card(
        record["id"], pan="4111 1111 1111 1111", cardholder="Ada Lovelace", exp_month=12, exp_year=2030
    )
    assert (card["brand"], card["last4"]) == ("visa", "1111")
    assert crm.get_record(record["id"]) == record
    assert crm.find_records("C1234567")["records"] == [record]
    for _ in range(4):
        crm.add_card(record["id"], pan=VISA, cardholder="Ada Lovelace", exp_month=1, exp_year=2031)
    assert len(list(crm.iter_cards(record["id"], limit=2))) == 5
    assert crm.retire_card(record["id"], card["id"])["retired"] is True
    assert crm.openapi()["openapi"].startswith("3.1")
    with pytest.raises(ApiError) as refused:
        crm.add_card(record["id"], pan="4111111111111112", cardholder="Ada", exp_month=12, exp_year=2030)
    assert (refused.value.status, refused.value.slug) == (422, "card-number-invalid")
    assert VISA not in str(refused.value)


def test_a_lost_answer_is_retried_with_the_same_key_and_stores_once(app: Flask, api: FlaskClient) -> None:
    crm = CrmClient(transport=flask_transport(api), backoff=0)
    record = crm.add_record("C1234567")
    lossy = CrmClient(transport=flask_transport(api, lose_first_answers=2), backoff=0, retries=2)
    card = lossy.add_card(record["id"], pan=VISA, cardholder="Ada Lovelace", exp_month=12, exp_year=2030)
    assert card["last4"] == "1111"
    assert counts(app)["cards"] == 1  # served three times, stored once


def test_the_client_gives_up_after_its_retries(api: FlaskClient) -> None:
    lossy = CrmClient(transport=flask_transport(api, lose_first_answers=5), backoff=0, retries=1)
    with pytest.raises(ConnectionResetError):
        lossy.find_records("C1234567")


# --- over real TLS -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, tuple[Path, Path]]]:
    from tests.webapp.conftest import CHEAP_ARGON2, SECRET
    from tests.webapp.tls_server import serve
    from webapp import create_app

    d = tmp_path_factory.mktemp("api-tls")
    with serve(d) as server:
        service = server.ca.issue_service("crm")
        paths = service.write(d, "crm")
        app = create_app(
            {
                "SECRET_KEY": SECRET,
                "DATABASE_URL": server.db_url,
                "INSTANCE_PATH": str(d / "instance-cli"),
                **CHEAP_ARGON2,
            }
        )
        result = app.test_cli_runner().invoke(args=["services", "add", "crm", "--cert", str(paths[0])])
        assert result.exit_code == 0, result.output
        app.extensions["strongroom"].engine.dispose()
        yield server, paths


def test_over_real_tls_with_the_service_certificate(tls: tuple[object, tuple[Path, Path]]) -> None:
    server, (cert, key) = tls
    crm = CrmClient("127.0.0.1", server.port, cert=str(cert), key=str(key), ca=str(server.ca_file))  # type: ignore[attr-defined]
    record = crm.add_record("C2222222")
    assert crm.find_records("C2222222")["records"] == [record]
    assert crm.openapi()["info"]["title"] == "Strongroom CRM API"


def test_over_real_tls_a_persons_certificate_is_refused(tls: tuple[object, tuple[Path, Path]]) -> None:
    server, _ = tls
    alice = server.alice  # type: ignore[attr-defined]
    crm = CrmClient("127.0.0.1", server.port, cert=str(alice[0]), key=str(alice[1]), ca=str(server.ca_file))  # type: ignore[attr-defined]
    with pytest.raises(ApiError) as refused:
        crm.find_records("C2222222")
    assert refused.value.slug == "person-certificate"
