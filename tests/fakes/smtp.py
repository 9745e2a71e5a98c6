"""A local SMTP server (aiosmtpd) on 127.0.0.1 that keeps every message it accepts.

`with FakeSmtp() as smtp:` starts it on a free port (`smtp.port`); `smtp.messages` are the parsed
messages, `smtp.envelopes` the (mail_from, rcpt_tos) pairs, `smtp.logins` the AUTH credentials
received (AUTH is offered without TLS so a test can check a password is used but never leaked).
`smtp.fail_next(n, code)` makes the next n messages get a temporary error instead.
"""

from __future__ import annotations

import email
import email.policy
import socket
import threading
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeSmtp:
    def __init__(self):
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.logins: list[tuple[str, str]] = []
        self.attempts = 0
        self._failures: list[str] = []
        self._lock = threading.Lock()
        self.port = _free_port()
        self._controller = Controller(
            self,
            hostname="127.0.0.1",
            port=self.port,
            authenticator=self._authenticate,
            auth_require_tls=False,
        )

    def fail_next(self, times: int, reply: str = "451 4.3.0 try again later") -> None:
        with self._lock:
            self._failures.extend([reply] * times)

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            with self._lock:
                self.logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=True)

    async def handle_DATA(self, server, session, envelope) -> str:  # aiosmtpd's handler hook
        with self._lock:
            self.attempts += 1
            if self._failures:
                return self._failures.pop(0)
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            self.messages.append(message)
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"

    def __enter__(self) -> FakeSmtp:
        self._controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self._controller.stop()
