"""A real SMTP server (aiosmtpd) on loopback for the mail tests: it keeps every message it accepts.

`delay` makes each DATA slow (to overlap two mailers), `refuse` answers DATA with a 5xx, and
`tls` turns on STARTTLS, `require_starttls` refuses MAIL before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.support import free_port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    tls: bool

    @property
    def message(self) -> EmailMessage:
        msg = message_from_bytes(self.raw, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class Sink:
    delay: float = 0.0
    refuse: bool = False
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, _server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.refuse:
            return "554 5.6.0 refused by the test"
        with self.lock:
            self.messages.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    bytes(envelope.original_content or envelope.content),
                    session.ssl is not None,
                )
            )
        return "250 2.0.0 OK"


@contextlib.contextmanager
def smtp_server(
    sink: Sink,
    *,
    port: int | None = None,
    tls: ssl.SSLContext | None = None,
    login: tuple[str, str] | None = None,
) -> Iterator[int]:
    """Serve on 127.0.0.1:`port` (a free one by default); yields the port; stops on exit. With
    `login`, AUTH (only after STARTTLS) is required and only that user and password pass."""
    port = port or free_port()
    kwargs: dict[str, Any] = {}
    if tls is not None:
        kwargs = {"tls_context": tls, "require_starttls": True}
    if login is not None:

        def authenticator(
            _server: Any, _session: Any, _envelope: Any, _mechanism: str, data: Any
        ) -> AuthResult:
            given = (data.login.decode(), data.password.decode()) if isinstance(data, LoginPassword) else None
            return AuthResult(success=given == login)

        kwargs |= {"authenticator": authenticator, "auth_required": True, "auth_require_tls": True}
    controller = Controller(sink, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()
