"""Registering the API on the app (called by the app factory): the blueprint with every module's
routes, CSRF exempt (the certificate is the credential, and there are no cookies), its refusals as
problem+json (the API's own, and the app's refusal pages for paths under /api/), and no Set-Cookie
on any of its responses. The gate (identity.py) is registered by the app factory itself: it must run
before the hooks that read the user."""

from __future__ import annotations

from flask import Flask
from flask_wtf.csrf import CSRFProtect

from webapp import refusals
from webapp.api import bulk, identity, problems, views
from webapp.api.blueprint import bp, handle_problem
from webapp.api.problems import Problem
from webapp.api.wsgi import NoCookies

ROUTE_MODULES = (views, bulk)  # imported for the routes they add to bp


def init_app(app: Flask, csrf: CSRFProtect) -> None:
    csrf.exempt(bp)
    app.register_blueprint(bp)
    app.register_error_handler(Problem, handle_problem)
    app.extensions.setdefault(refusals.RENDERERS, {})[identity.API_PREFIX] = problems.render_refusal
    app.wsgi_app = NoCookies(app.wsgi_app, identity.API_PREFIX)  # type: ignore[method-assign]
