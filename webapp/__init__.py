"""Strongroom's web app. `flask --app webapp ...` finds `create_app` here."""

from webapp.app import create_app

__all__ = ["create_app"]
