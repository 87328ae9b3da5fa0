"""`services()`: the one way to the app's collaborators, with a clear refusal where there are none."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask

from tests.webapp.conftest import SECRET
from webapp import create_app
from webapp.services import Services, services


def test_services_of_the_current_app_or_of_the_app_passed(tmp_path: Path) -> None:
    app = create_app(
        {"SECRET_KEY": SECRET, "INSTANCE_PATH": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}
    )
    with app.app_context():
        assert isinstance(services(), Services)
        assert services() is services(app)


def test_outside_an_app_context_it_says_how_to_call_it() -> None:
    with pytest.raises(RuntimeError, match="outside an app context"):
        services()


def test_an_app_not_made_by_create_app_has_none() -> None:
    with pytest.raises(RuntimeError, match="make it with webapp\\.create_app"):
        services(Flask("other"))
