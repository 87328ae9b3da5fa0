"""No Set-Cookie ever leaves the API: WSGI middleware, so that no path (a failure page deleting the
session cookie, an extension) can add one. The session interface makes no session for the API's
requests in the first place (webapp/auth/sessions.py); this is the last word."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class NoCookies:
    def __init__(self, app: Any, prefix: str) -> None:
        self.app = app
        self.prefix = prefix

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if not str(environ.get("PATH_INFO", "")).startswith(self.prefix):
            result: Iterable[bytes] = self.app(environ, start_response)
            return result

        def without_cookies(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [(k, v) for k, v in headers if k.lower() != "set-cookie"], exc_info)

        found: Iterable[bytes] = self.app(environ, without_cookies)
        return found
